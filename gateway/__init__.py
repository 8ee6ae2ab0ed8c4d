"""chatgw: a WebSocket gateway for live customer chat."""

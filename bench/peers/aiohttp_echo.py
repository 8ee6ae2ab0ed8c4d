"""aiohttp WebSocket echo server, on uvloop.

    python -m bench.peers.aiohttp_echo --port 0 [--heartbeat S]
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import WSMsgType, web

from bench.peers import announce_and_wait, peer_parser

CLIENTS: set[web.WebSocketResponse] = set()


async def handler(request: web.Request) -> web.WebSocketResponse:
    hb = request.app["heartbeat"]
    ws = web.WebSocketResponse(heartbeat=hb or None)
    await ws.prepare(request)
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data[:1] == "B":
                    for c in list(CLIENTS):
                        await c.send_str(msg.data)
                else:
                    await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        CLIENTS.discard(ws)
    return ws


async def main(args: argparse.Namespace) -> None:
    app = web.Application()
    app["heartbeat"] = args.heartbeat
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    await announce_and_wait(port)
    await runner.cleanup()


def parse() -> argparse.Namespace:
    p = peer_parser(__doc__)
    p.add_argument("--heartbeat", type=float, default=0.0)
    return p.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse()))

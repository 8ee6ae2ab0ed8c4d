"""`websockets` (asyncio implementation) echo server, on uvloop like every Python server here.

    python -m bench.peers.websockets_echo --port 0 [--heartbeat S]
"""

from __future__ import annotations

import argparse

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, serve

from bench.peers import announce_and_wait, peer_parser

CLIENTS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CLIENTS.add(ws)
    try:
        async for message in ws:
            if message[:1] in ("B", b"B"):
                websockets.broadcast(CLIENTS, message)
            else:
                await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    finally:
        CLIENTS.discard(ws)


async def main(args: argparse.Namespace) -> None:
    hb = args.heartbeat or None
    async with serve(handler, args.host, args.port, ping_interval=hb, ping_timeout=max(args.heartbeat, 10) if hb else None,
                     backlog=4096) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await announce_and_wait(port)


def parse() -> argparse.Namespace:
    p = peer_parser(__doc__)
    p.add_argument("--heartbeat", type=float, default=0.0)
    return p.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse()))

"""Bare picows echo server on uvloop: the ceiling for the gateway's own stack.

    python -m bench.peers.picows_echo --port 0 [--read-buffer BYTES] [--heartbeat S]

--read-buffer is picows' `read_buffer_init_size` (default 16 KiB, the library's own default).
picows runs on aiofastnet's transports when that package is installed (as here), else on uvloop's;
--uvloop-transport forces uvloop's.
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from bench.peers import announce_and_wait, peer_parser

CLIENTS: set[EchoListener] = set()


class EchoListener(WSListener):
    __slots__ = ("transport",)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        CLIENTS.add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            if payload[:1] == b"B":
                for c in CLIENTS:
                    c.transport.send(mt, payload)
            else:
                transport.send(mt, payload)
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code() if frame.payload_size >= 2 else 1000)
            transport.disconnect()


async def main(args: argparse.Namespace) -> None:
    server = await ws_create_server(
        lambda _request: EchoListener(),
        args.host,
        args.port,
        read_buffer_init_size=args.read_buffer,
        enable_auto_ping=args.heartbeat > 0,
        auto_ping_idle_timeout=args.heartbeat or 20,
        auto_ping_reply_timeout=args.heartbeat or 20,  # picows wants reply <= idle timeout
        backlog=4096,
        use_aiofastnet=False if args.uvloop_transport else None,
    )
    await announce_and_wait(server.sockets[0].getsockname()[1])
    server.close()


def parse() -> argparse.Namespace:
    p = peer_parser(__doc__)
    p.add_argument("--read-buffer", type=int, default=16 * 1024)
    p.add_argument("--heartbeat", type=float, default=0.0, help="ping idle connections every S seconds (0: off)")
    p.add_argument("--uvloop-transport", action="store_true",
                   help="uvloop's own TCP transport instead of aiofastnet's (picows' default when aiofastnet is installed)")
    return p.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse()))

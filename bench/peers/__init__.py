"""Peer servers the bench compares the gateway with: each echoes every message back to its sender,
and a message whose payload starts with `B` goes to every connected client (the fan-out probe).
Every peer prints `listening PORT` once it accepts connections."""

from __future__ import annotations

import argparse
import asyncio
import signal


def peer_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every peer takes: --host (loopback) and --port (0: any free one)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    return p


async def announce_and_wait(port: int) -> None:
    """Print the `listening PORT` line the bench waits for, then serve until SIGINT or SIGTERM."""
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


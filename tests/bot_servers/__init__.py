"""Local HTTP servers that speak each bot vendor's wire format, for the bot_bridge tests.

Each module builds an aiohttp application around a ``State`` (scenario knobs and
a record of what arrived); :func:`serve` runs it on a free loopback port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class State:
    """What the test controls (``mode``, ``chunks``) and what the server saw."""

    mode: str = "ok"
    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "how can ", "I help?"])
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"path", "query", "headers", "json"/"body"}
    cancels: list[dict[str, Any]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # a "slow" stream reached its stall point
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets stalled streams finish
    extra: dict[str, Any] = field(default_factory=dict)


async def stall(state: State) -> None:
    """Hold a stream open until the test (or the harness at teardown) releases it."""
    state.stalled.set()
    await state.release.wait()


def cut(request: web.Request) -> None:
    """Drop the TCP connection in the middle of a response (no terminating chunk)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


@asynccontextmanager
async def serve(app: web.Application, state: State) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 and a free port; yields ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        state.release.set()
        await runner.cleanup()

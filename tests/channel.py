"""A second channel for tests: a `ChannelSession` whose wire is an asyncio queue of envelopes.

A real implementation of the seam (gateway/session.py), as small as a new channel file can be:
what a bot-API channel would POST, it puts on a queue the test reads.
"""

from __future__ import annotations

import asyncio
import json

from gateway.protocol import Outgoing
from gateway.session import ChannelSession


class QueueChannel(ChannelSession):
    """A channel whose wire is an asyncio queue of envelopes (what a bot API channel would POST)."""

    __slots__ = ("frames", "closed_with")

    def __init__(self, core, ident, max_text):
        super().__init__(core, ident, max_text)
        self.frames: asyncio.Queue[dict] = asyncio.Queue()
        self.closed_with: tuple[int, str] | None = None

    def write(self, batch: list[Outgoing]) -> None:
        for out in batch:
            self.frames.put_nowait(json.loads(out.json()))

    def close_transport(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    async def send(self, env: dict) -> None:
        self.receive(env)

    async def until_any(self) -> dict:
        return await asyncio.wait_for(self.frames.get(), 10)

    async def until(self, kind: str, **match) -> dict:
        while True:
            env = await asyncio.wait_for(self.frames.get(), 10)
            if env.get("t") == kind and all(env.get(k) == v for k, v in match.items()):
                return env

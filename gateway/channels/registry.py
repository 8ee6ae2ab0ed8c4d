"""The node's channels (config `[[channels]]`): built by kind, their routes, their start and stop."""

from __future__ import annotations

import importlib
from typing import Any

from aiohttp import web

from .base import Channel
from .http_channel import HttpChannel
from .telegram import TelegramChannel

KINDS: dict[str, type[Channel]] = {TelegramChannel.kind: TelegramChannel, HttpChannel.kind: HttpChannel}


def _import(path: str) -> type[Channel]:
    """A channel of your own: `kind = "package.module:Class"` (a `Channel` subclass; docs/channels.md)."""
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Channel)):
        raise TypeError(f"{path} is not a Channel")
    return cls


class Channels:
    """The node's channels, by name."""

    def __init__(self, node: Any, configured: list[dict[str, Any]]):
        self.all = [(KINDS.get(c["kind"]) or _import(c["kind"]))(node, c) for c in configured]
        self.by_name = {c.name: c for c in self.all}

    async def start(self) -> None:
        for c in self.all:
            await c.start()

    async def stop(self) -> None:
        for c in self.all:
            await c.stop()

    def add_routes(self, app: web.Application) -> None:
        async def inbound(request: web.Request) -> web.Response:
            ch = self.by_name.get(request.match_info["name"])
            if ch is None:
                raise web.HTTPNotFound(text="no such channel")
            return await ch.receive(request)

        app.router.add_post("/channels/{name}", inbound)

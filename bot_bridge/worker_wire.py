"""The wire between a node and its bot worker (bot_bridge/worker.py): a Unix socket pair carrying
msgpack arrays ``[kind, id, payload]``, and a bot question's context as it travels on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from .base import BotContext, Turn

Handler = Callable[[str, int, Any], None]


class Channel(asyncio.Protocol):
    """One end of the socket pair: msgpack arrays in both directions."""

    def __init__(self, on_message: Handler, on_lost: Callable[[BaseException | None], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=64 << 20)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        for kind, ident, payload in self._unpacker:
            self._on_message(kind, ident, payload)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._on_lost(exc)

    def send(self, kind: str, ident: int, payload: Any = None) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(msgpack.packb([kind, ident, payload], use_bin_type=True, default=str))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def ctx_to_wire(ctx: BotContext) -> dict[str, Any]:
    # by hand: dataclasses.asdict deep-copies every history turn, on the node's loop
    return {"tenant": ctx.tenant, "conv_id": ctx.conv_id, "group": ctx.group, "visitor": ctx.visitor,
            "question": ctx.question, "history": [[t.role, t.text] for t in ctx.history], "meta": ctx.meta,
            "seq": ctx.seq}


def ctx_from_wire(wire: dict[str, Any]) -> BotContext:
    wire = dict(wire)
    wire["history"] = [Turn(role, text) for role, text in wire.get("history", ())]
    return BotContext(**wire)


# ---- the node's side ----------------------------------------------------------------------

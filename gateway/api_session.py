"""A request-scoped session for the REST API: one envelope through the same handlers as a connection.

The REST API acts as a visitor (open), a service, a bot or an agent (a message, a close) by
running the envelope it stands for through the dispatcher (`Hub.run`) on an `ApiSession` that
is never registered with the node (it holds no presence and receives no deliveries); the reply
the handler sends back (`conv`, `ack`, `error`) is the request's answer. So the REST API keeps
the WebSocket's rules, errors and exactly-once log to the letter (docs/api.md).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgspec

from .envelopes import from_dict
from .protocol import Outgoing, ProtocolError
from .session import ChannelSession

REPLY_TIMEOUT_S = 10.0  # a reply that waits for the store's commit or Redis arrives well within this


class ApiSession(ChannelSession):
    """Catches the replies its one request gets, by rid; everything else sent to it is dropped."""

    __slots__ = ("reply",)

    def __init__(self, core: Any, ident: Any, max_text: int):
        super().__init__(core, ident, max_text)
        self.reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def send_env(self, env: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(msgspec.to_builtins(env) | {"t": env.t})

    def push(self, out: Outgoing) -> None:
        pass  # entries delivered to a subscribed session: this one only answers its request

    def write(self, batch: list[Outgoing]) -> None:
        pass


async def call(core: Any, ident: Any, max_text: int, env: dict[str, Any], *, wait_reply: bool,
               channel: str | None = None) -> dict[str, Any] | None:
    """Run `env` (a client envelope, as a dict) as `ident` (through `channel`: its messages carry it);
    its reply envelope (an `error` among them), or None when the handler ended without one and
    `wait_reply` is False."""
    session = ApiSession(core, ident, max_text)
    session.channel = channel
    env = {**env, "rid": secrets.token_hex(6)}
    try:
        typed = from_dict(env, max_text)
    except ProtocolError as e:
        return msgspec.to_builtins(e.envelope()) | {"t": "error"}
    await core.run(session, typed)
    if session.reply.done() or wait_reply:
        return await asyncio.wait_for(session.reply, REPLY_TIMEOUT_S)
    return None

"""What the server sends: one declaration per kind (docs/protocol.md, "Server -> client").

Replies and notices are msgspec Structs, encoded by msgspec straight to JSON or msgpack
(`protocol.Outgoing`); a field whose value is its default (None) is left out, as the
protocol says, except the fields it names as `null` (`conv.agent`, `assigned.bot`), which
have no default and are always written. Log entries (`msg`, `event`) are maps, because
they are records of the log (stored, replayed, read back from Redis) before they are
envelopes; `msg_entry` and `event_entry` build them.

A new server kind is one Struct here, in `ROUTED` when it may travel to another node.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from msgspec import Struct, field


class Reply(Struct, tag_field="t", omit_defaults=True, gc=False):
    """Every server envelope that is not a log entry."""

    t: ClassVar[str]


class Welcome(Reply, tag="welcome", kw_only=True):
    t: ClassVar[str] = "welcome"
    v: int
    node: str
    tenant: str
    user: str
    role: str
    convs: list[Any]
    hb: float
    exp: int
    limits: dict[str, Any]
    status: str | None = None  # agents: online | away | offline
    capacity: int | None = None  # agents


class ConvView(Reply, tag="conv", kw_only=True):
    """A conversation as its participant sees it: a snapshot taken when it was sent."""

    t: ClassVar[str] = "conv"
    conv: str
    state: str
    visitor: str
    agent: str | None  # null while no agent holds it
    group: str
    seq: int
    position: int | None = None  # when queued
    rid: Any = None


class Ack(Reply, tag="ack"):
    t: ClassVar[str] = "ack"
    conv: str
    id: str
    seq: int
    dup: bool
    rid: Any = None


class BotChunk(Reply, tag="bot_chunk"):
    t: ClassVar[str] = "bot_chunk"
    conv: str
    reply_to: int
    text: str


class Queue(Reply, tag="queue"):
    t: ClassVar[str] = "queue"
    conv: str
    position: int


class Assigned(Reply, tag="assigned", kw_only=True):
    t: ClassVar[str] = "assigned"
    conv: str
    visitor: str
    group: str
    seq: int  # the log's last seq when assigned: live entries continue after it
    meta: dict[str, Any]
    bot: Any  # the bot's last answer and the handoff reason; null without a handoff
    history: list[Any]


class Unassigned(Reply, tag="unassigned"):
    t: ClassVar[str] = "unassigned"
    conv: str
    rid: Any = None  # the transfer's, when it answers one


class Typing(Reply, tag="typing"):
    t: ClassVar[str] = "typing"
    conv: str
    sender: str = field(name="from")
    on: bool


class Read(Reply, tag="read"):
    t: ClassVar[str] = "read"
    conv: str
    sender: str = field(name="from")
    seq: int


class History(Reply, tag="history"):
    t: ClassVar[str] = "history"
    conv: str
    msgs: list[Any]
    first: int
    rid: Any = None


class Gap(Reply, tag="gap"):
    t: ClassVar[str] = "gap"
    conv: str
    first: int


class Resumed(Reply, tag="resumed"):
    t: ClassVar[str] = "resumed"
    conv: str
    seq: int
    rid: Any = None


class AgentStatus(Reply, tag="status", kw_only=True):
    t: ClassVar[str] = "status"
    status: str
    capacity: int
    groups: list[str]
    load: int
    rid: Any = None


class Pong(Reply, tag="pong"):
    t: ClassVar[str] = "pong"
    rid: Any = None


class Refreshed(Reply, tag="refreshed"):
    t: ClassVar[str] = "refreshed"
    exp: int
    rid: Any = None


class Error(Reply, tag="error", kw_only=True):
    t: ClassVar[str] = "error"
    code: str
    message: str
    field: str | None = None
    seq: int | None = None  # the log's last seq, for a cursor past the end
    rid: Any = None


class Closing(Reply, tag="closing"):
    t: ClassVar[str] = "closing"
    code: int  # the WebSocket close code that follows
    reason: str  # flood | slow_reader | token_expired | heartbeat | shutdown | drain | overload
    message: str
    # drain, overload: reconnect after this many ms (jittered per connection, so a node's clients
    # don't all land on the others at once). For `drain` the client leaves then, itself.
    retry_ms: int | None = None


# Kinds that may be handed to another node (gateway/delivery.py send_to): read back by `routed`.
ROUTED: dict[str, type[Reply]] = {c.t: c for c in (Queue, Assigned, Unassigned, Typing, Read, BotChunk)}


def routed(env: dict[str, Any]) -> Reply | dict[str, Any]:
    """An envelope another node sent as a map -> its Struct; log entries stay maps."""
    cls = ROUTED.get(env.get("t"))
    return msgspec.convert(env, cls) if cls is not None else env


def msg_entry(conv: str, id: str, sender: str, role: str, text: str, ts: int, **extra: Any) -> dict[str, Any]:
    """A `msg` log entry (its seq is set by the log's append); `extra`: `att`, and a bot's answer fields."""
    entry = {"t": "msg", "conv": conv, "seq": 0, "id": id, "from": sender, "role": role, "text": text, "ts": ts}
    if extra:
        entry.update(extra)
    return entry


def event_entry(conv: str, ev: str, ts: int, **fields: Any) -> dict[str, Any]:
    """An `event` log entry: a state change (`bot`, `handoff`, `queued`, `assigned`, `transferred`, ...)."""
    return {"t": "event", "conv": conv, "seq": 0, "ev": ev, "ts": ts, **fields}

"""The seam between a transport and the chat core: a `Session` is one client's connection.

The chat core (dispatch, handlers, lifecycle, delivery) talks to sessions only through
`Session`; a session talks to the core only through `Core` (the hub). The WebSocket
session is `gateway.listener.Connection` (Cython: the per-frame path and the idle memory
of tens of thousands of connections decide its shape). Another channel is one file: a
subclass of `ChannelSession` below that writes a batch of envelopes its own way and closes
its own way; it registers by calling `core.connected(session)`, hands each validated
envelope to `core.submit(session, env)` and ends with `core.disconnected(session)`.

Who owns which field (each is written by that module only):

| fields | owner |
|---|---|
| `tenant`, `user`, `role`, `ident`, `echo`, `channel` | the session's creator (from the verified token; `channel`: a messaging channel, gateway/channels) |
| `expires` | creator; `handlers.h_refresh` moves it |
| `cid`, `last_rx`, `last_msg`, `awaiting_pong` | `lifecycle` (the wheel key, heartbeats, the memory guard's idlest); the transport stamps `last_rx` (any frame) and `last_msg` (data frames) |
| `inbox`, `worker` | `dispatch` (per-session order) |
| `sent`, `syncing` | `subscriptions` (cursors) |
| `closed`, `paused`, `binary`, `outbox` | the transport |

Contract tests: tests/test_session_contract.py runs the same chat through a WebSocket
session and a `ChannelSession`.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from .envelopes import Envelope, from_dict
from .listener import schedule_flush
from .protocol import Outgoing, ProtocolError
from .replies import Closing


class Core(Protocol):
    """What a session calls on the node (gateway/hub.py `Hub`)."""

    def connected(self, s: Session) -> None:
        """A session is up (authenticated): register it; the core sends `welcome`."""

    def disconnected(self, s: Session) -> None:
        """The session is gone; its presence ends unless the user holds another."""

    def submit(self, s: Session, env: Envelope) -> None:
        """A decoded, checked envelope (gateway/envelopes.py) to run in the session's order."""

    def closing(self, s: Session) -> None:
        """We closed the session on purpose: arm its close deadline."""

    def slow_reader(self, s: Session) -> None:
        """The session is being closed for not reading (counted and logged)."""

    def resumed_writing(self, s: Session) -> None:
        """The session's transport drained below its low-water mark: a waiting replay goes on."""


@runtime_checkable
class Session(Protocol):
    """One client connection as the chat core sees it (see the module docstring for owners)."""

    tenant: str
    user: str
    role: str
    ident: Any
    echo: bool
    expires: float
    cid: int
    last_rx: float
    last_msg: float
    awaiting_pong: bool
    inbox: Any
    worker: Any
    sent: dict[str, int] | None
    syncing: dict[str, list[tuple[int, Any]]] | None
    closed: bool
    paused: bool
    binary: bool
    channel: str | None  # None: the web widget; a messaging channel stamps its messages with it

    def send_env(self, env: Any) -> None:
        """Queue an envelope (a gateway/replies.py Struct, or a log entry); it leaves with this loop turn's batch."""

    def push(self, out: Outgoing) -> None:
        """Queue an encoded-once envelope (shared by every recipient); nothing once closed."""

    def flush(self) -> None:
        """Write what is queued now; a transport over its write limit closes as a slow reader."""

    def fail(self, code: int, reason: str, why: str | None = None, retry_ms: int | None = None) -> None:
        """Close on purpose with `code` (RFC 6455 numbering), after a `closing` envelope when `why` is
        given (with `retry_ms`, when to reconnect)."""

    def slow_reader(self) -> None:
        """Close for not reading (1008), behind what is already queued."""

    def ping(self) -> None:
        """Ask the client for a sign of life (`awaiting_pong` until it answers)."""

    def close_going_away(self, reason: str) -> None:
        """Close because the node stops (1001, `shutdown`)."""

    def hang_up(self) -> bool:
        """The close deadline passed: end the connection. True if it now drains its backlog and closes
        (give it one more deadline), False if it was already draining and is cut off."""


class ChannelSession:
    """A session for a channel other than the WebSocket: everything but the wire.

    Subclasses implement `write(batch)` (the envelopes queued in one loop turn, in order)
    and may override `close_transport(code, reason)`; the channel calls `open()` once the
    client is authenticated, `receive(env)` for each decoded envelope (validated there, as
    the listener does) and `gone()` when the client left. Writes are coalesced per loop
    turn with the WebSocket sessions (listener.schedule_flush). The channel's own inbound
    limits (rate, size) are its own: the listener's token bucket is the WebSocket's.
    """

    __slots__ = ("core", "max_text", "ident", "tenant", "user", "role", "echo", "expires", "cid", "last_rx", "last_msg", "awaiting_pong",
                 "channel",
                 "inbox", "worker", "sent", "syncing", "closed", "paused", "binary", "outbox")

    def __init__(self, core: Core, ident: Any, max_text: int):
        """`ident`: the verified identity (gateway.auth.Identity); `max_text`: the node's limit."""
        self.core = core
        self.max_text = max_text
        self.ident = ident
        self.tenant, self.user, self.role = ident.tenant, ident.user, ident.role
        self.expires = ident.expires
        self.echo = self.awaiting_pong = self.closed = self.paused = self.binary = False
        self.cid = 0
        self.last_rx = self.last_msg = time.monotonic()
        self.inbox = self.worker = self.sent = self.syncing = None
        self.outbox: list[Outgoing] | None = None
        self.channel: str | None = None  # a messaging channel's name: its messages' entries carry it (`ch`)

    # what a subclass provides

    def write(self, batch: list[Outgoing]) -> None:
        """Put one loop turn's envelopes on the channel, in order."""
        raise NotImplementedError

    def close_transport(self, code: int, reason: str) -> None:  # noqa: B027 - a channel may have nothing to close
        """End the channel's side of the connection (after the last `write`)."""

    # the channel's side

    def open(self) -> None:
        """The client is authenticated and ready: register with the core."""
        self.core.connected(self)

    def receive(self, env: Any) -> None:
        """An envelope from the client, decoded (a dict); a bad one is answered with its `error`."""
        if self.closed:
            return
        self.last_rx = self.last_msg = time.monotonic()
        try:
            typed = from_dict(env, self.max_text)
        except ProtocolError as e:
            self.send_env(e.envelope())
            return
        self.core.submit(self, typed)

    def gone(self) -> None:
        """The client went away without a close."""
        self.closed = True
        self.outbox = None
        self.core.disconnected(self)

    # Session

    def send_env(self, env: Any) -> None:
        self.push(Outgoing(env))

    def push(self, out: Outgoing) -> None:
        if self.closed:
            return
        if self.outbox is None:
            self.outbox = [out]
            schedule_flush(self)
        else:
            self.outbox.append(out)

    def flush(self) -> None:
        out, self.outbox = self.outbox, None
        if out and not self.closed:
            self.write(out)

    def fail(self, code: int, reason: str, why: str | None = None, retry_ms: int | None = None) -> None:
        if self.closed:
            return
        self.flush()
        if why is not None:
            self.write([Outgoing(Closing(code, why, reason, retry_ms))])
        self.closed = True
        self.outbox = None
        self.close_transport(code, reason)
        self.core.closing(self)

    def slow_reader(self) -> None:
        self.core.slow_reader(self)
        self.fail(1008, "slow reader: too much unread data", "slow_reader")

    def ping(self) -> None:
        self.awaiting_pong = False  # a channel without pings counts as alive while it is open

    def close_going_away(self, reason: str) -> None:
        self.fail(1001, reason, "shutdown")

    def hang_up(self) -> bool:
        self.gone()
        return False

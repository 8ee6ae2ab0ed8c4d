"""What each envelope does: one handler per kind, taking what it needs (docs/protocol.md).

The dispatcher (gateway/dispatch.py) calls them in per-connection order; a handler answers
the connection, changes state through the coordinator and the router, and hands log
entries to delivery. `msg` runs without a coroutine over an in-process log (`msg_now`); over
a remote one its steps 1-3 are msg_remote.py's.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from dedup.window import make_dedup
from routing import Router

from . import auth, replies
from .bot_turns import BotTurns
from .conversation_events import ConversationEvents
from .coordinator import Agent, Conversation, Coordinator
from .coordinator.ports import SyncLog
from .delivery import Delivery
from .dispatch import Handler, InlineHandler, report
from .envelopes import (
    Close,
    Envelope,
    History,
    Msg,
    Open,
    Ping,
    Read,
    Refresh,
    Resume,
    Status,
    Transfer,
    Typing,
)
from .metrics import METRICS
from .msg_remote import RemoteMsg, new_entry, now_ms, taking_part
from .protocol import Outgoing, ProtocolError
from .replies import Ack, AgentStatus, Pong, Refreshed
from .retry import answered_then
from .session import Session
from .subscriptions import subscribe

_monotonic = time.monotonic
_ack_latency = METRICS.ack_latency.observe

_NONE: tuple[()] = ()  # no remote participants (most messages on one node): nothing allocated


class Handlers(RemoteMsg):
    """The envelope handlers of one node; `table()` is the dispatcher's registry."""

    def __init__(self, cfg: Any, coord: Coordinator, router: Router, delivery: Delivery, events: ConversationEvents,
                 bots: Any, bot_turns: BotTurns | None, spawn: Callable[[Awaitable[object]], object]):
        self.cfg = cfg
        self._spawn = spawn  # background tasks (the node's TaskSet)
        self.coord = coord
        self.router = router
        self.delivery = delivery
        self._events = events
        self.bots = bots
        self.bot_turns = bot_turns
        # Inline handler starts need a coordinator that never uses asyncio.timeout (which wants a
        # current task): the embedded one. Redis clients time out their reads that way.
        self.eager = isinstance(coord, SyncLog) and coord.eager_safe
        self._sync: SyncLog | None = coord if self.eager else None  # the log's synchronous fast path
        # The dedup cache saves a round trip to a remote log; an in-process log answers a retry
        # exactly by itself (docs/hub.md, 6a). The cache is this node's alone (the log is the
        # shared record), so a random seed is right: client-chosen ids can't be crafted to
        # collide in a hash nobody outside knows.
        self.dedup = None if self.eager else self._new_dedup()

    def _new_dedup(self) -> Any:
        return make_dedup(self.cfg.dedup_capacity, int(self.cfg.dedup_window_s * 1000), seed=secrets.randbits(64))

    def shed_memory(self) -> None:
        """Start the dedup cache empty (memory guard): a retry it no longer knows asks the log."""
        if self.dedup is not None:
            self.dedup = self._new_dedup()

    def table(self) -> dict[str, Handler]:
        """Kind -> handler, for every kind a client may send (envelopes.KINDS)."""
        return {"open": self.h_open, "msg": self.h_msg, "typing": self.h_typing, "read": self.h_read,
                "history": self.h_history, "resume": self.h_resume, "close": self.h_close, "status": self.h_status,
                "transfer": self.h_transfer, "ping": self.h_ping, "refresh": self.h_refresh}

    def inline(self) -> dict[str, InlineHandler]:
        """Kinds with a synchronous handler, used when the coordinator is in-process."""
        return {"msg": self.msg_now}

    async def _participant(self, conn: Session, env: Envelope) -> Conversation:
        """The conversation as stored now, if this connection's user takes part in it.

        Not the node's cached copy (`peek_conversation`): only `msg` uses that, because only its
        append checks the copy's version; a reader that was just unassigned must be refused here.
        """
        return taking_part(conn, env, await self.coord.get_conversation(conn.tenant, env.conv))

    async def h_open(self, conn: Session, env: Open) -> None:
        if conn.role != "visitor":
            raise ProtocolError("forbidden", "only visitors open conversations", rid=env.rid)
        existing = await self.coord.open_conversation_of(conn.tenant, conn.user)
        if existing:
            conv = await self.coord.get_conversation(conn.tenant, existing)
            if conv is not None:
                conn.send_env(await self._events.conv_view(conv, env.rid))
                return
        group = env.group or "default"
        with_bot = self.bots is not None and self.bots.has_bot(conn.tenant, group)
        conv = Conversation(
            id=uuid.uuid4().hex,
            tenant=conn.tenant,
            visitor=conn.user,
            group=group,
            state="bot" if with_bot else "queued",
            created_ms=(now := now_ms()),
            queued_ms=0 if with_bot else now,
            meta=env.meta or {},
        )
        await self.coord.create_conversation(conv)
        METRICS.conversations_opened.inc()
        subscribe(conn, conv.id, 0)  # the opener is subscribed from the first entry
        if not with_bot:
            await self.router.join(conv)  # first, so the reply carries the position it joined at
        conn.send_env(await self._events.conv_view(conv, env.rid))
        if with_bot:
            backend = self.bots.backend_for(conv.tenant, group)
            await self._then(lambda: self._bot_started(conv, backend), "bot start")
        else:
            await self._then(lambda: self.router.joined(conv), "queue drain",  # `queued` logged, `queue` frames
                             retry=lambda: self.router.drain_and_tell(conv.tenant, conv.group))

    async def _bot_started(self, conv: Conversation, backend: str | None) -> None:
        await self.delivery.deliver(conv, await self._events.event(conv, "bot", backend=backend))

    async def _then(self, step: Any, what: str, retry: Any = None) -> None:
        """The rest of a request that has its answer: never a second answer (retry.answered_then).

        `retry`: what to try again if `step` failed partway and must not be repeated whole."""
        await answered_then(step, what, self._spawn, retry=retry)

    # `msg`: one algorithm (docs/hub.md, "The msg steps"). Steps 1-3 read and append through
    # the log's port, synchronously for an in-process log (`msg_now`) or awaiting a remote one
    # (`h_msg`); steps 4-6 (`_appended`) are the same code for both.

    def msg_now(self, conn: Session, env: Msg) -> None:
        """`msg` over an in-process log (`SyncLog`): no coroutine, the entry encoded once.

        No node dedup cache here: the embedded log's own client-id map is exact for as long as
        the entry is kept, and one process cannot have appended without delivering.
        """
        sync = self._sync
        conv = taking_part(conn, env, sync.peek_now(conn.tenant, env.conv))  # 1
        if conv.state == "closed":  # 2
            self._closed_retry(conn, conv, env, sync.seq_of_now(conv.tenant, conv.id, conn.user, env.id))
            return
        entry = new_entry(conn, conv, env, now_ms())
        seq, dup, packed = sync.append_now(conv.tenant, conv.id, entry, env.id)  # 3
        args = (conn, conv, env, entry, seq, dup, None if dup else Outgoing(entry, packed))
        durable = sync.when_durable
        if durable is None:
            self._appended(*args)
        else:  # 3a: ack, deliver and answer only once this loop turn's entries are on disk
            durable(self._appended, args, lambda e: report(conn, env, e))

    def _appended(self, conn: Session, conv: Conversation, env: Msg, entry: dict[str, Any] | None,
                  seq: int, dup: bool, out: Outgoing | None) -> list[str] | tuple[()]:
        """Steps 4-6 of `msg`: ack the sender, deliver `out` here, start the bot's turn.

        Returns the participants this node does not hold (for the caller's node bus).
        """
        conn.send_env(Ack(conv.id, env.id, seq, dup, env.rid))  # 4
        _ack_latency(_monotonic() - conn.last_msg)
        if dup:
            METRICS.hot.duplicates += 1
        else:
            METRICS.hot.messages += 1
        if out is None:
            return _NONE
        apply = self.delivery.apply  # 5
        tenant = conv.tenant
        remote = _NONE
        for user in conv.participants():
            if not apply(tenant, user, out):
                remote = [*remote, user]
        if not dup and conv.state == "bot" and conn.role == "visitor" and self.bot_turns is not None:
            self.bot_turns.start(conv, entry)  # 6
        return remote

    async def h_typing(self, conn: Session, env: Typing) -> None:
        conv = await self._participant(conn, env)
        await self.delivery.relay(conv, conn.user, replies.Typing(conv.id, conn.user, env.on))

    async def h_read(self, conn: Session, env: Read) -> None:
        conv = await self._participant(conn, env)
        await self._within_log(conv, env, "seq")
        await self.delivery.relay(conv, conn.user, replies.Read(conv.id, conn.user, env.seq))

    async def h_history(self, conn: Session, env: History) -> None:
        conv = await self._participant(conn, env)
        entries, first = await self.coord.read_before(conv.tenant, conv.id, env.before, env.limit or 50)
        conn.send_env(replies.History(conv.id, entries, first, env.rid))

    async def _within_log(self, conv: Conversation, env: Envelope, field: str) -> None:
        """Refuse a cursor the log never reached (a client whose state is not this conversation's).

        The error names the real last seq; nothing about the connection changes.
        """
        last = await self.coord.last_seq(conv.tenant, conv.id)
        if getattr(env, field) > last:
            raise ProtocolError("bad_field", f"{env.t}: {field!r} {getattr(env, field)} is past the end of the log (last seq {last})",
                                field, env.rid, seq=last)

    async def h_resume(self, conn: Session, env: Resume) -> None:
        conv = await self._participant(conn, env)
        await self._within_log(conv, env, "after")
        await self.delivery.replay(conn, conv.tenant, conv.id, env.after, rid=env.rid, tell_gap=True)

    async def h_close(self, conn: Session, env: Close) -> None:
        conv = await self._participant(conn, env)
        if conn.role == "agent" and conv.agent != conn.user:
            raise ProtocolError("forbidden", "only the assigned agent can close", rid=env.rid)
        await self.router.close(conn.tenant, conv.id, by=conn.user)

    async def h_status(self, conn: Session, env: Status) -> None:
        if conn.role != "agent":
            raise ProtocolError("forbidden", "only agents have a status", rid=env.rid)
        agent = await self.coord.get_agent(conn.tenant, conn.user)
        if agent is None:  # _welcome has not finished yet; it will create the record
            agent = Agent(conn.tenant, conn.user, tuple(conn.ident.groups), self.cfg.agent_capacity, connected=True)
        agent.status = env.status
        agent.connected = True
        if env.capacity is not None:
            agent.capacity = env.capacity
        agent = await self.coord.upsert_agent(agent)
        conn.send_env(AgentStatus(status=agent.status, capacity=agent.capacity, groups=list(agent.groups), load=agent.load,
                                  rid=env.rid))
        await self._then(lambda: self.router.agent_changed(agent), "assignment after status")

    async def h_transfer(self, conn: Session, env: Transfer) -> None:
        if conn.role != "agent":
            raise ProtocolError("forbidden", "only agents transfer conversations", rid=env.rid)
        conv = await self._participant(conn, env)
        moved = await self.router.transfer(conn.tenant, conv.id, conn.user, env.to, env.group, env.rid)
        done: set[str] = set()
        await self._then(lambda: self.router.settle_transfer(moved, conn.user, done), "transfer")

    async def h_ping(self, conn: Session, env: Ping) -> None:
        conn.send_env(Pong(env.rid))

    async def h_refresh(self, conn: Session, env: Refresh) -> None:
        """A fresh token for the same identity moves the connection's expiry (docs/protocol.md, Tokens)."""
        rid = env.rid
        try:
            ident = auth.verify(env.token, self.cfg.keys, issuer=self.cfg.jwt_issuer)
        except auth.AuthError as e:
            METRICS.auth_failures.inc()
            raise ProtocolError("unauthorized", str(e), "token", rid) from None
        if (ident.tenant, ident.user, ident.role) != (conn.tenant, conn.user, conn.role):
            raise ProtocolError("forbidden", "the token is for another identity", "token", rid)
        conn.expires = ident.expires
        conn.send_env(Refreshed(int(ident.expires), rid))

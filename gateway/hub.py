"""The node's core: connection lifecycle, heartbeats, and what each envelope does.

Connections (gateway/listener.pyx) hand validated envelopes to `submit`; a
connection's envelopes run one after the other, inline when they can and on a
short-lived task only while that connection has work (docs/hub.md). State and
logs live behind the coordinator, assignment policy in routing/, delivery to
connections in gateway/delivery.py, bot turns in gateway/bot_turns.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import deque
from typing import Any

from dedup.window import make_dedup
from routing import Router
from routing.router import RoutingError

from . import auth
from .bot_turns import BotTurns
from .coordinator import Agent, Conversation, Coordinator, Unavailable
from .delivery import Delivery
from .listener import Connection
from .metrics import METRICS
from .protocol import VERSION, Outgoing, ProtocolError
from .timing_wheel import make_timing_wheel

log = logging.getLogger("gateway.hub")

TICK_S = 0.05
CLOSE_WAIT_S = 2.0
CLOSE_TOKEN_EXPIRED = 3000  # IANA-registered "Unauthorized" (docs/protocol.md, close codes)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Hub:
    def __init__(self, cfg: Any, coord: Coordinator):
        self.cfg = cfg
        self.coord = coord
        self.router = Router(coord, self)
        self.loop = asyncio.get_event_loop()
        self.delivery = Delivery(coord, self._spawn, stall_s=cfg.heartbeat_timeout_s)
        # What a client must respect, told once in `welcome` (docs/protocol.md); one dict for all.
        self._limits = {"max_text": cfg.max_text, "max_frame": cfg.max_frame, "rate_per_s": cfg.rate_per_s,
                        "rate_burst": cfg.rate_burst, "flood_strikes": cfg.flood_strikes,
                        "heartbeat_timeout_s": cfg.heartbeat_timeout_s}
        self.users = self.delivery.users  # this node's connections by (tenant, user)
        self.conns: dict[int, Connection] = {}
        self._next_id = 0
        self._dirty: list[Connection] = []
        self._flush_pending = False
        self._queue_pos: dict[tuple[str, str], tuple[int, str]] = {}  # (tenant, conv) -> (position told, visitor)
        # Inline handler starts need a coordinator that never uses asyncio.timeout (which wants a
        # current task): the embedded one. Redis clients time out their reads that way.
        self._eager = bool(getattr(coord, "eager_safe", False))
        # The dedup cache saves a round trip to a remote log; an in-process log answers a retry
        # exactly by itself (docs/hub.md, 6a). The cache is this node's alone (the log is the
        # shared record), so a random seed is right: client-chosen ids can't be crafted to
        # collide in a hash nobody outside knows.
        self._dedup = None if self._eager else make_dedup(
            cfg.dedup_capacity, int(cfg.dedup_window_s * 1000), seed=secrets.randbits(64))

        # One wheel for every deadline: a connection's heartbeat (cid*4) and token expiry (cid*4+2),
        # agent grace periods (odd keys).
        self._wheel = make_timing_wheel(tick_ms=int(TICK_S * 1000))
        self._grace: dict[int, tuple[str, str]] = {}
        self._grace_of: dict[tuple[str, str], int] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._t0 = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bots: Any = None
        self.bot_turns: BotTurns | None = None
        if cfg.bots_enabled and cfg.bots.get("enabled", True):
            from bot_bridge.worker import WorkerBridge  # the bridge itself runs in a worker process

            self.bots = WorkerBridge.from_mapping(cfg.bots)
            self.bot_turns = BotTurns(self, self.bots)
        coord.on_delivery(self.delivery.from_remote)
        coord.on_node_lost(self._node_lost)
        coord.on_rejoin(self._rejoin)

    # lifecycle

    async def start(self) -> None:
        if self.bots is not None:
            await self.bots.start()
        self._ticker = self.loop.call_later(TICK_S, self._tick)

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self.bot_turns is not None:
            self.bot_turns.cancel_all()
            await self.bots.close()
        for conn in list(self.conns.values()):
            conn.close_going_away("node shutting down")
            conn.transport.disconnect()  # the ticker is gone: flush the close frame and close now

    def _mono_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    # connections

    def connected(self, conn: Connection) -> None:
        self._next_id += 1
        conn.cid = self._next_id
        self.conns[conn.cid] = conn
        METRICS.connections.labels(conn.role or "echo").inc()
        if conn.echo:
            return
        key = (conn.tenant, conn.user)
        peers = self.users.get(key, ())
        first = not peers
        self.users[key] = (*peers, conn)
        now_ms = self._mono_ms()
        self._wheel.schedule(conn.cid * 4, now_ms + int(self.cfg.heartbeat_s * 1000))
        self._wheel.schedule(conn.cid * 4 + 2, now_ms + self._ms_until(conn.expires))
        self._spawn(self._welcome(conn, first))

    def disconnected(self, conn: Connection) -> None:
        if self.conns.pop(conn.cid, None) is None:
            return
        self.delivery.wake(conn, False)
        METRICS.connections.labels(conn.role or "echo").dec()
        if conn.echo:
            return
        self._wheel.cancel(conn.cid * 4)
        self._wheel.cancel(conn.cid * 4 + 2)
        key = (conn.tenant, conn.user)
        peers = self.users.get(key)
        if peers is not None and conn in peers:
            rest = tuple(c for c in peers if c is not conn)
            if rest:
                self.users[key] = rest
            else:
                del self.users[key]
                self._spawn(self._last_gone(conn))

    async def _welcome(self, conn: Connection, first: bool) -> None:
        await self.coord.set_present(conn.tenant, conn.user, True, conn.role)
        convs: list[dict[str, Any]] = []
        if conn.role == "agent":
            self._cancel_grace(conn.tenant, conn.user)
            agent = await self.coord.get_agent(conn.tenant, conn.user)
            capacity = conn.ident.capacity if conn.ident.capacity is not None else self.cfg.agent_capacity
            agent = Agent(
                tenant=conn.tenant,
                id=conn.user,
                groups=tuple(conn.ident.groups),
                capacity=agent.capacity if agent else capacity,
                status=agent.status if agent else "offline",
                connected=True,
            )
            agent = await self.coord.upsert_agent(agent)
            for conv_id in await self.coord.conversations_of_agent(conn.tenant, conn.user):
                c = await self.coord.get_conversation(conn.tenant, conv_id)
                if c:
                    convs.append(await self._conv_view(c))
            if first:
                await self.router.agent_changed(agent)
        elif conn.role == "visitor":
            conv_id = await self.coord.open_conversation_of(conn.tenant, conn.user)
            c = await self.coord.get_conversation(conn.tenant, conv_id) if conv_id else None
            if c:
                convs.append(await self._conv_view(c))
        status = {"status": agent.status, "capacity": agent.capacity} if conn.role == "agent" else {}
        conn.send_env(
            {
                **status,
                "t": "welcome",
                "v": VERSION,
                "node": self.coord.node_id,
                "tenant": conn.tenant,
                "user": conn.user,
                "role": conn.role,
                "convs": convs,
                "hb": self.cfg.heartbeat_s,
                "exp": int(conn.expires),
                "limits": self._limits,
            }
        )

    async def _last_gone(self, conn: Connection) -> None:
        if (conn.tenant, conn.user) in self.users:
            return  # reconnected here meanwhile
        remaining = await self.coord.set_present(conn.tenant, conn.user, False, conn.role)
        if conn.role == "visitor" and not remaining and self.bot_turns is not None and self.bot_turns.busy:
            # The visitor left: nobody is waiting for the bot's answer any more.
            conv_id = await self.coord.open_conversation_of(conn.tenant, conn.user)
            if conv_id:
                self.bot_turns.cancel(conn.tenant, conv_id, "visitor left")
        if conn.role == "agent" and not remaining:
            await self._agent_gone(conn.tenant, conn.user)

    async def _agent_gone(self, tenant: str, agent_id: str) -> None:
        """No node holds the agent any more: no new work now, its conversations after the grace period."""
        agent = await self.coord.get_agent(tenant, agent_id)
        if agent is None or (tenant, agent_id) in self.users:
            return
        agent.connected = False
        await self.coord.upsert_agent(agent)
        if await self.coord.conversations_of_agent(tenant, agent_id):
            self._start_grace(tenant, agent_id)

    async def _rejoin(self) -> None:
        """We were cut off from shared state and may have been reaped: register whom we hold again,
        then catch every connection up from the log on what was published while we were away.

        In that order: an entry appended before our presence is back is in the log when the
        catch-up reads it; one appended after is published to us.
        """
        for (tenant, user), peers in list(self.users.items()):
            role = peers[0].role
            await self.coord.set_present(tenant, user, True, role)
            if role == "agent":
                agent = await self.coord.get_agent(tenant, user)
                if agent is not None and not agent.connected:
                    agent.connected = True
                    await self.coord.upsert_agent(agent)
                    await self.router.agent_changed(agent)
        for conn in list(self.conns.values()):
            for conv_id in list(conn.sent or ()):
                self._spawn(self.delivery.catch_up(conn, conn.tenant, conv_id))

    async def _node_lost(self, lost: list[tuple[str, str, str]]) -> None:
        """Another node died holding these users; its agents get their grace period here."""
        for tenant, user, role in lost:
            if role == "agent" and not await self.coord.is_present(tenant, user):
                await self._agent_gone(tenant, user)

    # agent grace periods

    def _start_grace(self, tenant: str, agent: str) -> None:
        self._next_id += 1
        key = self._next_id * 2 + 1
        self._grace[key] = (tenant, agent)
        self._grace_of[(tenant, agent)] = key
        self._wheel.schedule(key, self._mono_ms() + int(self.cfg.agent_grace_s * 1000))

    def _cancel_grace(self, tenant: str, agent: str) -> None:
        key = self._grace_of.pop((tenant, agent), None)
        if key is not None:
            self._grace.pop(key, None)
            self._wheel.cancel(key)

    async def _grace_expired(self, tenant: str, agent: str) -> None:
        if (tenant, agent) in self.users or await self.coord.is_present(tenant, agent):
            return
        moved = await self.router.requeue_agent(tenant, agent)
        METRICS.requeued.inc(len(moved))

    # the one timer: heartbeats, token expiry and grace periods

    def _ms_until(self, unix_s: float) -> int:
        return max(0, int((unix_s - time.time()) * 1000))

    def _tick(self) -> None:
        self._ticker = self.loop.call_later(TICK_S, self._tick)
        now_ms = self._mono_ms()
        for key in self._wheel.advance(now_ms):
            if key & 1:
                who = self._grace.pop(key, None)
                if who is not None:
                    self._grace_of.pop(who, None)
                    self._spawn(self._grace_expired(*who))
                continue
            conn = self.conns.get(key // 4)
            if conn is None:
                continue
            if conn.closed:  # we closed it (hub.closing moved its heartbeat key): close the socket
                if conn.transport.underlying_transport.is_closing():
                    conn.transport.disconnect(False)  # still unread after the grace: cut it off
                else:
                    conn.transport.disconnect()  # flushes the backlog and our close frame, then closes
                    self._wheel.schedule(conn.cid * 4, now_ms + int(self.cfg.heartbeat_timeout_s * 1000))
                continue
            if key & 2:
                left = self._ms_until(conn.expires)
                if left > 0:  # refreshed meanwhile
                    self._wheel.schedule(key, now_ms + left)
                else:
                    METRICS.tokens_expired.inc()
                    conn.fail(CLOSE_TOKEN_EXPIRED, "token expired; connect again with a fresh token", "token_expired")
                continue
            idle_ms = int((time.monotonic() - conn.last_rx) * 1000)
            hb_ms = int(self.cfg.heartbeat_s * 1000)
            if conn.awaiting_pong and idle_ms >= hb_ms:
                METRICS.heartbeat_timeouts.inc()
                conn.fail(1001, "heartbeat timeout", "heartbeat")
            elif idle_ms < hb_ms:
                conn.awaiting_pong = False
                self._wheel.schedule(key, now_ms + hb_ms - idle_ms)
            else:
                conn.ping()
                self._wheel.schedule(key, now_ms + int(self.cfg.heartbeat_timeout_s * 1000))

    # outgoing

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def closing(self, conn: Connection) -> None:
        """We sent a close frame: give the peer CLOSE_WAIT_S to answer, then close the socket.

        Closing flushes what is still buffered (a slow reader's backlog, then our close frame)
        while the peer reads; one that reads nothing is cut off `heartbeat_timeout_s` later.
        """
        # The connection's heartbeat key in the wheel becomes its close deadline: no timer of its own.
        self._wheel.schedule(conn.cid * 4, self._mono_ms() + int(CLOSE_WAIT_S * 1000))

    def resumed_writing(self, conn: Connection) -> None:
        self.delivery.wake(conn, True)

    def slow_reader(self, conn: Connection) -> None:
        METRICS.slow_readers.inc()
        log.info("closing slow reader %s/%s (1008): it stopped reading what it was sent", conn.tenant, conn.user)

    # incoming

    def submit(self, conn: Connection, env: dict[str, Any]) -> None:
        """Run `env` for `conn` after the envelopes before it (per-connection order).

        An idle connection's envelope starts at once, inline (no task), when the coordinator
        allows it: with the embedded one most handlers finish without ever suspending. One that
        does suspend is finished by a task, and later envelopes queue behind it.
        """
        METRICS.hot.envelopes_in += 1
        if conn.inbox is not None:
            conn.inbox.append(env)
            return
        if self._eager:
            if env["t"] == "msg":  # the hot path: no coroutine at all
                try:
                    self._msg_inline(conn, env)
                except Exception as e:
                    self._report(conn, env, e)
                return
            # Nothing else of this connection can run until this returns (frames are handled one
            # at a time), so the inbox is only needed once the handler suspends.
            coro = self._handle_safe(conn, env)
            try:
                fut = coro.send(None)
            except StopIteration:
                return
            conn.inbox = deque()
            task = self.loop.create_task(self._finish_then_drain(conn, coro, fut))
        else:
            conn.inbox = deque((env,))
            task = self.loop.create_task(self._drain(conn))
        conn.worker = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _finish_then_drain(self, conn: Connection, coro: Any, fut: Any) -> None:
        try:
            await _resume(coro, fut)
        finally:
            await self._drain(conn)

    async def _drain(self, conn: Connection) -> None:
        inbox = conn.inbox
        try:
            while inbox:
                await self._handle_safe(conn, inbox.popleft())
        finally:
            conn.inbox = None
            conn.worker = None

    async def _handle_safe(self, conn: Connection, env: dict[str, Any]) -> None:
        try:
            await _HANDLERS[env["t"]](self, conn, env)
        except Exception as e:
            self._report(conn, env, e)

    def _report(self, conn: Connection, env: dict[str, Any], e: Exception) -> None:
        """Tell the client why its envelope failed; log what is our fault."""
        if isinstance(e, ProtocolError):
            conn.send_env(e.envelope())
        elif isinstance(e, RoutingError):
            conn.send_env(ProtocolError(e.code, str(e), rid=env.get("rid")).envelope())
        elif isinstance(e, Unavailable):
            conn.send_env(ProtocolError("unavailable", str(e) or "shared state unreachable", rid=env.get("rid")).envelope())
        else:
            log.error("handling %s from %s/%s", env.get("t"), conn.tenant, conn.user, exc_info=e)
            conn.send_env(ProtocolError("internal", "internal error", rid=env.get("rid")).envelope())

    async def _participant(self, conn: Connection, env: dict[str, Any]) -> Conversation:
        """The conversation, read-only, if this connection's user takes part in it."""
        return _taking_part(conn, env, await self.coord.peek_conversation(conn.tenant, env["conv"]))

    async def h_open(self, conn: Connection, env: dict[str, Any]) -> None:
        if conn.role != "visitor":
            raise ProtocolError("forbidden", "only visitors open conversations", rid=env.get("rid"))
        existing = await self.coord.open_conversation_of(conn.tenant, conn.user)
        if existing:
            conv = await self.coord.get_conversation(conn.tenant, existing)
            if conv is not None:
                view = await self._conv_view(conv)
                view["rid"] = env.get("rid")
                conn.send_env(view)
                return
        group = env.get("group") or "default"
        with_bot = self.bots is not None and self.bots.has_bot(conn.tenant, group)
        conv = Conversation(
            id=uuid.uuid4().hex,
            tenant=conn.tenant,
            visitor=conn.user,
            group=group,
            state="bot" if with_bot else "queued",
            created_ms=_now_ms(),
            meta=env.get("meta") or {},
        )
        await self.coord.create_conversation(conv)
        METRICS.conversations_opened.inc()
        if conn.sent is None:
            conn.sent = {}
        conn.sent[conv.id] = 0  # the opener is subscribed from the first entry
        view = await self._conv_view(conv)
        view["rid"] = env.get("rid")
        if with_bot:
            conn.send_env(view)
            await self.delivery.deliver(conv, await self._event(conv, "bot", backend=self.bots.backend_for(conv.tenant, group)))
        else:
            # The reply carries the queue position it joined at; `queue` frames follow as usual.
            view["position"] = await self.router.join(conv)
            conn.send_env(view)
            await self.router.joined(conv)

    def _msg_inline(self, conn: Connection, env: dict[str, Any]) -> None:
        """`h_msg` for a coordinator whose state is in this process: no coroutine, one encoding.

        Same steps and answers as `h_msg`; the node's dedup cache is skipped because the
        embedded log's own client-id map is exact for as long as the entry is kept.
        """
        conv = _taking_part(conn, env, self.coord.peek_now(conn.tenant, env["conv"]))
        if conv.state == "closed":
            self._closed_retry(conn, conv, env, self.coord.seq_of_now(conv.tenant, conv.id, conn.user, env["id"]))
            return
        entry = _new_entry(conn, conv, env, _now_ms())
        seq, dup, packed = self.coord.append_now(conv.tenant, conv.id, entry, env["id"])
        ack = {"t": "ack", "conv": conv.id, "id": env["id"], "seq": seq, "dup": dup}  # _ack, inline: every message
        rid = env.get("rid")
        if rid is not None:
            ack["rid"] = rid
        conn.send_env(ack)
        if dup:
            METRICS.hot.duplicates += 1
            return  # one node holds everything: the first append was delivered then
        METRICS.hot.messages += 1
        out = Outgoing(entry, packed)
        apply = self.delivery.apply
        for user in conv.participants():
            apply(conv.tenant, user, out)
        if conv.state == "bot" and conn.role == "visitor" and self.bot_turns is not None:
            self.bot_turns.start(conv, entry)

    def _closed_retry(self, conn: Connection, conv: Conversation, env: dict[str, Any], seq: int | None) -> None:
        """A closed conversation takes no new message, but a retry of a logged one still gets its ack."""
        if seq is None:
            raise ProtocolError("conflict", "conversation is closed", "conv", env.get("rid"))
        METRICS.hot.duplicates += 1
        conn.send_env(_ack(conv.id, env, seq, True))

    async def h_msg(self, conn: Connection, env: dict[str, Any]) -> None:
        if self._eager:  # queued behind this connection's earlier envelopes: the same inline code
            self._msg_inline(conn, env)
            return
        conv = await self._participant(conn, env)
        cid = env["id"]
        # Conversation ids are random and unique across tenants, and the tenant was checked above.
        # Client ids are the sender's own: the key is (conversation, sender, id).
        now = _now_ms()
        seq = self._dedup.get(conv.id, conn.user, cid, now)
        if seq is not None:
            METRICS.hot.duplicates += 1
            conn.send_env(_ack(conv.id, env, seq, True))
            return
        if conv.state == "closed":
            self._closed_retry(conn, conv, env, await self.coord.seq_of(conv.tenant, conv.id, conn.user, cid))
            return
        entry = _new_entry(conn, conv, env, now)
        seq, dup = await self.coord.append(conv.tenant, conv.id, entry, cid)
        self._dedup.put(conv.id, conn.user, cid, seq, now)
        conn.send_env(_ack(conv.id, env, seq, dup))
        if dup:
            METRICS.hot.duplicates += 1
            # The log knew it but this node did not: the node that appended it may have died
            # before delivering. Deliver again; connections drop what they already have.
            first, _ = await self.coord.read_after(conv.tenant, conv.id, seq - 1, 1)
            if first and first[0]["seq"] == seq:
                await self.delivery.deliver(conv, first[0])
            return
        METRICS.hot.messages += 1
        await self.delivery.deliver(conv, entry)
        if conv.state == "bot" and conn.role == "visitor" and self.bot_turns is not None:
            self.bot_turns.start(conv, entry)

    async def h_typing(self, conn: Connection, env: dict[str, Any]) -> None:
        conv = await self._participant(conn, env)
        await self.delivery.relay(conv, conn.user, {"t": "typing", "conv": conv.id, "from": conn.user, "on": env["on"]})

    async def h_read(self, conn: Connection, env: dict[str, Any]) -> None:
        conv = await self._participant(conn, env)
        await self._within_log(conv, env, "seq")
        await self.delivery.relay(conv, conn.user, {"t": "read", "conv": conv.id, "from": conn.user, "seq": env["seq"]})

    async def h_history(self, conn: Connection, env: dict[str, Any]) -> None:
        conv = await self._participant(conn, env)
        entries, first = await self.coord.read_before(conv.tenant, conv.id, env.get("before"), env.get("limit") or 50)
        conn.send_env({"t": "history", "conv": conv.id, "msgs": entries, "first": first, "rid": env.get("rid")})

    async def _within_log(self, conv: Conversation, env: dict[str, Any], field: str) -> None:
        """Refuse a cursor the log never reached (a client whose state is not this conversation's).

        The error names the real last seq; nothing about the connection changes.
        """
        last = await self.coord.last_seq(conv.tenant, conv.id)
        if env[field] > last:
            raise ProtocolError("bad_field", f"{env['t']}: {field!r} {env[field]} is past the end of the log (last seq {last})",
                                field, env.get("rid"), seq=last)

    async def h_resume(self, conn: Connection, env: dict[str, Any]) -> None:
        conv = await self._participant(conn, env)
        await self._within_log(conv, env, "after")
        await self.delivery.replay(conn, conv.tenant, conv.id, env["after"], rid=env.get("rid"), tell_gap=True)

    async def h_close(self, conn: Connection, env: dict[str, Any]) -> None:
        conv = await self._participant(conn, env)
        if conn.role == "agent" and conv.agent != conn.user:
            raise ProtocolError("forbidden", "only the assigned agent can close", rid=env.get("rid"))
        await self.router.close(conn.tenant, conv.id, by=conn.user)

    async def h_status(self, conn: Connection, env: dict[str, Any]) -> None:
        if conn.role != "agent":
            raise ProtocolError("forbidden", "only agents have a status", rid=env.get("rid"))
        agent = await self.coord.get_agent(conn.tenant, conn.user)
        if agent is None:  # _welcome has not finished yet; it will create the record
            agent = Agent(conn.tenant, conn.user, tuple(conn.ident.groups), self.cfg.agent_capacity, connected=True)
        agent.status = env["status"]
        agent.connected = True
        if env.get("capacity") is not None:
            agent.capacity = env["capacity"]
        agent = await self.coord.upsert_agent(agent)
        conn.send_env(
            {
                "t": "status",
                "status": agent.status,
                "capacity": agent.capacity,
                "groups": list(agent.groups),
                "load": agent.load,
                "rid": env.get("rid"),
            }
        )
        await self.router.agent_changed(agent)

    async def h_transfer(self, conn: Connection, env: dict[str, Any]) -> None:
        if conn.role != "agent":
            raise ProtocolError("forbidden", "only agents transfer conversations", rid=env.get("rid"))
        conv = await self._participant(conn, env)
        await self.router.transfer(conn.tenant, conv.id, conn.user, env.get("to"), env.get("group"), env.get("rid"))

    async def h_ping(self, conn: Connection, env: dict[str, Any]) -> None:
        conn.send_env({"t": "pong", "rid": env.get("rid")})

    async def h_refresh(self, conn: Connection, env: dict[str, Any]) -> None:
        """A fresh token for the same identity moves the connection's expiry (docs/protocol.md, Tokens)."""
        rid = env.get("rid")
        try:
            ident = auth.verify(env["token"], self.cfg.jwt_secret, issuer=self.cfg.jwt_issuer)
        except auth.AuthError as e:
            METRICS.auth_failures.inc()
            raise ProtocolError("unauthorized", str(e), "token", rid) from None
        if (ident.tenant, ident.user, ident.role) != (conn.tenant, conn.user, conn.role):
            raise ProtocolError("forbidden", "the token is for another identity", "token", rid)
        conn.expires = ident.expires
        conn.send_env({"t": "refreshed", "exp": int(ident.expires), "rid": rid})

    # routing sink

    async def _event(self, conv: Conversation, ev: str, **fields: Any) -> dict[str, Any]:
        entry = {"t": "event", "conv": conv.id, "seq": 0, "ev": ev, "ts": _now_ms(), **fields}
        await self.coord.append(conv.tenant, conv.id, entry)
        return entry

    async def on_queued(self, conv: Conversation, ev: str) -> None:
        entry = await self._event(conv, ev, group=conv.group)
        await self.delivery.deliver(conv, entry)

    async def on_assigned(self, conv: Conversation, ev: str, previous: str | None) -> None:
        self._queue_pos.pop((conv.tenant, conv.id), None)
        if self.bot_turns is not None:
            self.bot_turns.cancel(conv.tenant, conv.id, "agent took over")
        entry = await self._event(conv, ev, agent=conv.agent, by=previous)
        history, _ = await self.coord.read_before(conv.tenant, conv.id, None, self.cfg.assign_history)
        last = history[-1]["seq"] if history else 0
        assigned = Outgoing(
            {
                "t": "assigned",
                "conv": conv.id,
                "visitor": conv.visitor,
                "group": conv.group,
                "seq": last,
                "meta": {k: v for k, v in conv.meta.items() if k != "bot"},
                "bot": conv.meta.get("bot"),
                "history": history,
            }
        )
        await self.delivery.send_to(conv.tenant, [conv.agent], assigned)
        METRICS.assignments.inc()
        await self.delivery.deliver(conv, entry)

    async def on_unassigned(self, conv: Conversation, agent: str, rid: Any = None) -> None:
        env: dict[str, Any] = {"t": "unassigned", "conv": conv.id}
        if rid is not None:
            env["rid"] = rid
        await self.delivery.send_to(conv.tenant, [agent], env)

    async def on_queue_changed(self, tenant: str, group: str) -> None:
        """Tell every waiting visitor whose position changed (one lookup per newcomer, not per change)."""
        for pos, conv_id in enumerate(await self.coord.queue_list(tenant, group), 1):
            known = self._queue_pos.get((tenant, conv_id))
            if known is not None and known[0] == pos:
                continue
            visitor = known[1] if known is not None else None
            if visitor is None:
                conv = await self.coord.get_conversation(tenant, conv_id)
                if conv is None:
                    continue
                visitor = conv.visitor
            self._queue_pos[(tenant, conv_id)] = (pos, visitor)
            await self.delivery.send_to(tenant, [visitor], {"t": "queue", "conv": conv_id, "position": pos})

    async def on_closed(self, conv: Conversation, by: str) -> None:
        self._queue_pos.pop((conv.tenant, conv.id), None)
        if self.bot_turns is not None:
            self.bot_turns.cancel(conv.tenant, conv.id, "conversation closed")
        entry = await self._event(conv, "closed", by=by)
        await self.delivery.deliver(conv, entry)

    # helpers

    async def _conv_view(self, conv: Conversation) -> dict[str, Any]:
        view: dict[str, Any] = {
            "t": "conv",
            "conv": conv.id,
            "state": conv.state,
            "visitor": conv.visitor,
            "agent": conv.agent,
            "group": conv.group,
            "seq": await self.coord.last_seq(conv.tenant, conv.id),
        }
        if conv.state == "queued":
            queue = await self.coord.queue_list(conv.tenant, conv.group)
            if conv.id in queue:
                view["position"] = queue.index(conv.id) + 1
        return view

    def _spawn(self, coro: Any) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _log_failure(task)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.conns), "users": len(self.users), "dedup": len(self._dedup) if self._dedup is not None else 0,
                "timers": len(self._wheel), "coordinator": dict(getattr(self.coord, "stats", {}))}


class _Yield:
    """Hand a future a coroutine is blocked on to the task now driving that coroutine."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any):
        self.fut = fut

    def __await__(self):
        return (yield self.fut)


def _taking_part(conn: Connection, env: dict[str, Any], conv: Conversation | None) -> Conversation:
    if conv is None or not (conn.role == "service" or conn.user in conv.participants()):
        # A conversation of another tenant or another visitor looks exactly like a missing one.
        raise ProtocolError("not_participant", "no such conversation for this user", "conv", env.get("rid"))
    return conv


def _ack(conv_id: str, env: dict[str, Any], seq: int, dup: bool) -> dict[str, Any]:
    """The reply to a `msg`: its client id and seq, and its `rid` when it carried one."""
    ack = {"t": "ack", "conv": conv_id, "id": env["id"], "seq": seq, "dup": dup}
    rid = env.get("rid")
    if rid is not None:
        ack["rid"] = rid
    return ack


def _new_entry(conn: Connection, conv: Conversation, env: dict[str, Any], now: int) -> dict[str, Any]:
    """The log entry for a `msg` envelope (seq is set by the coordinator's append)."""
    entry: dict[str, Any] = {"t": "msg", "conv": conv.id, "seq": 0, "id": env["id"], "from": conn.user,
                             "role": conn.role, "text": env["text"], "ts": now}
    if env.get("att"):
        entry["att"] = env["att"]
    return entry


async def _resume(coro: Any, fut: Any) -> Any:
    """Finish, inside a task, a coroutine that was started inline and suspended on `fut`.

    The task waits on the very object the coroutine yielded (a future, or None for a bare
    yield), then steps the coroutine again; a cancellation of the task is thrown into it.
    """
    while True:
        try:
            await _Yield(fut)
        except BaseException as e:  # noqa: BLE001 - cancellation and the like belong to the coroutine
            try:
                fut = coro.throw(e)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            fut = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


_HANDLERS = {
    "open": Hub.h_open,
    "msg": Hub.h_msg,
    "typing": Hub.h_typing,
    "read": Hub.h_read,
    "history": Hub.h_history,
    "resume": Hub.h_resume,
    "close": Hub.h_close,
    "status": Hub.h_status,
    "transfer": Hub.h_transfer,
    "ping": Hub.h_ping,
    "refresh": Hub.h_refresh,
}

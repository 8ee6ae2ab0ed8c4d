"""A connection's life on the node: welcome, presence, agent grace periods, heartbeats, token
expiry and close deadlines, all on one timing wheel (docs/hub.md, steps 7-8).

The listener tells this module when a connection arrives, leaves, is closed on purpose,
stops reading or can be written again; everything with a deadline is a key in one wheel
advanced every TICK_S, so an idle connection holds no task and no timer.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from routing import Router

from .bot_turns import BotTurns
from .conversation_events import ConversationEvents
from .coordinator import Agent, Coordinator
from .delivery import Delivery
from .listener import Connection
from .metrics import METRICS
from .protocol import VERSION
from .replies import Closing, Welcome
from .session import Session
from .subscriptions import subscribed
from .tasks import TaskSet
from .timing_wheel import make_timing_wheel

log = logging.getLogger("gateway.lifecycle")

TICK_S = 0.05
CLOSE_WAIT_S = 2.0
CLOSE_TOKEN_EXPIRED = 3000  # IANA-registered "Unauthorized" (docs/protocol.md, close codes)


def _jitter_ms(spread_s: float) -> int:
    """A reconnect delay drawn uniformly from [0, spread_s) in ms: a node's clients don't all come back at once."""
    return int(random.random() * spread_s * 1000)


class Lifecycle:
    """Sessions of this node from upgrade to close, and the one timer behind their deadlines.

    Wheel keys: `cid*4` a connection's heartbeat (its close deadline once we closed it),
    `cid*4+2` its token's expiry, odd keys agent grace periods.
    """

    def __init__(self, cfg: Any, coord: Coordinator, router: Router, delivery: Delivery, events: ConversationEvents,
                 tasks: TaskSet, bot_turns: BotTurns | None,
                 first: Callable[[Session, Coroutine[Any, Any, None]], None] | None = None):
        """`first(conn, coro)`: run a connection's welcome before its envelopes (`Dispatcher.first`)."""
        self._first = first or (lambda _conn, coro: tasks.spawn(coro))
        self.cfg = cfg
        self.coord = coord
        self.router = router
        self.delivery = delivery
        self._events = events
        self._tasks = tasks
        self.bot_turns = bot_turns
        self._loop = tasks.loop
        self.conns: dict[int, Session] = {}
        self.users = delivery.users  # this node's connections by (tenant, user)
        self._next_id = 0
        self.limits_changed()
        self._wheel = make_timing_wheel(tick_ms=int(TICK_S * 1000))
        self._grace: dict[int, tuple[str, str]] = {}
        self._grace_of: dict[tuple[str, str], int] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self.sockets = 0  # chat WebSocket connections (not channels' or API sessions): what a drain waits for
        self.emptied: asyncio.Event | None = None  # set when the last of them leaves (a drain waits on it)
        self._t0 = time.monotonic()
        coord.on_node_lost(self._node_lost)
        coord.on_rejoin(self._rejoin)

    def limits_changed(self) -> None:
        """What a client must respect, told once in `welcome` (docs/protocol.md); one dict for all,
        built again when a reload changes them."""
        cfg = self.cfg
        self._limits = {"max_text": cfg.max_text, "max_frame": cfg.max_frame, "rate_per_s": cfg.rate_per_s,
                        "rate_burst": cfg.rate_burst, "flood_strikes": cfg.flood_strikes,
                        "heartbeat_timeout_s": cfg.heartbeat_timeout_s}

    def start(self) -> None:
        self._ticker = self._loop.call_later(TICK_S, self._tick)
        # After a restart on a store, the agents that held conversations are not connected yet:
        # the same grace period as if they had just left (they keep them if they come back in time).
        away = getattr(self.coord, "agents_away", None)
        for tenant, agent in away() if away is not None else ():
            self._start_grace(tenant, agent)

    def stop(self) -> None:
        """Close every connection now (1001 `shutdown`), flushing its close frame."""
        if self._ticker:
            self._ticker.cancel()
        for conn in list(self.conns.values()):
            conn.close_going_away("node shutting down")
            conn.hang_up()  # the ticker is gone: flush the close frame and close now

    def drain(self, spread_s: float) -> int:
        """Tell every WebSocket client to leave: `closing` {1001, drain, retry_ms} with retry_ms drawn
        uniformly from [0, spread_s * 1000), so they reconnect elsewhere spread over that window.

        They stay open and served until their clients leave (or `stop` closes them); `emptied` is
        set when the last has gone. Sessions the node made itself (messaging channels' contacts,
        API calls) are not told: they have no client to reconnect. Returns how many were told.
        """
        told = 0
        for conn in self._sockets():
            conn.send_env(Closing(1001, "drain", "this server is restarting: you are being moved to another one",
                                  _jitter_ms(spread_s)))
            told += 1
        return told

    def close_idlest(self, n: int) -> int:
        """Close the `n` WebSocket connections whose last message is the oldest with 1013 (try again
        later), each told a jittered `retry_ms` within `drain_spread_s`. Returns how many were closed."""
        spread_s = self.cfg.drain_spread_s
        closed = 0
        for conn in heapq.nsmallest(n, self._sockets(), key=lambda c: c.last_msg):
            conn.fail(1013, "node overloaded: try again later", "overload", _jitter_ms(spread_s))
            closed += 1
        return closed

    def _sockets(self) -> list[Connection]:
        return [c for c in self.conns.values() if type(c) is Connection and not c.echo and not c.closed]

    def timers(self) -> int:
        return len(self._wheel)

    def _mono_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def connected(self, conn: Session) -> None:
        self._next_id += 1
        conn.cid = self._next_id
        self.conns[conn.cid] = conn
        METRICS.connections.labels(conn.role or "echo").inc()
        if conn.echo:
            return
        if type(conn) is Connection:
            self.sockets += 1
        key = (conn.tenant, conn.user)
        peers = self.users.get(key, ())
        first = not peers
        self.users[key] = (*peers, conn)
        now_ms = self._mono_ms()
        self._wheel.schedule(conn.cid * 4, now_ms + int(self.cfg.heartbeat_s * 1000))
        if conn.expires:  # 0: a session the node made itself (a messaging channel's contact): no token to expire
            self._wheel.schedule(conn.cid * 4 + 2, now_ms + self._ms_until(conn.expires))
        # Before any of its envelopes: a `status` racing the agent's record being written here
        # lost its status (the welcome's write, from an older read, came last).
        self._first(conn, self._welcome(conn, first))

    def disconnected(self, conn: Session) -> None:
        if self.conns.pop(conn.cid, None) is None:
            return
        if type(conn) is Connection and not conn.echo:
            self.sockets -= 1
            if not self.sockets and self.emptied is not None:
                self.emptied.set()
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
                self._tasks.spawn(self._last_gone(conn))

    async def _welcome(self, conn: Session, first: bool) -> None:
        await self.coord.set_present(conn.tenant, conn.user, True, conn.role)
        convs: list[Any] = []  # ConvView
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
            held = await self.coord.conversations_of_agent(conn.tenant, conn.user)
            # Presence is written: other nodes' cached holders of these conversations must be read
            # again before anything here reads their logs (the views' seqs, the client's resume).
            await self.coord.holders_changed(conn.tenant, held)
            for conv_id in held:
                c = await self.coord.get_conversation(conn.tenant, conv_id)
                if c:
                    convs.append(await self._events.conv_view(c))
            if first:
                await self.router.agent_changed(agent)
        elif conn.role == "visitor":
            conv_id = await self.coord.open_conversation_of(conn.tenant, conn.user)
            if conv_id:
                await self.coord.holders_changed(conn.tenant, [conv_id])  # as for an agent, above
            c = await self.coord.get_conversation(conn.tenant, conv_id) if conv_id else None
            if c:
                convs.append(await self._events.conv_view(c))
        welcome = Welcome(v=VERSION, node=self.coord.node_id, tenant=conn.tenant, user=conn.user, role=conn.role,
                          convs=convs, hb=self.cfg.heartbeat_s, exp=int(conn.expires), limits=self._limits)
        if conn.role == "agent":
            welcome.status, welcome.capacity = agent.status, agent.capacity
        conn.send_env(welcome)

    async def _last_gone(self, conn: Session) -> None:
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
        by_tenant: dict[str, set[str]] = {}
        for conn in list(self.conns.values()):
            by_tenant.setdefault(conn.tenant, set()).update(subscribed(conn))
        for tenant, conv_ids in by_tenant.items():  # before the catch-ups read the logs (holders.py)
            await self.coord.holders_changed(tenant, sorted(conv_ids))
        for conn in list(self.conns.values()):
            for conv_id in subscribed(conn):
                self._tasks.spawn(self.delivery.catch_up(conn, conn.tenant, conv_id))

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
        self._ticker = self._loop.call_later(TICK_S, self._tick)
        now_ms = self._mono_ms()
        for key in self._wheel.advance(now_ms):
            if key & 1:
                who = self._grace.pop(key, None)
                if who is not None:
                    self._grace_of.pop(who, None)
                    self._tasks.spawn(self._grace_expired(*who))
                continue
            conn = self.conns.get(key // 4)
            if conn is None:
                continue
            if conn.closed:  # we closed it (`closing` moved its heartbeat key): close the socket
                if conn.hang_up():  # it drains its backlog and our close frame; cut off if still unread then
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

    def closing(self, conn: Session) -> None:
        """We sent a close frame: give the peer CLOSE_WAIT_S to answer, then close the socket.

        Closing flushes what is still buffered (a slow reader's backlog, then our close frame)
        while the peer reads; one that reads nothing is cut off `heartbeat_timeout_s` later.
        """
        # The connection's heartbeat key in the wheel becomes its close deadline: no timer of its own.
        self._wheel.schedule(conn.cid * 4, self._mono_ms() + int(CLOSE_WAIT_S * 1000))

    def resumed_writing(self, conn: Session) -> None:
        self.delivery.wake(conn, True)

    def slow_reader(self, conn: Session) -> None:
        METRICS.slow_readers.inc()
        log.info("closing slow reader %s/%s (1008): it stopped reading what it was sent", conn.tenant, conn.user,
                 extra={"tenant": conn.tenant, "user": conn.user, "cid": conn.cid})

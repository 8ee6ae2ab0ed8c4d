"""Delivery on one node: who is connected here, and how entries reach them (docs/delivery.md).

Every envelope for a user goes through `apply` on the node that holds the user's
connections; users held elsewhere are handed to the coordinator, whose other
node calls `from_remote`. Log entries pass each connection's order check
(`Session.push_entry`); a connection that falls behind catches up from the
log, and `replay` serves `resume` with no gap and no repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .coordinator import Conversation, Coordinator, Unavailable
from .metrics import METRICS
from .protocol import EncodedEntry, Outgoing
from .replies import Gap, Reply, Resumed, routed
from .retry import until_done
from .session import Session
from .subscriptions import begin_replay, cursor, end_replay, offer, subscribe, subscribed_to, unsubscribe

REPLAY_PAGE = 500
# A replay writes this much, then waits until the client has read it (the transport's write
# buffer is below its low-water mark) before it writes more: a long history costs the node
# at most about this plus the transport's high-water mark per connection, never the whole log.
REPLAY_CHUNK_BYTES = 32 * 1024


class Delivery:
    def __init__(self, coord: Coordinator, spawn: Callable[[Any], None], stall_s: float = 10.0):
        """`stall_s`: how long a replay waits for a client that stopped reading before closing it (1008)."""
        self.coord = coord
        self._spawn = spawn
        self._stall_s = stall_s
        self._waiting: dict[Session, asyncio.Future[bool]] = {}  # replays waiting for a client to read
        # A tuple, not a set: most users have one connection, and a 1-tuple is a quarter of an
        # empty set's size (idle memory per connection); it is also a ready snapshot to iterate.
        self.users: dict[tuple[str, str], tuple[Session, ...]] = {}

    def apply(self, tenant: str, user: str, out: Outgoing) -> bool:
        """Hand an envelope to this node's connections of `user`; False if it holds none.

        Log entries go through the per-connection order check; `assigned` and
        `unassigned` subscribe and unsubscribe the agent's connections.
        """
        peers = self.users.get((tenant, user))
        if not peers:
            return False
        env = out.env
        if type(env) is dict:  # a log entry (msg, event): replies.py declares everything else as a Struct
            conv = env["conv"]
            seq = env["seq"]
            for conn in peers:
                if not offer(conn, conv, seq, out):
                    METRICS.hot.catch_ups += 1
                    self._spawn(self.catch_up(conn, tenant, conv))
            return True
        kind = env.t
        for conn in peers:
            conn.push(out)
            if kind == "assigned":
                subscribe(conn, env.conv, env.seq)
            elif kind == "unassigned":
                unsubscribe(conn, env.conv)
        return True

    async def send_to(self, tenant: str, users: list[str] | tuple[str, ...], env: dict[str, Any] | Reply | Outgoing) -> None:
        """Deliver to local connections directly and to the nodes holding the rest."""
        out = env if isinstance(env, Outgoing) else Outgoing(env)
        remote = [u for u in users if not self.apply(tenant, u, out)]
        if remote:
            await self.remote(tenant, remote, out)

    async def remote(self, tenant: str, users: list[str], out: Outgoing) -> None:
        """Hand `out` to the nodes holding `users` (a log entry with its JSON, encoded once). Never raises
        `Unavailable`: what is sent is in the log or already answered, so while shared state is away
        it is tried again in the background."""
        env = out.env
        encoded = out.json() if type(env) is dict else None

        def send() -> Any:
            return self.coord.deliver_remote(tenant, users, env, encoded)

        try:
            await send()
        except Unavailable:
            self._spawn(until_done(send, "remote delivery"))

    async def deliver(self, conv: Conversation, entry: dict[str, Any]) -> None:
        """Send a log entry to every connection of every participant, at most once and in order."""
        await self.send_to(conv.tenant, conv.participants(), entry)

    def from_remote(self, tenant: str, users: list[str], env: Any, encoded: bytes | None) -> None:
        out = EncodedEntry(env, encoded) if encoded is not None else Outgoing(routed(env))
        for user in users:
            self.apply(tenant, user, out)

    async def relay(self, conv: Conversation, sender: str, env: Reply) -> None:
        await self.send_to(conv.tenant, [u for u in conv.participants() if u != sender], env)

    async def catch_up(self, conn: Session, tenant: str, conv_id: str) -> None:
        """Send `conn` what the log has past its cursor on `conv_id`; tried until done or `conn` closes."""
        async def step() -> None:
            if conn.closed or not subscribed_to(conn, conv_id):
                return  # closed, or unsubscribed (unassigned) while waiting to try again: nothing to catch up
            await self.replay(conn, tenant, conv_id, cursor(conn, conv_id), rid=None, tell_gap=False)

        await until_done(step, "catch-up", lambda: conn.closed)

    async def _drained(self, conn: Session) -> bool:
        """Write what `conn` has queued and wait until the client has read it; False if it is gone.

        A client that reads nothing for `stall_s` is a slow reader: closed with 1008 (after a
        `closing` envelope, queued behind what it has not read). Only a waiting replay holds a
        timer, never an idle connection.
        """
        conn.flush()
        if conn.closed:
            return False
        if not conn.paused:
            return True
        loop = asyncio.get_running_loop()
        fut = self._waiting[conn] = loop.create_future()
        timer = loop.call_later(self._stall_s, self.wake, conn, False)
        try:
            writable = await fut
        finally:
            timer.cancel()
            self._waiting.pop(conn, None)
        if not writable and not conn.closed:
            conn.slow_reader()
        return writable

    def wake(self, conn: Session, writable: bool) -> None:
        """End a replay's wait on `conn`: it can write again (True), or it is gone or stalled (False)."""
        fut = self._waiting.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(writable)

    async def replay(self, conn: Session, tenant: str, conv_id: str, after: int, rid: Any, tell_gap: bool) -> None:
        """Send entries after `after`, then whatever arrived live meanwhile, with no gap or repeat."""
        buffered = begin_replay(conn, conv_id)
        if buffered is None:
            return  # a replay of this conversation is already running on this connection
        # Never below what this connection was already sent: each entry at most once per connection.
        last = start = max(after, cursor(conn, conv_id))
        try:
            while not conn.closed:
                entries, first = await self.coord.read_after(tenant, conv_id, last, REPLAY_PAGE)
                if first > last + 1:
                    if tell_gap:
                        conn.send_env(Gap(conv_id, first))
                    last = first - 1
                chunk = 0
                for e in entries:
                    out = Outgoing(e)
                    conn.push(out)
                    last = e["seq"]
                    chunk += len(out.msgpack() if conn.binary else out.json())
                    if chunk >= REPLAY_CHUNK_BYTES:
                        chunk = 0
                        if not await self._drained(conn):
                            return
                if len(entries) < REPLAY_PAGE:
                    break
            # Live entries held back during the replay: send the ones past `last` in order.
            while buffered:
                buffered.sort(key=lambda p: p[0])
                pending, buffered[:] = list(buffered), []
                for seq, out in pending:
                    if seq == last + 1:
                        conn.push(out)
                        last = seq
                    elif seq > last + 1:  # still a hole: read it from the log
                        entries, _ = await self.coord.read_after(tenant, conv_id, last, seq - last)
                        for e in entries:
                            conn.push(Outgoing(e))
                            last = e["seq"]
                        if seq == last + 1:
                            conn.push(out)
                            last = seq
        except BaseException:
            if last > start and (tell_gap or subscribed_to(conn, conv_id)):
                subscribe(conn, conv_id, last)  # what was pushed before the failure counts: a retry goes on from there
            raise
        finally:
            end_replay(conn, conv_id)
        # A resume subscribes; a catch-up only moves the cursor of a subscription still there (the
        # agent may have been unassigned while it read).
        if tell_gap or subscribed_to(conn, conv_id):
            subscribe(conn, conv_id, last)
        if tell_gap:
            conn.send_env(Resumed(conv_id, last, rid))

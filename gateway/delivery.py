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
from operator import itemgetter
from typing import Any

from .coordinator import Conversation, Coordinator, Unavailable
from .metrics import METRICS
from .protocol import EncodedEntry, Outgoing
from .replies import Gap, Reply, Resumed, routed
from .retry import until_done
from .session import Session
from .subscriptions import begin_replay, cursor, end_replay, offer, subscribe, subscribed_to, unsubscribe

REPLAY_PAGE = 500
# An entry ahead of a connection's cursor usually has its predecessor on the way from another
# node (both nodes appended to the conversation within a millisecond or so): wait this long for
# it, holding what arrives, before reading the hole from the log (docs/delivery.md, step 4a).
GAP_WAIT_S = 0.05
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
        # (connection, conversation) -> (entries held since a hole opened, the timer that reads it)
        self._gaps: dict[tuple[Session, str], tuple[list[tuple[int, Outgoing]], asyncio.TimerHandle]] = {}
        # (connection, conversation) -> resolved when the replay holding its `syncing` ends (a
        # resume that finds one running waits for it, then replays: it always gets its `resumed`)
        self._replaying: dict[tuple[Session, str], asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

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
            gaps = self._gaps
            for conn in peers:
                if not offer(conn, conv, seq, out):
                    self._gap(conn, tenant, conv, seq, out)
                elif gaps and (conn, conv) in gaps:
                    self._gap_fill(conn, conv)
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

    def _gap(self, conn: Session, tenant: str, conv: str, seq: int, out: Outgoing) -> None:
        """Entry `seq` is ahead of `conn`'s cursor: hold it and what follows for `GAP_WAIT_S`."""
        held = begin_replay(conn, conv)
        if held is None:  # not reached: `offer` holds entries while a replay runs
            return
        held.append((seq, out))
        self._gaps[(conn, conv)] = (held, self._loop_now().call_later(GAP_WAIT_S, self._gap_timeout, conn, tenant, conv))

    def _gap_fill(self, conn: Session, conv: str) -> None:
        """An entry arrived while `conn` waits on a hole in `conv`: send what is now in order."""
        held, timer = self._gaps[(conn, conv)]
        if conn.closed or not subscribed_to(conn, conv):  # nothing to wait for any more
            self._gap_end(conn, conv)
            return
        held.sort(key=itemgetter(0))
        last = cursor(conn, conv)
        done = 0
        for seq, out in held:
            if seq > last + 1:
                break
            if seq == last + 1:
                conn.push(out)
                last = seq
            done += 1
        if done:
            del held[:done]
            subscribe(conn, conv, last)
        if not held:
            self._gap_end(conn, conv)

    def _gap_end(self, conn: Session, conv: str, keep: bool = False) -> list[tuple[int, Outgoing]] | None:
        """Stop waiting on `conv`'s hole; returns what was held (None if it was not waiting), still
        parked in `conn`'s `syncing` if `keep` (a replay takes it over)."""
        gap = self._gaps.pop((conn, conv), None)
        if gap is None:
            return None
        gap[1].cancel()
        if not keep:
            end_replay(conn, conv)
        return gap[0]

    def _replay_ended(self, conn: Session, conv: str) -> None:
        end_replay(conn, conv)
        running = self._replaying.pop((conn, conv), None)
        if running is not None and not running.done():
            running.set_result(None)

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        return loop

    def _gap_timeout(self, conn: Session, tenant: str, conv: str) -> None:
        gap = self._gaps.pop((conn, conv), None)
        if gap is None:
            return
        if conn.closed or not subscribed_to(conn, conv):
            end_replay(conn, conv)
            return
        METRICS.hot.catch_ups += 1
        # The held entries stay parked (live ones keep joining them) until the catch-up's replay
        # takes them; from now on the conversation is being replayed.
        self._replaying[(conn, conv)] = self._loop_now().create_future()
        self._spawn(self.catch_up(conn, tenant, conv, held=gap[0]))

    async def catch_up(self, conn: Session, tenant: str, conv_id: str,
                       held: list[tuple[int, Outgoing]] | None = None) -> None:
        """Send `conn` what the log has past its cursor on `conv_id`; tried until done or `conn` closes.

        `held`: entries parked in `conn`'s `syncing` for this conversation (a hole waited on), which
        the first attempt's replay takes over.
        """
        async def step() -> None:
            nonlocal held
            parked, held = held, None
            if conn.closed or not subscribed_to(conn, conv_id):
                if parked is not None:
                    self._replay_ended(conn, conv_id)
                return  # closed, or unsubscribed (unassigned) while waiting to try again: nothing to catch up
            await self.replay(conn, tenant, conv_id, cursor(conn, conv_id), rid=None, tell_gap=False, parked=parked)

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

    async def replay(self, conn: Session, tenant: str, conv_id: str, after: int, rid: Any, tell_gap: bool,
                     parked: list[tuple[int, Outgoing]] | None = None) -> None:
        """Send entries after `after`, then whatever arrived live meanwhile, with no gap or repeat.

        `parked`: the live entries already held for this conversation (`catch_up` after a hole).
        """
        key = (conn, conv_id)
        buffered = parked if parked is not None else self._gap_end(conn, conv_id, keep=True)  # a resume ends a wait
        if buffered is None:
            buffered = begin_replay(conn, conv_id)
        if buffered is None:  # a replay of this conversation is already running on this connection
            running = self._replaying.get(key)
            if not tell_gap or running is None:
                return  # a catch-up: the running replay sends everything
            await asyncio.shield(running)  # a resume: after it, from where the client says
            return await self.replay(conn, tenant, conv_id, after, rid, tell_gap)
        if key not in self._replaying:  # (a catch-up's parked entries came with one)
            self._replaying[key] = self._loop_now().create_future()
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
            self._replay_ended(conn, conv_id)
        # A resume subscribes; a catch-up only moves the cursor of a subscription still there (the
        # agent may have been unassigned while it read).
        if tell_gap or subscribed_to(conn, conv_id):
            subscribe(conn, conv_id, last)
        if tell_gap:
            conn.send_env(Resumed(conv_id, last, rid))

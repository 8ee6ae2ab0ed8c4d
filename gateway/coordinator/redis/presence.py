"""Presence on Redis: which nodes hold a user; node heartbeats, reaping dead nodes, rejoining after a gap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import msgpack

from ...retry import until_done
from .errors import available_errors
from .keys import q
from .pipe import Pipes
from .presence_writes import PresenceWrites

log = logging.getLogger("gateway.redis")

class RedisPresence:
    """The `Presence` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    _presence: PresenceWrites
    _pipes: Pipes
    _ck: Callable[[str, str, str], str]

    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        """Batched with the other changes of this loop turn (presence_writes.py)."""
        holders = await self._presence.write(tenant, user, present, role)
        return len([n for n in holders if n not in self._dead_nodes])

    @available_errors
    async def holders_changed(self, tenant: str, conv_ids: list[str]) -> None:
        """Bump each conversation's holders version (meta `hv`, holders.py), auto-pipelined (pipe.py)."""
        keys = [self._ck(tenant, c, "meta") for c in conv_ids]
        await asyncio.gather(*(self._pipes.call(k, "HINCRBY", k, "hv", 1) for k in keys))

    async def _nodes_of(self, tenant: str, user: str) -> list[str]:
        nodes = [n.decode() for n in await self.r.hkeys(self._pk(tenant, user))]
        return [n for n in nodes if n not in self._dead_nodes]

    @available_errors
    async def is_present(self, tenant: str, user: str) -> bool:
        return bool(await self._nodes_of(tenant, user))

    def on_node_lost(self, handler: Callable[[list[tuple[str, str, str]]], Awaitable[None]]) -> None:
        self._node_lost = handler

    def on_rejoin(self, handler: Callable[[], Awaitable[None]]) -> None:
        self._rejoin = handler

    # The heartbeat (step 8a): a thread of its own with a Redis connection of its own, so the
    # node's liveness doesn't share fate with its event loop (a storm of handshakes kept it busy
    # for 31 s) or with its connection pool.

    def _start_heartbeat(self) -> None:
        self._beat_stop = threading.Event()
        loop = asyncio.get_running_loop()
        self._beat_thread = threading.Thread(target=self._beat_forever, args=(loop,), name="chatgw-heartbeat",
                                             daemon=True)
        self._beat_thread.start()

    def _stop_heartbeat(self) -> None:
        stop = getattr(self, "_beat_stop", None)
        if stop is not None and not stop.is_set():
            stop.set()
            self._beat_thread.join(self._node_ttl_s * 2 + 1)  # longer than a beat's socket timeout
            with contextlib.suppress(Exception):
                self._beat_client.close()

    def _beat_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._beat_stop.wait(self._heartbeat_s):
            try:
                cut_off = self._beat()
                if cut_off is not None:
                    loop.call_soon_threadsafe(self._cut_off, *cut_off)
            except RuntimeError:  # the loop is closed: the node is stopping
                return
            except Exception as e:  # noqa: BLE001 - the heartbeat must outlive any one failure
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._beat_failed, e)

    def _beat(self) -> tuple[float, bool] | None:
        """Renew our entry in the live-node set; (gap, reaped) when we were cut off, else None."""
        now_ms = int(time.time() * 1000)
        # ZADD counts a new member: our entry was gone, so a reaper removed it (its last step,
        # after our presence) or Redis lost its data. Either way our users must be registered again.
        added = self._beat_client.zadd(f"{self._p}:nodes", {self.node_id: now_ms + int(self._node_ttl_s * 1000)})
        reaped = bool(added) and self._beats > 0
        self._beats += 1
        gap = time.monotonic() - self._last_beat
        self._last_beat = time.monotonic()
        return (gap, reaped) if gap > self._node_ttl_s or reaped else None

    def _beat_failed(self, e: Exception) -> None:
        self.health_state = {"ok": False, "reason": f"heartbeat: {type(e).__name__}: {e}"}

    def _cut_off(self, gap: float, reaped: bool) -> None:
        """We were cut off longer than our TTL, or reaped: presence gone, agents marked away. We are
        alive, so say again whom we hold (and catch our connections up)."""
        if self._rejoin is None or self._closing:
            return
        log.warning("heartbeat gap of %.1f s (ttl %.1f s)%s: re-registering this node's users", gap,
                    self._node_ttl_s, ", and we were reaped" if reaped else "")
        task = asyncio.ensure_future(until_done(self._rejoin, "re-registration after a gap", lambda: self._closing))
        self._tasks.append(task)

    async def _watch_nodes(self) -> None:
        """Which nodes are live, which are dead; reap the dead (one survivor does each)."""
        now_ms = int(time.time() * 1000)
        nodes_key = f"{self._p}:nodes"
        live = await self.r.zrangebyscore(nodes_key, now_ms, "+inf")
        self._live_nodes = {n.decode() for n in live}
        dead = [n.decode() for n in await self.r.zrangebyscore(nodes_key, "-inf", now_ms - 1)]
        now = time.monotonic()
        for n in dead:
            self._dead_nodes[n] = now
        for n, since in list(self._dead_nodes.items()):
            if now - since > 600 or n in self._live_nodes:  # long reaped, or back (same id restarted)
                del self._dead_nodes[n]
        for n in dead:
            await self._reap(n)

    async def _reap(self, node: str) -> None:
        """Clean up after a dead node; one surviving node does it (a lock per dead node)."""
        lock = f"{self._p}:reap:{q(node)}"
        if not await self.r.set(lock, self.node_id, nx=True, px=30_000):
            return
        score = await self.r.zscore(f"{self._p}:nodes", node)
        if score is not None and score >= time.time() * 1000:
            await self.r.delete(lock)  # it beat again since we read the list: alive
            return
        users_key = self._nk(node)
        lost: list[tuple[str, str, str]] = []
        for raw in await self.r.smembers(users_key):
            tenant, user, role = msgpack.unpackb(raw, raw=False)
            await self.r.hdel(self._pk(tenant, user), node)
            lost.append((tenant, user, role))
        await self.r.delete(users_key)
        await self.r.zrem(f"{self._p}:nodes", node)
        log.warning("node %s is gone; %d of its users cleaned up", node, len(lost))
        if lost and self._node_lost is not None:
            await self._node_lost(lost)

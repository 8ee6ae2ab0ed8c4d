"""Presence on Redis: which nodes hold a user; node heartbeats, reaping dead nodes, rejoining after a gap."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgpack

from .errors import available_errors
from .keys import q

log = logging.getLogger("gateway.redis")

class RedisPresence:
    """The `Presence` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    @available_errors
    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        key = self._pk(tenant, user)
        member = msgpack.packb([tenant, user, role])
        if present:
            await self.r.hset(key, self.node_id, role)
            await self.r.sadd(self._nk(self.node_id), member)
        else:
            await self.r.hdel(key, self.node_id)
            await self.r.srem(self._nk(self.node_id), member)
        return len(await self._nodes_of(tenant, user))

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

    async def _heartbeat_once(self) -> None:
        now_ms = int(time.time() * 1000)
        nodes_key = f"{self._p}:nodes"
        # ZADD counts a new member: our entry was gone, so a reaper removed it (its last step,
        # after our presence) or Redis lost its data. Either way our users must be registered again.
        added = await self.r.zadd(nodes_key, {self.node_id: now_ms + int(self._node_ttl_s * 1000)})
        reaped = bool(added) and self._beats > 0
        self._beats += 1
        gap = time.monotonic() - self._last_beat
        self._last_beat = time.monotonic()
        if (gap > self._node_ttl_s or reaped) and self._rejoin is not None:
            # We were cut off longer than our TTL, or reaped: presence gone, agents marked away.
            # We are alive, so say again whom we hold (and catch our connections up).
            log.warning("heartbeat gap of %.1f s (ttl %.1f s)%s: re-registering this node's users", gap,
                        self._node_ttl_s, ", and we were reaped" if reaped else "")
            await self._rejoin()
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

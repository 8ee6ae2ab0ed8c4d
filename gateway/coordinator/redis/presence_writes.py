"""Presence writes in batches: one pipeline per loop turn, one batch in flight (docs/cluster.md, step 6a).

A reconnect storm is the everyday case for a large site: tens of thousands of connections
arriving or leaving within seconds, each changing its user's presence. Written one by one
they need a pooled Redis connection each, concurrently (a storm of 100,000 exhausted the
pool 57,186 times). Here every change queued during one loop turn goes in one pipeline
(HSET/HDEL the user's holder, SADD/SREM the node's member list, HKEYS the holders for the
caller's count), and the next batch waits for the one in flight: the Redis connections a
storm uses are bounded, whatever its size.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from .errors import answer_waiters

_Change = tuple[str, str, bool, str, "asyncio.Future[list[str]]"]  # tenant, user, present, role, holders


class PresenceWrites:
    """Queues presence changes and writes them together; `write` returns the user's holders after."""

    def __init__(self, coord: Any):
        self._c = coord  # the RedisCoordinator: its client `r`, node id and key builders
        self._queued: list[_Change] = []
        self._running: asyncio.Task[None] | None = None
        self.stats = coord.stats
        self.stats.setdefault("presence_batches", 0)
        self.stats.setdefault("presence_changes", 0)

    async def write(self, tenant: str, user: str, present: bool, role: str) -> list[str]:
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._queued.append((tenant, user, present, role, fut))
        if self._running is None:
            self._running = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queued:
                await asyncio.sleep(0)  # the rest of this loop turn's changes join the batch
                batch, self._queued = self._queued, []
                await self._write(batch)
        finally:
            self._running = None

    async def _write(self, batch: list[_Change]) -> None:
        c = self._c
        node_key = c._nk(c.node_id)

        async def pipeline() -> list[Any]:
            async with c.r.pipeline(transaction=False) as p:
                for tenant, user, present, role, _ in batch:
                    key = c._pk(tenant, user)
                    member = msgpack.packb([tenant, user, role])
                    if present:
                        p.hset(key, c.node_id, role)
                        p.sadd(node_key, member)
                    else:
                        p.hdel(key, c.node_id)
                        p.srem(node_key, member)
                    p.hkeys(key)
                return await p.execute()

        ok, replies = await answer_waiters([fut for *_, fut in batch], pipeline())
        if not ok:
            return
        self.stats["presence_batches"] += 1
        self.stats["presence_changes"] += len(batch)
        for i, (*_, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result([n.decode() for n in replies[3 * i + 2]])

"""Which nodes hold a user: the lookups of one loop turn in one pipeline (docs/cluster.md, step 6b).

Every message to a participant held elsewhere needs its holders (`HKEYS` of the user's presence
hash). Asked one by one that is a Redis round trip, and a redis-py call's CPU, per message; here
the lookups queued during one loop turn leave together (auto-pipelined, pipe.py), each distinct user asked once,
and every caller gets the answer for its users. The answer is as fresh as a lookup per message:
it is read after the message was appended.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import answer_waiters


class HolderLookups:
    def __init__(self, coord: Any):
        self._c = coord  # the RedisCoordinator: its client `r` and key builders
        self._waiting: dict[tuple[str, str], list[asyncio.Future[list[str]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()  # kept: asking costs a getpid() system call on 3.11
        coord.stats.setdefault("lookup_batches", 0)
        coord.stats.setdefault("lookups", 0)

    async def holders(self, tenant: str, user: str) -> list[str]:
        """The node ids holding `user` (this node included when it does)."""
        loop = self._loop
        fut: asyncio.Future[list[str]] = loop.create_future()
        self._waiting.setdefault((tenant, user), []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)
        return await fut

    def _send(self) -> None:
        self._scheduled = False
        batch, self._waiting = self._waiting, {}
        task = self._loop.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[tuple[str, str], list[asyncio.Future[list[str]]]]) -> None:
        c = self._c

        keys = [c._pk(tenant, user) for tenant, user in batch]
        # Auto-pipelined (pipe.py): one write with this loop turn's other commands.
        ok, replies = await answer_waiters([f for futs in batch.values() for f in futs],
                                           asyncio.gather(*(c._pipes.call(k, "HKEYS", k) for k in keys)))
        if not ok:
            return
        c.stats["lookup_batches"] += 1
        c.stats["lookups"] += len(batch)
        for futs, nodes in zip(batch.values(), replies, strict=True):
            answer = [n.decode() for n in nodes]
            for fut in futs:
                if not fut.done():
                    fut.set_result(answer)

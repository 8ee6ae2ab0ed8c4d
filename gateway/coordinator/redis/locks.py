"""Locks on Redis: a local lock first (no spinning against our own coroutines), then the Redis lease.

The lease and its fencing token come from one script (scripts/lock.lua); `FENCE` carries the
holder's token to the writes it makes, so a holder whose lease ran out can't overwrite a newer one's."""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
import zlib
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from ..base import Unavailable
from .errors import available_errors
from .keys import q

FENCE: contextvars.ContextVar[int] = contextvars.ContextVar("chatgw_fence", default=0)
LOCK_LEASE_MS = 10_000
LOCK_WAIT_S = 5.0


class RedisLocks:
    """The `Locks` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    @asynccontextmanager
    async def lock(self, tenant: str, key: str):
        seg = zlib.crc32(f"{tenant}\0{key}".encode()) % self._segments
        base = f"{self._p}:{{l:{q(tenant)}:{seg}}}"
        async with self._local_locks[seg % len(self._local_locks)]:
            token = await self._acquire(base)
            reset = FENCE.set(token)
            try:
                yield
            finally:
                FENCE.reset(reset)
                try:
                    await self._unlock_s(keys=[base + ":lock"], args=[str(token)])
                except (RedisError, OSError):
                    pass  # the lease expires by itself

    @available_errors
    async def _acquire(self, base: str) -> int:
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.002
        while True:
            token = int(await self._lock_s(keys=[base + ":lock", base + ":fence"], args=[LOCK_LEASE_MS]))
            if token:
                return token
            if time.monotonic() > deadline:
                raise Unavailable("could not take a conversation lock in time")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.1)

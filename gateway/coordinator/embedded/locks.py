"""Locks in one process: segment locks on the event loop (asyncio.Lock)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..ports import Locks


class MemoryLocks(Locks):
    _locks: list[asyncio.Lock]

    def _init_locks(self, segments: int) -> None:
        self._locks = [asyncio.Lock() for _ in range(segments)]

    @asynccontextmanager
    async def lock(self, tenant: str, key: str) -> AsyncIterator[None]:
        # crc32 is stable across processes, unlike hash(); the Redis coordinator uses the same segments.
        async with self._locks[zlib.crc32(f"{tenant}\0{key}".encode()) % len(self._locks)]:
            yield


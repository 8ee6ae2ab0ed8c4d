"""Protection around backends: token buckets, a concurrency bound with a short queue, circuit breakers."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from cachetools import LRUCache

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class TenantBuckets:
    """One TokenBucket per tenant, the least recently used forgotten past ``max_tenants``."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic, max_tenants: int = 10_000) -> None:
        self.rate, self.burst, self._clock, self._max = rate, burst, clock, max_tenants
        self._buckets: LRUCache[str, TokenBucket] = LRUCache(max(1, max_tenants))

    def take(self, tenant: str) -> bool:
        if self.rate <= 0:  # rate 0 disables the limit
            return True
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket.take()


class Busy(Exception):
    """No slot freed within the queue wait, or the queue is full."""


class ConcurrencyLimiter:
    """At most ``limit`` holders; up to ``max_queue`` waiters wait at most ``wait_s`` for a slot.

    Slots are handed to waiters in FIFO order at release, so a waiter that timed
    out never swallows a slot (the race ``wait_for(sem.acquire())`` can have).
    """

    def __init__(self, limit: int, wait_s: float, max_queue: int) -> None:
        self.limit = max(1, int(limit))
        self.wait_s = float(wait_s)
        self.max_queue = max(0, int(max_queue))
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        if self.queued >= self.max_queue or self.wait_s <= 0:
            raise Busy()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.wait_s):  # not wait_for: on 3.11 it can swallow a cancel
                await asyncio.shield(fut)
        except TimeoutError:
            if fut.done() and not fut.cancelled():  # granted at the last moment: keep it
                return
            fut.cancel()
            raise Busy() from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted but the caller went away: pass it on
            else:
                fut.cancel()
            raise
        finally:
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to this waiter; active stays the same
                return
        self.active -= 1


class CircuitBreaker:
    """Closed -> (``failures`` consecutive failures) -> open -> (``cooldown_s``) -> half-open.

    Half-open lets ``half_open_probes`` calls through; one success closes the
    breaker, a failure opens it again for another cool-down.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int, cooldown_s: float, half_open_probes: int = 1, clock: Clock = time.monotonic) -> None:
        self.failures = max(1, int(failures))
        self.cooldown_s = float(cooldown_s)
        self.half_open_probes = max(1, int(half_open_probes))
        self._clock = clock
        self._state = self.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes = 0
        self.opened_count = 0

    @property
    def state(self) -> str:
        """The effective state: an open breaker whose cool-down passed reads half_open."""
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return self.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go through now? Counts a half-open probe when it says yes."""
        if self._state == self.OPEN:
            if self._clock() - self._opened_at < self.cooldown_s:
                return False
            self._state, self._probes = self.HALF_OPEN, 0
        if self._state == self.HALF_OPEN:
            if self._probes >= self.half_open_probes:
                return False
            self._probes += 1
        return True

    def success(self) -> None:
        self._state, self._consecutive, self._probes = self.CLOSED, 0, 0

    def failure(self) -> None:
        self._consecutive += 1
        if self._state == self.HALF_OPEN or self._consecutive >= self.failures:
            if self._state != self.OPEN:
                self.opened_count += 1
            self._state, self._opened_at, self._probes = self.OPEN, self._clock(), 0

    def abandon(self) -> None:
        """A call that let through ended without a verdict (caller cancelled): free its probe."""
        if self._state == self.HALF_OPEN and self._probes > 0:
            self._probes -= 1

"""TimingWheel: exact deadlines for heartbeats, grace periods and idle timeouts.

``make_timing_wheel()`` returns the native ``chatgw_native.TimingWheel`` (a
hierarchical timing wheel) when it imports, else ``ReferenceTimingWheel``
below (a dict plus a binary heap with lazy deletion). Both give identical
results and exception types; the wheel's geometry (tick_ms, slots, levels)
only affects the native cost, never results, and the reference validates it
the same way but otherwise ignores it. See docs/native.md for the invariants.
"""

from __future__ import annotations

import heapq
from typing import Protocol, SupportsIndex

import native
from native.args import i64 as _i64
from native.args import u64 as _u64

NATIVE_AVAILABLE: bool = native.AVAILABLE
MAX_SLOTS = 4096
MAX_LEVELS = 16


class TimingWheel(Protocol):
    """Deadlines keyed by u64 ints; ``advance(now_ms)`` pops the due ones."""

    def schedule(self, key: int, deadline_ms: int) -> None: ...

    def cancel(self, key: int) -> bool: ...

    def advance(self, now_ms: int) -> list[int]: ...

    def deadline(self, key: int) -> int | None: ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class ReferenceTimingWheel:
    """Pure-Python TimingWheel(tick_ms=10, slots=256, levels=4) with the native semantics."""

    __slots__ = ("_deadlines", "_heap", "_last_now")

    def __init__(self, tick_ms: SupportsIndex = 10, slots: SupportsIndex = 256, levels: SupportsIndex = 4) -> None:
        tick = _i64(tick_ms)
        n_slots = _i64(slots)
        n_levels = _i64(levels)
        if tick < 1:
            raise ValueError("tick_ms must be > 0")
        if not 2 <= n_slots <= MAX_SLOTS or n_slots & (n_slots - 1):
            raise ValueError(f"slots must be a power of two in 2..={MAX_SLOTS}")
        if not 1 <= n_levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..={MAX_LEVELS}")
        self._deadlines: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (deadline, key); stale pairs skipped lazily
        self._last_now = 0

    def schedule(self, key: SupportsIndex, deadline_ms: SupportsIndex) -> None:
        """Set or replace the deadline of ``key``."""
        k = _u64(key)
        d = _u64(deadline_ms)
        self._deadlines[k] = d
        heapq.heappush(self._heap, (d, k))
        if len(self._heap) > 2 * len(self._deadlines) + 64:  # bound the stale pairs
            self._heap = [(d2, k2) for k2, d2 in self._deadlines.items()]
            heapq.heapify(self._heap)

    def cancel(self, key: SupportsIndex) -> bool:
        """True if ``key`` was scheduled."""
        return self._deadlines.pop(_u64(key), None) is not None

    def advance(self, now_ms: SupportsIndex) -> list[int]:
        """Keys with deadline <= now_ms, sorted by (deadline, key); they are removed.

        ``now_ms`` smaller than the previous one returns [] and changes nothing.
        """
        now = _u64(now_ms)
        if now < self._last_now:
            return []
        self._last_now = now
        fired: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, k = heapq.heappop(heap)
            if self._deadlines.get(k) == d:  # heap order is (deadline, key): fired stays sorted
                del self._deadlines[k]
                fired.append(k)
        return fired

    def deadline(self, key: SupportsIndex) -> int | None:
        return self._deadlines.get(_u64(key))

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        try:
            k = _u64(key)  # type: ignore[arg-type]
        except Exception:
            return False
        return k in self._deadlines

    def __repr__(self) -> str:
        return f"gateway.timing_wheel.ReferenceTimingWheel(len={len(self._deadlines)})"


def make_timing_wheel(
    tick_ms: int = 10, slots: int = 256, levels: int = 4, *, prefer_native: bool = True
) -> TimingWheel:
    """Build a TimingWheel: native if available and ``prefer_native``, else the pure-Python reference."""
    if prefer_native and native.MODULE is not None:
        return native.MODULE.TimingWheel(tick_ms, slots, levels)
    return ReferenceTimingWheel(tick_ms, slots, levels)

"""Public Dedup factory: the native ``chatgw_native.Dedup`` when it imports, else the reference.

Both implementations behave identically (see docs/native.md); only speed differs.
"""

from __future__ import annotations

from typing import Protocol, SupportsIndex

import native

from .reference import ReferenceDedup

NATIVE_AVAILABLE: bool = native.AVAILABLE


class Dedup(Protocol):
    """Idempotency cache (conv, sender, cid) -> first seq, windowed in time; ``now_ms`` is passed in.

    The sender is part of the key because each client picks its own ids (docs/delivery.md).
    """

    def get(self, conv: str | bytes, sender: str | bytes, cid: str | bytes, now_ms: SupportsIndex) -> int | None: ...

    def put(self, conv: str | bytes, sender: str | bytes, cid: str | bytes, seq: SupportsIndex, now_ms: SupportsIndex) -> None: ...

    def __len__(self) -> int: ...


def make_dedup(
    capacity: int,
    window_ms: int,
    generations: int = 4,
    bits_per_generation: int = 1 << 20,
    seed: int = 0,
    *,
    prefer_native: bool = True,
) -> Dedup:
    """Build a Dedup: native if available and ``prefer_native``, else the pure-Python reference."""
    if prefer_native and native.MODULE is not None:
        return native.MODULE.Dedup(capacity, window_ms, generations, bits_per_generation, seed)
    return ReferenceDedup(capacity, window_ms, generations, bits_per_generation, seed)

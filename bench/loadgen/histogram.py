"""A small mergeable latency histogram (log-linear buckets, ~1.6% resolution, microsecond unit).

Workers record into a flat list of counters (cheap in the hot path), ship the
non-zero buckets to the coordinator, which merges them and reads percentiles.
"""

from __future__ import annotations

from collections.abc import Iterable

SUB_BITS = 6
SUB = 1 << SUB_BITS  # 64 sub-buckets per power of two
LINEAR = SUB * 2  # values below 128 us are exact
NBUCKETS = LINEAR + SUB * 40


def bucket_of(us: int) -> int:
    if us < LINEAR:
        return us if us > 0 else 0
    e = us.bit_length() - (SUB_BITS + 1)
    return LINEAR + (e - 1) * SUB + ((us >> e) - SUB)


def value_of(bucket: int) -> float:
    """Midpoint of a bucket, in microseconds."""
    if bucket < LINEAR:
        return float(bucket)
    e = (bucket - LINEAR) // SUB + 1
    m = (bucket - LINEAR) % SUB + SUB
    return float((m << e) + (1 << (e - 1)))


class Histogram:
    __slots__ = ("counts", "n", "max_us")

    def __init__(self) -> None:
        self.counts = [0] * NBUCKETS
        self.n = 0
        self.max_us = 0

    def record_ns(self, ns: int) -> None:
        us = ns // 1000
        if us < LINEAR:
            self.counts[us if us > 0 else 0] += 1
        else:
            e = us.bit_length() - (SUB_BITS + 1)
            b = LINEAR + (e - 1) * SUB + ((us >> e) - SUB)
            self.counts[b if b < NBUCKETS else NBUCKETS - 1] += 1
        self.n += 1
        if us > self.max_us:
            self.max_us = us

    def sparse(self) -> dict[int, int]:
        return {i: c for i, c in enumerate(self.counts) if c}

    def reset(self) -> None:
        self.counts = [0] * NBUCKETS
        self.n = 0
        self.max_us = 0


class Merged:
    """Histograms merged from workers; percentiles in milliseconds."""

    def __init__(self, parts: Iterable[dict] = ()) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max_us = 0
        for p in parts:
            self.add(p)

    def add(self, part: dict) -> None:
        for b, c in part.get("buckets", {}).items():
            self.counts[int(b)] = self.counts.get(int(b), 0) + c
        self.n += part.get("n", 0)
        self.max_us = max(self.max_us, part.get("max_us", 0))

    def percentile_ms(self, p: float) -> float | None:
        if not self.n:
            return None
        rank = p / 100.0 * self.n
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return round(min(value_of(b), float(self.max_us)) / 1000.0, 4)
        return round(self.max_us / 1000.0, 4)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "p50_ms": self.percentile_ms(50),
            "p90_ms": self.percentile_ms(90),
            "p99_ms": self.percentile_ms(99),
            "p99_9_ms": self.percentile_ms(99.9),
            "max_ms": round(self.max_us / 1000.0, 4) if self.n else None,
        }


def pack(h: Histogram) -> dict:
    return {"buckets": h.sparse(), "n": h.n, "max_us": h.max_us}

"""Micro-benchmarks: native core vs pure-Python reference, per structure (pytest-benchmark).

Each benchmark runs a batch of ``OPS`` operations per round; divide the reported
time by ``extra_info["ops"]`` for the cost of one operation. Run and tabulate::

    python -m pytest bench/test_micro_native.py --benchmark-json=bench/results/tmp/micro_native.json
    python -m bench.test_micro_native bench/results/tmp/micro_native.json   # prints the markdown table

Not collected by the default ``pytest`` run (testpaths = tests).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import chatgw_native
import pytest

from dedup.reference import ReferenceDedup
from gateway.timing_wheel import ReferenceTimingWheel
from routing.load_index import ReferenceLoadIndex

OPS = 10_000
IMPLS = {
    "dedup": {"native": chatgw_native.Dedup, "reference": ReferenceDedup},
    "load_index": {"native": chatgw_native.LoadIndex, "reference": ReferenceLoadIndex},
    "timing_wheel": {"native": chatgw_native.TimingWheel, "reference": ReferenceTimingWheel},
}
KEYS = [(f"conv-{i % 500}", f"visitor-{i % 500}", f"client-msg-{i:08d}") for i in range(OPS)]
OTHER_KEYS = [(f"conv-{i % 500}", f"visitor-{i % 500}", f"unseen-{i:08d}") for i in range(OPS)]


def run(benchmark: Any, impl: str, setup: Callable[[], tuple[Any, ...]], fn: Callable[..., None]) -> None:
    benchmark.extra_info["ops"] = OPS
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(fn, setup=lambda: (setup(), {}), rounds=15, warmup_rounds=1)


# ----------------------------------------------------------------------------- Dedup


def filled_dedup(cls: type) -> Any:
    d = cls(200_000, 600_000)
    for i, (conv, sender, cid) in enumerate(KEYS):
        d.put(conv, sender, cid, i, 1000)
    return d


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_dedup_put_new(benchmark: Any, impl: str) -> None:
    cls = IMPLS["dedup"][impl]

    def fn(d: Any) -> None:
        put = d.put
        for i, (conv, sender, cid) in enumerate(KEYS):
            put(conv, sender, cid, i, 1000 + i)

    run(benchmark, impl, lambda: (cls(200_000, 600_000),), fn)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_dedup_get_hit(benchmark: Any, impl: str) -> None:
    cls = IMPLS["dedup"][impl]

    def fn(d: Any) -> None:
        get = d.get
        for conv, sender, cid in KEYS:
            get(conv, sender, cid, 2000)

    run(benchmark, impl, lambda: (filled_dedup(cls),), fn)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_dedup_get_miss(benchmark: Any, impl: str) -> None:
    cls = IMPLS["dedup"][impl]

    def fn(d: Any) -> None:
        get = d.get
        for conv, sender, cid in OTHER_KEYS:
            get(conv, sender, cid, 2000)

    run(benchmark, impl, lambda: (filled_dedup(cls),), fn)


# ------------------------------------------------------------------------- LoadIndex

AGENTS = [f"agent-{i:04d}" for i in range(1000)]
GROUPS = [f"tenant\x00queue-{g}" for g in range(10)]


def filled_index(cls: type) -> Any:
    x = cls()
    for i, a in enumerate(AGENTS):
        x.upsert(a, [GROUPS[i % 10], GROUPS[(i + 1) % 10]], 5, True)
    return x


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_load_index_pick(benchmark: Any, impl: str) -> None:
    cls = IMPLS["load_index"][impl]

    def fn(x: Any) -> None:
        pick = x.pick
        for i in range(OPS):
            pick(GROUPS[i % 10])

    run(benchmark, impl, lambda: (filled_index(cls),), fn)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_load_index_pick_acquire_release(benchmark: Any, impl: str) -> None:
    cls = IMPLS["load_index"][impl]

    def fn(x: Any) -> None:
        # One operation = one pick + acquire of the least-loaded agent, and a release of an
        # earlier one (about 2000 held at a time, so loads vary).
        pick, acquire, release = x.pick, x.acquire, x.release
        held: deque[str] = deque()
        for i in range(OPS):
            a = pick(GROUPS[i % 10])
            if a is not None and acquire(a):
                held.append(a)
            if len(held) > 2000:
                release(held.popleft())
        for a in held:
            release(a)

    run(benchmark, impl, lambda: (filled_index(cls),), fn)


# ----------------------------------------------------------------------- TimingWheel


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_timing_wheel_schedule_reschedule(benchmark: Any, impl: str) -> None:
    """Heartbeat pattern: every connection's deadline is pushed back on each message."""
    cls = IMPLS["timing_wheel"][impl]

    def setup() -> tuple[Any, ...]:
        w = cls(10, 256, 4)
        for k in range(1000):
            w.schedule(k, 30_000 + k)
        return (w,)

    def fn(w: Any) -> None:
        schedule = w.schedule
        for i in range(OPS):
            schedule(i % 1000, 30_000 + i * 7)

    run(benchmark, impl, setup, fn)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_timing_wheel_schedule_advance(benchmark: Any, impl: str) -> None:
    """One operation = one schedule, its share of 6001 advance calls (10 ms steps over 60 s), and its firing."""
    cls = IMPLS["timing_wheel"][impl]

    def fn(w: Any) -> None:
        schedule, advance = w.schedule, w.advance
        for k in range(OPS):
            schedule(k, (k * 6007) % 60_000 + 1)
        fired = 0
        for now in range(0, 60_001, 10):
            fired += len(advance(now))
        assert fired == OPS

    run(benchmark, impl, lambda: (cls(10, 256, 4),), fn)


# ------------------------------------------------------------------------ the table


def table(path: str) -> str:
    """Markdown table (ns per operation, native vs reference) from a --benchmark-json file."""
    rows: dict[str, dict[str, float]] = {}
    for b in json.load(open(path))["benchmarks"]:
        name = b["name"].split("[")[0].removeprefix("test_")
        rows.setdefault(name, {})[b["extra_info"]["impl"]] = b["stats"]["median"] / b["extra_info"]["ops"] * 1e9
    out = ["| benchmark (per operation) | native ns/op | reference ns/op | speed-up |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        n, ref = r.get("native", float("nan")), r.get("reference", float("nan"))
        out.append(f"| {name} | {n:,.0f} | {ref:,.0f} | {ref / n:.1f}x |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1]))

"""Native TimingWheel vs the pure-Python reference: same random operations, same results.

The native build is part of the test setup: if ``chatgw_native`` does not
import, this module fails (it is not skipped).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import chatgw_native  # noqa: F401  (fail loudly when the native build is missing)
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.timing_wheel import NATIVE_AVAILABLE, ReferenceTimingWheel, make_timing_wheel

Native = chatgw_native.TimingWheel
U64_MAX = 2**64 - 1


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Result of a call, or the type of the exception it raised."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - compared across implementations
        return ("raise", type(e))


KEY = st.one_of(st.integers(0, 12), st.sampled_from([U64_MAX, 2**32, -1, 2**64, 1.0, None, "1", True]))


class WheelMachine(RuleBasedStateMachine):
    """Drives native and reference TimingWheel in lock step, over small geometries
    (so that cascades between levels and the overflow list are exercised)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0

    @initialize(
        tick=st.sampled_from([1, 2, 3, 10, 1000]),
        slots=st.sampled_from([2, 4, 8, 64, 256]),
        levels=st.integers(1, 4),
        start=st.sampled_from([0, 0, 5, 2**40, U64_MAX - 10_000]),
    )
    def init(self, tick: int, slots: int, levels: int, start: int) -> None:
        self.n = Native(tick, slots, levels)
        self.r = ReferenceTimingWheel(tick, slots, levels)
        self.now = start

    def same(self, name: str, *args: Any) -> Any:
        got = outcome(getattr(self.n, name), *args)
        assert got == outcome(getattr(self.r, name), *args), (name, args)
        return got

    @rule(
        key=KEY,
        delta=st.one_of(
            st.integers(-20, 40), st.integers(0, 5000), st.integers(0, 2**33), st.sampled_from([2**62, U64_MAX])
        ),
    )
    def schedule(self, key: Any, delta: int) -> None:
        deadline = self.now + delta
        if deadline > U64_MAX or deadline < 0:
            deadline = min(max(deadline, -1), 2**64)  # out of range on purpose: same error in both
        self.same("schedule", key, deadline)

    @rule(key=KEY)
    def cancel(self, key: Any) -> None:
        self.same("cancel", key)

    @rule(key=KEY)
    def inspect(self, key: Any) -> None:
        self.same("deadline", key)
        self.same("__contains__", key)

    @rule(dt=st.one_of(st.integers(0, 12), st.integers(0, 3000), st.integers(-50, 0), st.integers(0, 2**34)))
    def advance(self, dt: int) -> None:
        self.now = min(max(self.now + dt, 0), U64_MAX)
        self.same("advance", self.now)

    @rule()
    def advance_again(self) -> None:
        self.same("advance", self.now)

    @rule(now=st.sampled_from([-1, 2**64, 1.5, None]))
    def advance_bad(self, now: Any) -> None:
        self.same("advance", now)

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def same_len(self) -> None:
        assert len(self.n) == len(self.r)


TestWheelMachine = WheelMachine.TestCase
TestWheelMachine.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class DenseWheelMachine(RuleBasedStateMachine):
    """Tiny geometry, few keys, deadlines near now (past ones included), small steps:
    explores the current tick, past deadlines and level boundaries densely."""

    @initialize(tick=st.integers(1, 3), slots=st.sampled_from([2, 4]), levels=st.integers(1, 3))
    def init(self, tick: int, slots: int, levels: int) -> None:
        self.now = 0
        self.n = Native(tick, slots, levels)
        self.r = ReferenceTimingWheel(tick, slots, levels)

    @rule(key=st.integers(0, 3), delta=st.integers(-6, 24))
    def schedule(self, key: int, delta: int) -> None:
        d = max(0, self.now + delta)
        self.n.schedule(key, d)
        self.r.schedule(key, d)

    @rule(key=st.integers(0, 3))
    def cancel(self, key: int) -> None:
        assert self.n.cancel(key) == self.r.cancel(key)

    @rule(dt=st.integers(-2, 9))
    def advance(self, dt: int) -> None:
        self.now = max(0, self.now + dt)
        assert self.n.advance(self.now) == self.r.advance(self.now)

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def same_state(self) -> None:
        assert len(self.n) == len(self.r)
        assert [self.n.deadline(k) for k in range(4)] == [self.r.deadline(k) for k in range(4)]


TestDenseWheelMachine = DenseWheelMachine.TestCase
TestDenseWheelMachine.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(params=["native", "reference"])
def impl(request: pytest.FixtureRequest) -> type:
    return Native if request.param == "native" else ReferenceTimingWheel


def test_factory_prefers_native() -> None:
    assert NATIVE_AVAILABLE
    assert isinstance(make_timing_wheel(), Native)
    assert isinstance(make_timing_wheel(prefer_native=False), ReferenceTimingWheel)


def test_fires_sorted_by_deadline_then_key(impl: type) -> None:
    w = impl()
    w.schedule(5, 100)
    w.schedule(3, 100)
    w.schedule(9, 50)
    w.schedule(1, 101)
    assert w.advance(100) == [9, 3, 5]
    assert w.advance(100) == []
    assert w.advance(101) == [1]
    assert len(w) == 0


def test_sub_tick_exactness(impl: type) -> None:
    w = impl(tick_ms=1000)
    w.schedule(1, 1500)
    assert w.advance(1499) == []
    assert w.advance(1500) == [1]


def test_backwards_returns_nothing(impl: type) -> None:
    w = impl()
    assert w.advance(1000) == []
    w.schedule(1, 5)  # already in the past
    assert w.advance(999) == []  # time went backwards: nothing, no error
    assert 1 in w
    assert w.advance(1000) == [1]


def test_reschedule_and_cancel(impl: type) -> None:
    w = impl()
    w.schedule(1, 100)
    w.schedule(1, 300)
    assert w.deadline(1) == 300
    assert w.advance(200) == []
    assert w.cancel(1)
    assert not w.cancel(1)
    assert w.advance(400) == []
    assert w.deadline(1) is None


def test_beyond_span_and_huge_jumps(impl: type) -> None:
    w = impl(tick_ms=1, slots=2, levels=1)  # span of 2 ticks: nearly everything overflows
    keys = {k: random.Random(k).randrange(0, 2**64) for k in range(200)}
    for k, d in keys.items():
        w.schedule(k, d)
    w.schedule(1000, U64_MAX)
    got = w.advance(2**63)
    assert got == sorted((k for k, d in keys.items() if d <= 2**63), key=lambda k: (keys[k], k))
    rest = w.advance(U64_MAX)
    assert rest == sorted([k for k, d in keys.items() if d > 2**63] + [1000], key=lambda k: (keys.get(k, U64_MAX), k))
    assert len(w) == 0


@pytest.mark.parametrize("geometry", [(1, 2, 1), (1, 2, 16), (7, 4, 3), (10, 256, 4), (1000, 4096, 2)])
def test_geometry_never_changes_results(geometry: tuple[int, int, int]) -> None:
    rng = random.Random(1234)
    a, b = Native(*geometry), ReferenceTimingWheel(*geometry)
    now = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            k, d = rng.randrange(500), now + rng.choice([rng.randrange(-100, 200), rng.randrange(10**6)])
            d = max(d, 0)
            a.schedule(k, d)
            b.schedule(k, d)
        elif op < 0.6:
            k = rng.randrange(500)
            assert a.cancel(k) == b.cancel(k)
        else:
            now += rng.choice([0, 1, 7, 100, 5000, 10**5])
            assert a.advance(now) == b.advance(now)
        assert len(a) == len(b)


@pytest.mark.parametrize("args", [(0,), (-1,), (10, 3), (10, 1), (10, 8192), (10, 256, 0), (10, 256, 17)])
def test_bad_geometry_is_value_error(impl: type, args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        impl(*args)


@pytest.mark.parametrize("args", [("10",), (10, 2.0), (10, 256, None)])
def test_bad_geometry_types_are_type_error(impl: type, args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        impl(*args)

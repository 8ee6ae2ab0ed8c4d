"""Native LoadIndex vs the pure-Python reference: same random operations, same results.

The native build is part of the test setup: if ``chatgw_native`` does not
import, this module fails (it is not skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chatgw_native  # noqa: F401  (fail loudly when the native build is missing)
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from routing.load_index import NATIVE_AVAILABLE, ReferenceLoadIndex, make_load_index

Native = chatgw_native.LoadIndex


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Result of a call, or the type of the exception it raised."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - compared across implementations
        return ("raise", type(e))


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], weight: int = 6) -> st.SearchStrategy[Any]:
    """``good`` about ``weight`` times as often as ``bad`` (one_of drops identical strategies, so copy them)."""
    return st.one_of(*[good.map(lambda v: v) for _ in range(weight)], bad)


AGENTS = ["a", "b", "B", "ab", "", "é", "e\u0301", "\ud800", "\U0001f600", "\x00"]
GROUPS = ["g", "t1\x00sales", "t2\x00sales", "", "\udfff"]
# Mostly valid values (so that agents actually become eligible), sometimes hostile ones.
AGENT = mostly(st.sampled_from(AGENTS), st.sampled_from([None, 1, b"a", "x" * 1025]))
GROUP_LIST = mostly(
    st.one_of(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3), st.just(("g", "g"))),
    st.one_of(st.just([]), st.sampled_from(["g", b"g", None, 5, ["g", 1], ["y" * 1025]])),
)
CAPACITY = mostly(st.integers(0, 3), st.sampled_from([-1, 2**63, 1.0, None, True]))
AVAILABLE = mostly(st.sampled_from([True, True, True, False]), st.sampled_from([0, 1, None, "yes"]))


class LoadIndexMachine(RuleBasedStateMachine):
    """Drives native and reference LoadIndex in lock step."""

    def __init__(self) -> None:
        super().__init__()
        self.n = Native()
        self.r = ReferenceLoadIndex()

    def same(self, name: str, *args: Any) -> Any:
        got = outcome(getattr(self.n, name), *args)
        assert got == outcome(getattr(self.r, name), *args), (name, args)
        return got

    agents = Bundle("agents")

    @initialize(
        target=agents,
        population=st.lists(
            st.tuples(
                st.sampled_from(AGENTS), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3), st.integers(0, 3)
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def populate(self, population: list[tuple[str, list[str], int]]) -> Any:
        for agent, groups, capacity in population:
            self.same("upsert", agent, groups, capacity, True)
        return population[0][0]

    @rule(target=agents, agent=AGENT, groups=GROUP_LIST, capacity=CAPACITY, available=AVAILABLE)
    def upsert(self, agent: Any, groups: Any, capacity: Any, available: Any) -> Any:
        self.same("upsert", agent, groups, capacity, available)
        return agent

    @rule(agent=agents, op=st.sampled_from(["acquire", "release", "force_acquire", "remove", "load"]))
    def known_agent(self, agent: Any, op: str) -> None:
        self.same(op, agent)

    @rule(agent=agents, available=st.booleans())
    def known_set_available(self, agent: Any, available: bool) -> None:
        self.same("set_available", agent, available)

    @rule(agent=AGENT)
    def remove(self, agent: Any) -> None:
        self.same("remove", agent)

    @rule(agent=AGENT, available=AVAILABLE)
    def set_available(self, agent: Any, available: Any) -> None:
        self.same("set_available", agent, available)

    @rule(agent=AGENT)
    def acquire(self, agent: Any) -> None:
        self.same("acquire", agent)

    @rule(agent=AGENT)
    def acquire_twice(self, agent: Any) -> None:
        self.same("acquire", agent)
        self.same("acquire", agent)

    @rule(agent=AGENT)
    def force_acquire(self, agent: Any) -> None:
        self.same("force_acquire", agent)

    @rule(agent=AGENT)
    def release(self, agent: Any) -> None:
        self.same("release", agent)

    @rule(agent=AGENT)
    def inspect(self, agent: Any) -> None:
        for name in ("load", "capacity", "is_available", "__contains__"):
            self.same(name, agent)

    @rule(group=st.one_of(st.sampled_from(GROUPS), st.sampled_from(["nope", None, b"g", "z" * 2000])))
    def pick(self, group: Any) -> None:
        self.same("pick", group)

    @invariant()
    def same_picks_and_sizes(self) -> None:
        for g in GROUPS:
            assert self.n.pick(g) == self.r.pick(g)
        assert len(self.n) == len(self.r)
        assert self.n._group_count() == self.r._group_count()
        for a in AGENTS:
            assert (a in self.n) == (a in self.r)


TestLoadIndexMachine = LoadIndexMachine.TestCase
TestLoadIndexMachine.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(params=["native", "reference"])
def impl(request: pytest.FixtureRequest) -> type:
    return Native if request.param == "native" else ReferenceLoadIndex


def test_factory_prefers_native() -> None:
    assert NATIVE_AVAILABLE
    assert isinstance(make_load_index(), Native)
    assert isinstance(make_load_index(prefer_native=False), ReferenceLoadIndex)


def test_least_loaded_then_id_bytes(impl: type) -> None:
    x = impl()
    for agent in ("b", "a", "é", "Z"):
        x.upsert(agent, ["g"], 2, True)
    assert x.pick("g") == "Z"  # b"Z" < b"a" < b"b" < b"\xc3\xa9"
    assert x.acquire("Z")
    assert x.pick("g") == "a"
    assert x.acquire("a") and x.acquire("b") and x.acquire("é")
    assert x.pick("g") == "Z"
    assert x.acquire("Z")  # Z full (2/2)
    assert x.pick("g") == "a"
    assert x.pick("other") is None


def test_pick_does_not_change_state(impl: type) -> None:
    x = impl()
    x.upsert("a", ["g"], 1, True)
    assert x.pick("g") == "a"
    assert x.pick("g") == "a"
    assert x.load("a") == 0


def test_unavailable_and_full_agents_are_skipped(impl: type) -> None:
    x = impl()
    x.upsert("a", ["g"], 1, True)
    x.upsert("b", ["g"], 1, False)
    assert x.acquire("a")
    assert x.pick("g") is None
    assert not x.acquire("a")
    assert not x.acquire("b")
    x.set_available("b", True)
    assert x.pick("g") == "b"
    x.release("a")
    assert x.pick("g") == "a"


def test_upsert_keeps_load_and_moves_groups(impl: type) -> None:
    x = impl()
    x.upsert("a", ["g1"], 3, True)
    x.force_acquire("a")
    x.upsert("a", ["g2"], 1, True)
    assert x.load("a") == 1 and x.capacity("a") == 1
    assert x.pick("g1") is None
    assert x.pick("g2") is None  # full now: 1/1
    x.release("a")
    assert x.pick("g2") == "a"


def test_force_acquire_goes_over_capacity_and_release_stops_at_zero(impl: type) -> None:
    x = impl()
    x.upsert("a", ["g"], 0, True)
    x.force_acquire("a")
    x.force_acquire("a")
    assert x.load("a") == 2
    for _ in range(5):
        x.release("a")
    assert x.load("a") == 0
    assert x.pick("g") is None  # capacity 0: never eligible


def test_errors(impl: type) -> None:
    x = impl()
    with pytest.raises(KeyError):
        x.set_available("nope", True)
    with pytest.raises(KeyError):
        x.force_acquire("nope")
    with pytest.raises(KeyError):
        x.load("nope")
    assert not x.acquire("nope")
    x.release("nope")
    x.remove("nope")
    with pytest.raises(ValueError):
        x.upsert("a", ["g"], -1, True)
    with pytest.raises(TypeError):
        x.upsert("a", "g", 1, True)
    with pytest.raises(TypeError):
        x.upsert("a", ["g"], 1, 1)
    assert len(x) == 0


def test_remove_and_group_records_do_not_leak(impl: type) -> None:
    x = impl()
    for i in range(100):
        x.upsert(f"a{i}", [f"g{i}", "shared"], 1, True)
    for i in range(100):
        x.remove(f"a{i}")
    assert len(x) == 0
    assert x._group_count() == 0
    assert x.pick("shared") is None

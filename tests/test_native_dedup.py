"""Native Dedup vs the pure-Python reference: same random operations, same results.

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
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from dedup import NATIVE_AVAILABLE, ReferenceDedup, make_dedup
from dedup.reference import dedup_key

Native = chatgw_native.Dedup


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Result of a call, or the type of the exception it raised."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - compared across implementations
        return ("raise", type(e))


def split_key(key: bytes) -> tuple[bytes, bytes, bytes]:
    n = int.from_bytes(key[:2], "little")
    conv, rest = key[2 : 2 + n], key[2 + n :]
    m = int.from_bytes(rest[:2], "little")
    return conv, rest[2 : 2 + m], rest[2 + m :]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], weight: int = 6) -> st.SearchStrategy[Any]:
    """``good`` about ``weight`` times as often as ``bad`` (one_of drops identical strategies, so copy them)."""
    return st.one_of(*[good.map(lambda v: v) for _ in range(weight)], bad)


# A small pool so that keys collide often; str and bytes spellings of the same key included.
TEXT = st.sampled_from(["", "a", "b", "ab", "bc", "é", "\ud800", "\udfff\ud800", "\x00", "x" * 600])
BYTES = st.sampled_from([b"", b"a", b"ab", b"\xc3\xa9", b"\xed\xa0\x80", b"\xff\xfe", b"\x00", b"y" * 600])
BAD = st.sampled_from([None, 1, 1.5, bytearray(b"a"), ["a"], "z" * 1025, b"z" * 1025])
KEY = mostly(st.one_of(TEXT, BYTES), BAD, 8)
SEQ = mostly(st.integers(0, 1000), st.sampled_from([0, 2**64 - 1, 2**64, -1, True, 1.0, None]), 8)


class DedupMachine(RuleBasedStateMachine):
    """Drives native and reference Dedup in lock step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0

    @initialize(
        capacity=st.integers(1, 6),
        generations=st.integers(1, 5),
        gen_len=st.integers(1, 40),
        extra=st.integers(0, 4),
        bits=st.sampled_from([1, 3, 64, 1 << 12]),
        seed=st.one_of(st.integers(0, 3), st.integers(-(2**70), 2**70)),
    )
    def init(self, capacity: int, generations: int, gen_len: int, extra: int, bits: int, seed: int) -> None:
        window = gen_len * generations + min(extra, generations - 1)
        self.generations = generations
        self.capacity = capacity
        self.n = Native(capacity, window, generations, bits, seed)
        self.r = ReferenceDedup(capacity, window, generations, bits, seed)

    keys = Bundle("keys")

    @rule(target=keys, conv=KEY, sender=KEY, cid=KEY, seq=SEQ)
    def put(self, conv: Any, sender: Any, cid: Any, seq: Any) -> tuple[Any, Any, Any]:
        assert outcome(self.n.put, conv, sender, cid, seq, self.now) == outcome(self.r.put, conv, sender, cid, seq, self.now)
        return (conv, sender, cid)

    @rule(conv=KEY, sender=KEY, cid=KEY)
    def get(self, conv: Any, sender: Any, cid: Any) -> None:
        assert outcome(self.n.get, conv, sender, cid, self.now) == outcome(self.r.get, conv, sender, cid, self.now)

    @rule(key=keys)
    def get_known(self, key: tuple[Any, Any, Any]) -> None:
        self.get(*key)

    @rule(key=keys, other=KEY)
    def get_known_id_of_another_sender(self, key: tuple[Any, Any, Any], other: Any) -> None:
        self.get(key[0], other, key[2])

    @rule(key=keys, seq=SEQ)
    def put_known(self, key: tuple[Any, Any, Any], seq: Any) -> None:
        self.put(key[0], key[1], key[2], seq)

    @rule(
        step=st.one_of(
            st.tuples(st.just("dt"), st.integers(0, 6)),
            st.tuples(st.just("dt"), st.integers(-60, 0)),
            st.tuples(st.just("gen"), st.integers(1, 6), st.integers(0, 2)),
            st.tuples(st.just("dt"), st.sampled_from([400, 10**6, 2**40])),
        )
    )
    def time_passes(self, step: tuple[Any, ...]) -> None:
        if step[0] == "dt":
            self.now = max(0, self.now + step[1])
        else:  # land near a generation boundary, where the window's edge is decided
            _, gens, offset = step
            gen_len = self.r._gen_len
            self.now = (self.now // gen_len + gens) * gen_len + min(offset, gen_len - 1)

    @rule(now=st.sampled_from([-1, 2**64, 1.0, None]))
    def bad_time(self, now: Any) -> None:
        assert outcome(self.n.get, "a", "s", "b", now) == outcome(self.r.get, "a", "s", "b", now)
        assert outcome(self.n.put, "a", "s", "b", 1, now) == outcome(self.r.put, "a", "s", "b", 1, now)

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def same_len_and_bounded(self) -> None:
        assert len(self.n) == len(self.r) <= self.capacity

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def bloom_has_no_false_negatives(self) -> None:
        # D2: every key the reference would answer must pass the native bloom.
        cur = max(self.r._cur_gen, self.now // self.r._gen_len)
        for key, (_seq, gen) in list(self.r._lru.items()):
            if cur - gen < self.generations:
                conv, sender, cid = split_key(key)
                assert self.n._bloom_maybe(conv, sender, cid, self.now)
                assert self.r._bloom_maybe(conv, sender, cid, self.now)


TestDedupMachine = DedupMachine.TestCase
TestDedupMachine.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class DedupWindowMachine(RuleBasedStateMachine):
    """Few keys, time moving in whole generations, tiny blooms (constant false positives):
    explores the edge of the window and LRU eviction densely."""

    @initialize(
        capacity=st.integers(1, 3), generations=st.integers(1, 4), gen_len=st.integers(1, 3), bits=st.integers(1, 2)
    )
    def init(self, capacity: int, generations: int, gen_len: int, bits: int) -> None:
        self.gen_len = gen_len
        self.now = 0
        self.n = Native(capacity, gen_len * generations, generations, bits)
        self.r = ReferenceDedup(capacity, gen_len * generations, generations, bits)

    @rule(cid=st.sampled_from("abc"), seq=st.integers(0, 3))
    def put(self, cid: str, seq: int) -> None:
        self.n.put("c", "s", cid, seq, self.now)
        self.r.put("c", "s", cid, seq, self.now)

    @rule(cid=st.sampled_from("abc"))
    def get(self, cid: str) -> None:
        assert self.n.get("c", "s", cid, self.now) == self.r.get("c", "s", cid, self.now)

    @rule()
    def get_all(self) -> None:
        for cid in "abc":
            assert self.n.get("c", "s", cid, self.now) == self.r.get("c", "s", cid, self.now)

    @rule(gens=st.integers(0, 5), offset=st.sampled_from([0, 0, -1, 1]))
    def time_passes(self, gens: int, offset: int) -> None:
        self.now = max(0, (self.now // self.gen_len + gens) * self.gen_len + offset)

    @precondition(lambda self: hasattr(self, "r"))
    @invariant()
    def same_len(self) -> None:
        assert len(self.n) == len(self.r)


TestDedupWindowMachine = DedupWindowMachine.TestCase
TestDedupWindowMachine.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(params=["native", "reference"])
def impl(request: pytest.FixtureRequest) -> type:
    return Native if request.param == "native" else ReferenceDedup


def test_factory_prefers_native() -> None:
    assert NATIVE_AVAILABLE
    assert isinstance(make_dedup(10, 1000), Native)
    assert isinstance(make_dedup(10, 1000, prefer_native=False), ReferenceDedup)


def test_triple_is_unambiguous(impl: type) -> None:
    d = impl(10, 1000)
    d.put("a", "b", "cd", 1, 0)
    assert d.get("ab", "", "cd", 0) is None
    assert d.get("a", "bc", "d", 0) is None
    assert d.get("a", "b", "cd", 0) == 1
    keys = {dedup_key("a", "b", "cd"), dedup_key("ab", "", "cd"), dedup_key("a", "bc", "d"), dedup_key("", "ab", "cd")}
    assert len(keys) == 4


def test_two_senders_may_use_the_same_client_id(impl: type) -> None:
    """Each client picks its own ids: the visitor's "1" and the agent's "1" are different messages."""
    d = impl(10, 1000)
    d.put("conv", "visitor-1", "1", 2, 0)
    assert d.get("conv", "agent-1", "1", 0) is None
    d.put("conv", "agent-1", "1", 3, 0)
    assert d.get("conv", "visitor-1", "1", 0) == 2
    assert d.get("conv", "agent-1", "1", 0) == 3


def test_str_and_bytes_spell_the_same_key(impl: type) -> None:
    d = impl(10, 1000)
    d.put("é", "ü", "\ud800", 7, 0)
    assert d.get(b"\xc3\xa9", b"\xc3\xbc", b"\xed\xa0\x80", 0) == 7


def test_window_is_exact(impl: type) -> None:
    # window 1000 ms, 4 generations of 250 ms: a put at generation g is visible while cur - g < 4.
    d = impl(10, 1000, 4)
    d.put("c", "s", "m", 1, 249)  # generation 0
    assert d.get("c", "s", "m", 999) == 1  # generation 3
    assert d.get("c", "s", "m", 1000) is None  # generation 4: expired
    assert len(d) == 1  # still in the LRU until evicted


def test_hit_does_not_extend_window_but_put_does(impl: type) -> None:
    d = impl(10, 1000, 4)
    d.put("c", "s", "m", 1, 0)
    assert d.get("c", "s", "m", 900) == 1
    assert d.get("c", "s", "m", 1000) is None
    d.put("c", "s", "m", 2, 1000)
    assert d.get("c", "s", "m", 1999) == 2


def test_clock_going_backwards_is_ignored(impl: type) -> None:
    d = impl(10, 1000, 4)
    d.put("c", "s", "m", 1, 5000)
    assert d.get("c", "s", "m", 0) == 1  # generation stays at the maximum seen
    d.put("c", "s", "n", 2, 0)  # stamped with the current (maximum) generation
    assert d.get("c", "s", "n", 5999) == 2


def test_lru_eviction_and_recency(impl: type) -> None:
    d = impl(2, 1000)
    d.put("c", "s", "1", 1, 0)
    d.put("c", "s", "2", 2, 0)
    assert d.get("c", "s", "1", 0) == 1  # refresh 1
    d.put("c", "s", "3", 3, 0)  # evicts 2
    assert len(d) == 2
    assert d.get("c", "s", "2", 0) is None
    assert d.get("c", "s", "1", 0) == 1
    assert d.get("c", "s", "3", 0) == 3


def test_put_updates_seq(impl: type) -> None:
    d = impl(2, 1000)
    d.put("c", "s", "1", 1, 0)
    d.put("c", "s", "1", 9, 0)
    assert len(d) == 1
    assert d.get("c", "s", "1", 0) == 9


@pytest.mark.parametrize(
    "args",
    [
        (0, 10),
        (-1, 10),
        (10, 0),
        (10, -5),
        (10, 10, 0),
        (10, 10, 11),
        (10, 10, 65),
        (10, 100, 4, 0),
        (10, 100, 4, -1),
        (10, 100, 4, 2**32 + 1),
        (2**31 + 1, 10),
    ],
)
def test_bad_config_is_value_error(impl: type, args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        impl(*args)


@pytest.mark.parametrize("args", [("10", 10), (10, 1.5), (10, 10, None), (10, 10, 4, 8, "s"), (10, 10, 4, 8, 1.0)])
def test_bad_config_types_are_type_error(impl: type, args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        impl(*args)


def test_config_overflow_is_overflow_error(impl: type) -> None:
    with pytest.raises(OverflowError):
        impl(2**63, 10)


def test_bloom_false_positive_never_revives_an_expired_entry(impl: type) -> None:
    # bits_per_generation=1: the bloom answers "maybe" for every key once anything is live.
    d = impl(10, 400, 4, 1)
    d.put("c", "s", "old", 1, 0)  # generation 0
    d.put("c", "s", "new", 2, 400)  # generation 4: slot 0 reused, the single bit set again
    assert d._bloom_maybe("c", "s", "old", 400)
    assert d.get("c", "s", "old", 400) is None  # exact check on the entry's generation
    assert d.get("c", "s", "new", 400) == 2


def test_bloom_filters_misses() -> None:
    # The native bloom is effective: after 1000 puts, most unseen keys are rejected by it.
    d = Native(10_000, 60_000, 4, 1 << 16)
    for i in range(1000):
        d.put("conv", "s", f"m{i}", i, 0)
    maybe = sum(d._bloom_maybe("conv", "s", f"other{i}", 0) for i in range(10_000))
    assert maybe < 100  # k=4, 65536 bits, 1000 keys: expected rate ~ 2.4e-4
    assert all(d._bloom_maybe("conv", "s", f"m{i}", 0) for i in range(1000))


def test_generation_rotation_clears_bloom() -> None:
    d = Native(100, 400, 4, 1 << 10)
    d.put("c", "s", "m", 1, 0)
    assert d._bloom_maybe("c", "s", "m", 399)
    assert not d._bloom_maybe("c", "s", "m", 400)  # the only generation holding it was cleared


def test_seed_changes_hash_not_results() -> None:
    a, b = Native(100, 1000, 4, 64, seed=1), Native(100, 1000, 4, 64, seed=2)
    for d in (a, b):
        for i in range(50):
            d.put("c", "s", str(i), i, 0)
    assert [a.get("c", "s", str(i), 0) for i in range(60)] == [b.get("c", "s", str(i), 0) for i in range(60)]

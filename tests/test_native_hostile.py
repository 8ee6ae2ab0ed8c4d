"""Hostile input for the native core and its references: never an abort, same exception types.

The native build is part of the test setup: if ``chatgw_native`` does not
import, this module fails (it is not skipped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import chatgw_native
import pytest

from dedup.reference import ReferenceDedup
from gateway.timing_wheel import ReferenceTimingWheel
from routing.load_index import ReferenceLoadIndex

MIB = "x" * (1 << 20)
MIB_BYTES = b"x" * (1 << 20)
U64_MAX = 2**64 - 1
DEDUPS = [chatgw_native.Dedup, ReferenceDedup]
INDEXES = [chatgw_native.LoadIndex, ReferenceLoadIndex]
WHEELS = [chatgw_native.TimingWheel, ReferenceTimingWheel]


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - compared across implementations
        return ("raise", type(e))


def both(pair: list[type], ctor_args: tuple[Any, ...], method: str, *args: Any) -> tuple[str, Any]:
    """Call ``method`` on a fresh native and a fresh reference object; assert the same outcome."""
    got = [outcome(getattr(cls(*ctor_args), method), *args) for cls in pair]
    assert got[0] == got[1], (method, args, got)
    return got[0]


# ----------------------------------------------------------------------------- Dedup


@pytest.mark.parametrize(
    "conv,sender,cid",
    [(MIB, "s", "m"), ("c", "s", MIB), ("c", MIB, "m"), (MIB_BYTES, b"", b""), ("é" * 513, "", ""),
     ("a" * 1024, "", "b"), ("a" * 512, "b" * 512, "c"), ("\ud800" * 342, "", "ab")],
)
def test_dedup_oversized_keys_are_value_error(conv: Any, sender: Any, cid: Any) -> None:
    assert both(DEDUPS, (10, 1000), "put", conv, sender, cid, 1, 0) == ("raise", ValueError)
    assert both(DEDUPS, (10, 1000), "get", conv, sender, cid, 0) == ("raise", ValueError)


@pytest.mark.parametrize(
    "conv,sender,cid",
    [
        ("", "", ""),
        ("a" * 1024, "", ""),
        ("", "", b"\xff" * 1024),
        ("", "s" * 1024, ""),
        ("a" * 341, "b" * 341, "c" * 342),
        (b"\xff\xfe\x00", b"\x00", b"\x80"),
        ("\ud800", "\udc00", "\udfff"),
        ("é" * 512, "", ""),
    ],
)
@pytest.mark.parametrize("cls", DEDUPS)
def test_dedup_edge_keys_work(cls: type, conv: Any, sender: Any, cid: Any) -> None:
    d = cls(10, 1000)
    d.put(conv, sender, cid, 42, 0)
    assert d.get(conv, sender, cid, 0) == 42


@pytest.mark.parametrize(
    "args",
    [
        (None, "s", "m", 1, 0),
        ("c", "s", 1, 1, 0),
        (bytearray(b"c"), "s", "m", 1, 0),
        (memoryview(b"c"), "s", "m", 1, 0),
        ("c", "s", "m", "1", 0),
        ("c", "s", "m", 1.0, 0),
        ("c", "s", "m", 1, None),
        ("c", "s", "m", 1, 0.5),
        ("c", "s", "m", -1, 0),
        ("c", "s", "m", 2**64, 0),
        ("c", "s", "m", 1, -1),
        ("c", "s", "m", 1, 2**64),
        ("c", "s", "m", 2**200, 0),
        (None, "s", MIB, 1, 0),
        ("c", None, "m", 1, 0),
        ("c", 1, "m", 1, 0),
        (MIB, "s", None, 1, 0),
        (MIB, "s", "m", -1, 0),
    ],
)
def test_dedup_bad_put_arguments(args: tuple[Any, ...]) -> None:
    kind, exc = both(DEDUPS, (10, 1000), "put", *args)
    assert kind == "raise" and exc in (TypeError, ValueError, OverflowError)


def test_dedup_wrong_arity_is_type_error() -> None:
    for cls in DEDUPS:
        d = cls(10, 1000)
        with pytest.raises(TypeError):
            d.put("c", "s", "m", 1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            d.get("c", "m", 0)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            cls()


@pytest.mark.parametrize("cls,n", [(chatgw_native.Dedup, 1_000_000), (ReferenceDedup, 200_000)])
def test_dedup_memory_is_bounded_by_capacity(cls: type, n: int) -> None:
    d = cls(10_000, 60_000, 4, 1 << 16)
    for i in range(n):
        d.put("conv", "s", str(i), i, i // 100)
    assert len(d) == 10_000
    assert d.get("conv", "s", str(n - 1), n // 100) == n - 1
    assert d.get("conv", "s", "0", n // 100) is None  # evicted long ago


def test_dedup_extreme_times_and_seqs() -> None:
    for cls in DEDUPS:
        d = cls(4, 2**63 - 1, 64, 1)
        d.put("c", "s", "m", U64_MAX, U64_MAX)
        assert d.get("c", "s", "m", U64_MAX) == U64_MAX
        d.put("c", "s", "n", 0, 0)  # clock far in the past: ignored, stamped at the current generation
        assert d.get("c", "s", "n", 0) == 0


# ------------------------------------------------------------------------- LoadIndex


@pytest.mark.parametrize("cls", INDEXES)
def test_load_index_hostile_ids(cls: type) -> None:
    x = cls()
    for bad in (MIB, "é" * 513):
        with pytest.raises(ValueError):
            x.upsert(bad, ["g"], 1, True)
        with pytest.raises(ValueError):
            x.upsert("a", [bad], 1, True)
        with pytest.raises(ValueError):
            x.pick(bad)
        assert bad not in x
    for odd in ("", "\ud800", "\udfff\ud800", "\x00", "a" * 1024):
        x.upsert(odd, [odd], 1, True)
        assert x.pick(odd) == odd
        assert odd in x
        assert x.acquire(odd)
        assert x.pick(odd) is None


@pytest.mark.parametrize(
    "method,args",
    [
        ("upsert", (None, ["g"], 1, True)),
        ("upsert", (b"a", ["g"], 1, True)),
        ("upsert", ("a", "g", 1, True)),
        ("upsert", ("a", b"g", 1, True)),
        ("upsert", ("a", None, 1, True)),
        ("upsert", ("a", [None], 1, True)),
        ("upsert", ("a", ["g"], "1", True)),
        ("upsert", ("a", ["g"], 1.0, True)),
        ("upsert", ("a", ["g"], -1, True)),
        ("upsert", ("a", ["g"], 2**63, True)),
        ("upsert", ("a", ["g"], -(2**70), True)),
        ("upsert", ("a", ["g"], 1, 1)),
        ("upsert", ("a", ["g"], 1, None)),
        ("upsert", (None, None, None, None)),
        ("remove", (1,)),
        ("set_available", ("a", "yes")),
        ("set_available", ("nope", True)),
        ("set_available", (None, "yes")),
        ("pick", (None,)),
        ("pick", (b"g",)),
        ("acquire", (1,)),
        ("force_acquire", ("nope",)),
        ("release", (None,)),
        ("load", ("nope",)),
        ("capacity", (3,)),
        ("is_available", ("nope",)),
        ("__contains__", (None,)),
        ("__contains__", (MIB,)),
    ],
)
def test_load_index_bad_arguments(method: str, args: tuple[Any, ...]) -> None:
    both(INDEXES, (), method, *args)


def test_load_index_group_iterables() -> None:
    def gen() -> Any:
        yield "g1"
        yield "g2"

    makers: list[Callable[[], Any]] = [
        lambda: ("g1", "g2"),
        lambda: {"g1", "g2"},
        gen,
        lambda: iter(["g1", "g2", "g1"]),
        lambda: {"g1": 1, "g2": 2},
    ]
    for make in makers:
        for cls in INDEXES:
            x = cls()
            x.upsert("a", make(), 1, True)
            assert (x.pick("g1"), x.pick("g2")) == ("a", "a")


def test_load_index_iterable_that_raises_midway() -> None:
    class Boom(Exception):
        pass

    def bad() -> Any:
        yield "g"
        raise Boom

    for cls in INDEXES:
        x = cls()
        with pytest.raises(Boom):
            x.upsert("a", bad(), 1, True)
        assert len(x) == 0


# ----------------------------------------------------------------------- TimingWheel


@pytest.mark.parametrize(
    "method,args",
    [
        ("schedule", (-1, 5)),
        ("schedule", (1, -5)),
        ("schedule", (2**64, 5)),
        ("schedule", (1, 2**64)),
        ("schedule", (2**300, 0)),
        ("schedule", ("1", 5)),
        ("schedule", (1, 5.0)),
        ("schedule", (None, None)),
        ("cancel", (-1,)),
        ("cancel", (1.0,)),
        ("cancel", (2**64,)),
        ("advance", (-1,)),
        ("advance", (2**64,)),
        ("advance", ("5",)),
        ("deadline", (-1,)),
        ("deadline", (None,)),
        ("__contains__", (-1,)),
        ("__contains__", ("x",)),
        ("__contains__", (2**64,)),
        ("schedule", (U64_MAX, U64_MAX)),
        ("advance", (U64_MAX,)),
        ("cancel", (U64_MAX,)),
    ],
)
def test_wheel_bad_arguments(method: str, args: tuple[Any, ...]) -> None:
    both(WHEELS, (), method, *args)


@pytest.mark.parametrize("cls", WHEELS)
def test_wheel_extremes(cls: type) -> None:
    w = cls(1, 2, 1)
    w.schedule(U64_MAX, U64_MAX)
    w.schedule(0, 0)
    w.schedule(True, 1)  # bool is an int: key 1
    assert w.deadline(1) == 1
    assert w.advance(U64_MAX) == [0, 1, U64_MAX]
    assert w.advance(0) == []


# ------------------------------------------------------------------------- re-entrancy


class ReentrantIndex:
    """An int whose __index__ calls back into the object being called."""

    def __init__(self, target: Any, value: int) -> None:
        self.target, self.value = target, value

    def __index__(self) -> int:
        len(self.target)
        if hasattr(self.target, "deadline"):
            self.target.deadline(0)
        return self.value


class BadIndex:
    def __index__(self) -> int:
        raise ZeroDivisionError


def test_reentrant_and_failing_index() -> None:
    for cls in DEDUPS:
        d = cls(10, 1000)
        d.put("c", "s", "m", ReentrantIndex(d, 5), ReentrantIndex(d, 0))
        assert d.get("c", "s", "m", ReentrantIndex(d, 0)) == 5
        with pytest.raises(ZeroDivisionError):
            d.put("c", "s", "m", BadIndex(), 0)
    for cls in WHEELS:
        w = cls()
        w.schedule(ReentrantIndex(w, 3), ReentrantIndex(w, 7))
        assert w.advance(ReentrantIndex(w, 7)) == [3]
        with pytest.raises(ZeroDivisionError):
            w.schedule(BadIndex(), 1)
        assert BadIndex() not in w


class SneakyStr(str):
    def encode(self, *a: Any, **k: Any) -> bytes:  # type: ignore[override]
        return b"sneaky"

    def __len__(self) -> int:
        return 0


def test_str_subclasses_use_their_real_content() -> None:
    for cls in DEDUPS:
        d = cls(10, 1000)
        d.put(SneakyStr("c"), SneakyStr("s"), SneakyStr("m"), 1, 0)
        assert d.get("c", "s", "m", 0) == 1
        assert d.get("sneaky", "sneaky", "", 0) is None
    for cls in INDEXES:
        x = cls()
        x.upsert(SneakyStr("a"), [SneakyStr("g")], 1, True)
        got = x.pick("g")
        assert got == "a" and type(got) is str


# ----------------------------------------------------------------------------- threads


def test_threads_share_native_objects_without_crashing() -> None:
    d = chatgw_native.Dedup(1000, 60_000)
    x = chatgw_native.LoadIndex()
    w = chatgw_native.TimingWheel()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20_000):
                d.put("c", "s", f"{t}:{i}", i, i)
                d.get("c", "s", f"{t}:{i - 1}", i)
                x.upsert(f"a{t}:{i % 50}", ["g"], 3, True)
                if x.acquire(f"a{t}:{i % 50}"):
                    x.release(f"a{t}:{i % 50}")
                x.pick("g")
                w.schedule(t * 1_000_000 + i, i + 5)
                w.advance(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(d) <= 1000
    assert len(x) == 200

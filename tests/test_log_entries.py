"""`Entries` (gateway/coordinator/embedded/entries.py) against a deque of bytes, its reference.

The in-memory log keeps its entries packed in a bytearray so the garbage collector has nothing to
traverse; every sequence of the log's operations must leave it equal to the deque it replaced.
"""

from __future__ import annotations

import gc
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.coordinator.embedded.entries import Entries
from gateway.coordinator.embedded.log import _Log

OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(max_size=40)),
    st.tuples(st.just("popleft"), st.none()),
    st.tuples(st.just("pop"), st.none()),
    st.tuples(st.just("clear"), st.none()),
    st.tuples(st.just("many"), st.integers(1, 700)),  # enough appends and poplefts to compact the front
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_entries_behave_as_a_deque_of_bytes(ops):
    got, ref = Entries(), deque()
    for op, arg in ops:
        if op == "append":
            got.append(arg)
            ref.append(arg)
        elif op == "many":
            for k in range(arg):
                b = k.to_bytes(2, "big") * (k % 5)
                got.append(b)
                ref.append(b)
            for _ in range(arg // 2):
                assert got.popleft() == len(ref.popleft())
        elif op == "clear":
            got.clear()
            ref.clear()
        elif ref:
            assert (got.popleft() if op == "popleft" else got.pop()) == len(ref.popleft() if op == "popleft" else ref.pop())
        assert len(got) == len(ref)
        assert got.nbytes == sum(map(len, ref))
    assert [bytes(got[i]) for i in range(len(got))] == list(ref)


def test_a_log_gives_the_collector_nothing_to_traverse():
    log = _Log()
    for i in range(1000):
        log.entries.append(b'{"t":"msg","seq":%d}' % i)
        log.ids[f"1:v:m{i}"] = i + 1
    assert not gc.is_tracked(log.ids) and not gc.is_tracked(log.entries.buf)
    # What a full collection visits from the log (it traverses tracked objects only): a handful of
    # references, not one per entry.
    seen, todo = 0, [log]
    for _ in range(3):
        todo = [r for o in todo if gc.is_tracked(o) for r in gc.get_referents(o) if not isinstance(r, type)]
        seen += len(todo)
    assert seen < 20

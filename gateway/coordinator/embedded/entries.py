"""`Entries`: one conversation's log entries in memory, packed back to back in a bytearray.

The collector never looks inside: a bytearray and an array of offsets have no references to
traverse, where a deque of a million bytes objects made every full collection visit a million
references (175 ms pauses in the relay bench with 100 conversations at 10,000 entries each, the
p99 of its open-loop steps; bench/results/20261130T-issue14). It also saves the 33-byte header
each bytes object carries.

Layout: `buf` holds the entries in seq order, `starts[i]` is where entry i begins; entries
before `head` have left (popleft moves `head`; the front is cut off once it is the larger half).
"""

from __future__ import annotations

from array import array

_COMPACT_AT = 256  # entries dropped at the front before the buffer is cut (and only past half of it)


class Entries:
    """A deque of bytes for the log's uses: append, popleft, pop (the newest), clear, len, [i] (i >= 0)."""

    __slots__ = ("buf", "head", "starts")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.starts = array("q")
        self.head = 0

    def __len__(self) -> int:
        return len(self.starts) - self.head

    @property
    def nbytes(self) -> int:
        """Bytes of the entries kept."""
        return len(self.buf) - self.starts[self.head] if len(self.starts) > self.head else 0

    def append(self, entry: bytes) -> None:
        self.starts.append(len(self.buf))
        self.buf += entry

    def __getitem__(self, i: int) -> bytearray:
        """Entry `i` (0 = the oldest kept), copied (a view would pin the buffer's size while it lives)."""
        k = self.head + i
        if i < 0 or k >= len(self.starts):
            raise IndexError(i)
        end = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.buf)
        return self.buf[self.starts[k]:end]

    def popleft(self) -> int:
        """Drop the oldest entry; its size in bytes."""
        if self.head >= len(self.starts):
            raise IndexError("pop from an empty log")
        k = self.head
        end = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.buf)
        size = end - self.starts[k]
        self.head += 1
        if self.head >= _COMPACT_AT and self.head * 2 >= len(self.starts):
            self._compact()
        return size

    def pop(self) -> int:
        """Drop the newest entry; its size in bytes."""
        if self.head >= len(self.starts):
            raise IndexError("pop from an empty log")
        start = self.starts.pop()
        size = len(self.buf) - start
        del self.buf[start:]
        return size

    def clear(self) -> None:
        self.buf = bytearray()
        self.starts = array("q")
        self.head = 0

    def _compact(self) -> None:
        cut = self.starts[self.head] if self.head < len(self.starts) else len(self.buf)
        del self.buf[:cut]  # a bytearray drops its front without moving the rest (CPython's ob_start)
        self.starts = array("q", (s - cut for s in self.starts[self.head:]))
        self.head = 0

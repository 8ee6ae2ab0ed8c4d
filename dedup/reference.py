"""Pure-Python reference of the native ``chatgw_native.Dedup``.

Observable behaviour (results, ``len``, exception types) is identical to the
native class; ``tests/test_native_dedup.py`` drives both with the same random
operation sequences. See docs/native.md for the numbered invariants.

Design: a time-windowed bloom filter of ``generations`` rotating generations
in front of an exact LRU (``OrderedDict``). Each LRU entry remembers the
generation of its last ``put``; ``get`` answers only if that generation is
still inside the window, so the bloom (which has no false negatives) never
changes a result and the bloom itself may differ between the two
implementations. The native one is bit-sliced, xxh3-128 seeded, of exactly
``bits_per_generation`` bits; here each generation is a pybloom-live
``BloomFilter`` (the library the design names), sized to about the same number of
bits (it sizes itself from a capacity and an error rate, not a bit count), fed
the seed and the key.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import SupportsIndex

from pybloom_live import BloomFilter

from native.args import U64_MAX, i64, u64

MAX_KEY_BYTES = 1024
MAX_CAPACITY = 1 << 31
MAX_GENERATIONS = 64
MAX_BITS_PER_GENERATION = 1 << 32
# pybloom-live sizes a filter for (capacity, error_rate): 7 hash slices at 1%, about 9.59 bits
# per planned key; a generation planned for bits/9.59 keys has about `bits_per_generation` bits.
_ERROR_RATE = 0.01
_BITS_PER_KEY = 9.59

Key = str | bytes


def _check_part(x: object, what: str) -> None:
    if not isinstance(x, (str, bytes)):
        raise TypeError(f"{what} must be str or bytes, not {type(x).__name__}")


def _lower_len(x: Key) -> int:
    return str.__len__(x) if isinstance(x, str) else bytes.__len__(x)


def _encode(x: Key) -> bytes:
    if isinstance(x, str):
        return str.encode(x, "utf-8", "surrogatepass")
    return b"".join((x,))  # exact bytes copy of a bytes (sub)class, via the buffer protocol


def dedup_key(conv: Key, sender: Key, cid: Key) -> bytes:
    """``len(conv) u16 LE || conv || len(sender) u16 LE || sender || cid`` (unambiguous), UTF-8/surrogatepass.

    A client id is chosen by its sender, so two senders' equal ids are two keys.
    Checks in order: type of conv, sender, cid (TypeError), then their combined length (ValueError).
    """
    _check_part(conv, "conv")
    _check_part(sender, "sender")
    _check_part(cid, "cid")
    if _lower_len(conv) + _lower_len(sender) + _lower_len(cid) > MAX_KEY_BYTES:
        raise ValueError(f"key longer than {MAX_KEY_BYTES} bytes")
    a, b, c = _encode(conv), _encode(sender), _encode(cid)
    if len(a) + len(b) + len(c) > MAX_KEY_BYTES:
        raise ValueError(f"key longer than {MAX_KEY_BYTES} bytes")
    return len(a).to_bytes(2, "little") + a + len(b).to_bytes(2, "little") + b + c


class ReferenceDedup:
    """Dedup(capacity, window_ms, generations=4, bits_per_generation=1<<20, seed=0)."""

    __slots__ = ("_capacity", "_generations", "_gen_len", "_bits", "_salt", "_cur_gen", "_blooms", "_lru")

    def __init__(
        self,
        capacity: SupportsIndex,
        window_ms: SupportsIndex,
        generations: SupportsIndex = 4,
        bits_per_generation: SupportsIndex = 1 << 20,
        seed: SupportsIndex = 0,
    ) -> None:
        cap = i64(capacity)
        window = i64(window_ms)
        gens = i64(generations)
        bits = i64(bits_per_generation)
        seed_v = int(operator.index(seed)) & U64_MAX
        if not 1 <= cap <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..={MAX_CAPACITY}")
        if window < 1:
            raise ValueError("window_ms must be > 0")
        if not 1 <= gens <= MAX_GENERATIONS:
            raise ValueError(f"generations must be in 1..={MAX_GENERATIONS}")
        if gens > window:
            raise ValueError("generations must be <= window_ms")
        if not 1 <= bits <= MAX_BITS_PER_GENERATION:
            raise ValueError(f"bits_per_generation must be in 1..={MAX_BITS_PER_GENERATION}")
        self._capacity = cap
        self._generations = gens
        self._gen_len = window // gens
        self._bits = bits
        self._salt = seed_v.to_bytes(8, "little")
        self._cur_gen = 0
        self._blooms = [self._new_bloom() for _ in range(gens)]
        # key -> [seq, generation of the last put]; order = recency (last = most recent)
        self._lru: OrderedDict[bytes, list[int]] = OrderedDict()

    # -- bloom ------------------------------------------------------------

    def _new_bloom(self) -> BloomFilter:
        bloom = BloomFilter(capacity=self._bits / _BITS_PER_KEY, error_rate=_ERROR_RATE)
        # Past its planned keys pybloom-live refuses `add` (IndexError). Here a full filter only
        # answers "maybe" more often, which never changes a result (module docstring), so the
        # window keeps taking keys until its generation is cleared.
        bloom.capacity = float("inf")
        return bloom

    def _bloom_has(self, key: bytes) -> bool:
        salted = self._salt + key
        return any(salted in bloom for bloom in self._blooms)  # every slot holds only live generations

    def _advance(self, now_ms: int) -> None:
        gen = now_ms // self._gen_len
        if gen <= self._cur_gen:  # time never goes backwards (D4)
            return
        g = self._generations
        start = max(self._cur_gen + 1, gen - g + 1)
        for x in range(start, gen + 1):
            self._blooms[x % g] = self._new_bloom()
        self._cur_gen = gen

    # -- API --------------------------------------------------------------

    def get(self, conv: Key, sender: Key, cid: Key, now_ms: SupportsIndex) -> int | None:
        """Seq stored for (conv, sender, cid) if present and within the window, else None."""
        key = dedup_key(conv, sender, cid)
        now = u64(now_ms)
        self._advance(now)
        if not self._bloom_has(key):
            return None
        entry = self._lru.get(key)
        if entry is None or self._cur_gen - entry[1] >= self._generations:
            return None
        self._lru.move_to_end(key)
        return entry[0]

    def put(self, conv: Key, sender: Key, cid: Key, seq: SupportsIndex, now_ms: SupportsIndex) -> None:
        """Record (conv, sender, cid) -> seq at now_ms (updates seq and recency if present)."""
        key = dedup_key(conv, sender, cid)
        seq_v = u64(seq)
        now = u64(now_ms)
        self._advance(now)
        self._blooms[self._cur_gen % self._generations].add(self._salt + key, skip_check=True)
        entry = self._lru.get(key)
        if entry is not None:
            entry[0] = seq_v
            entry[1] = self._cur_gen
            self._lru.move_to_end(key)
            return
        if len(self._lru) >= self._capacity:
            self._lru.popitem(last=False)
        self._lru[key] = [seq_v, self._cur_gen]

    def _bloom_maybe(self, conv: Key, sender: Key, cid: Key, now_ms: SupportsIndex) -> bool:
        """Test hook: does the bloom filter say "maybe" for (conv, sender, cid)?"""
        key = dedup_key(conv, sender, cid)
        now = u64(now_ms)
        self._advance(now)
        return self._bloom_has(key)

    def __len__(self) -> int:
        return len(self._lru)

    def __repr__(self) -> str:
        return (
            f"dedup.reference.ReferenceDedup(len={len(self._lru)}, capacity={self._capacity}, "
            f"generations={self._generations}, bits_per_generation={self._bits})"
        )

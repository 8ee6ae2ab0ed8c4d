"""Answer cache: exact LRU with a TTL, keyed by a stable hash of (tenant, backend, normalised question).

``dedup/`` holds a windowed (conv, id) -> seq idempotency map of integers with
bloom-filter generations; an answer cache needs exact keys and stored results,
so this is its own small structure.
"""

from __future__ import annotations

import collections
import hashlib
import re
import time
import unicodedata
from dataclasses import replace

from .base import BotResult
from .limits import Clock

_PUNCT_EDGE = re.compile(r"^[\s\W_]+|[\s\W_]+$", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise_question(text: str) -> str:
    """NFKC (full-width -> half-width), case-folded, whitespace collapsed, edge punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _SPACE.sub(" ", text).strip()
    return _PUNCT_EDGE.sub("", text)


def cache_key(tenant: str, backend: str, question: str) -> bytes:
    """A stable 16-byte key (blake2b), the same in every process and run."""
    raw = "\x1f".join((tenant, backend, normalise_question(question))).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


class AnswerCache:
    """At most ``max_entries`` results, each valid ``ttl_s`` seconds; least recently used evicted first."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 600.0, clock: Clock = time.monotonic) -> None:
        self.max_entries = max(1, int(max_entries))
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._data: collections.OrderedDict[bytes, tuple[float, BotResult]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> BotResult | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, result = item
        if self._clock() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return replace(result, cached=True)

    def put(self, key: bytes, result: BotResult) -> None:
        self._data[key] = (self._clock() + self.ttl_s, replace(result, cached=False))
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

"""Answer cache: exact LRU with a TTL, keyed by a stable hash of (tenant, backend, normalised question).

``dedup/`` holds a windowed (conv, id) -> seq idempotency map of integers with
bloom-filter generations; an answer cache needs exact keys and stored results,
so this is its own small structure.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import replace

from cachetools import TTLCache

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
        self._data: TTLCache[bytes, BotResult] = TTLCache(self.max_entries, self.ttl_s, timer=clock)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> BotResult | None:
        result = self._data.get(key)
        return None if result is None else replace(result, cached=True)

    def put(self, key: bytes, result: BotResult) -> None:
        self._data[key] = replace(result, cached=False)

    def clear(self) -> None:
        self._data.clear()

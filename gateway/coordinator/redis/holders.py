"""Which nodes hold a conversation's participants, known on the node instead of read per message
(docs/cluster.md, step 6d).

Every entry crossing nodes needs its participants' holders. Read per message (`HKEYS` of each
participant's presence hash, lookups.py) that is a Redis round trip after every append. Here the
node keeps the answer per conversation, labelled with what it was read after:

- the conversation's *holders version* (meta `hv`), which a node bumps (`bump`) when it takes a
  participant of the conversation, after writing the participant's presence and before reading the
  log for it; the append script returns it with every seq (scripts/append_batch.lua);
- the conversation's state version the sender's node appended against (a new participant, a
  transfer: the state changes).

An entry whose append returned holders version `h`, appended against state version `v`, may use
a cached answer read after an append that returned `h' >= h` against `v`. Why nothing is missed: a
node C taking participant U writes U's presence, bumps `hv` to `b`, then reads the log. An entry
appended before the bump is in that read. An entry appended after it returns `h >= b`; a cached
answer with `h' >= h >= b` was read (HKEYS) after an append that saw the bump, so after C's
presence write: it names C. Anything else is read again, after this entry's append.
"""

from __future__ import annotations

from lru import LRU

CACHED = 100_000  # conversations whose holders a node remembers

_Key = tuple[str, str]
_Label = tuple[int, int | None]  # (holders version, state version) the answer was read after


class HolderCache:
    def __init__(self, size: int = CACHED):
        # lru-dict's LRU (C): a get is 74 ns where cachetools' LRUCache took 192, and the message
        # path asks these four times per entry. Keys are `_Key`s.
        self._seen = LRU(size)  # -> _Label: the newest label an append of ours returned
        self._known = LRU(size)  # -> (_Label, {user: holders})

    def appended(self, key: _Key, hv: int, version: int | None) -> None:
        """An append to `key` returned holders version `hv`, against state version `version` (None: unconditional)."""
        seen = self._seen.get(key)
        if seen is None or seen[1] != version or hv > seen[0]:
            self._seen[key] = (hv, version)

    def label(self, key: _Key) -> _Label | None:
        """What an answer read now would be good for (None: nothing known, don't keep it)."""
        seen = self._seen.get(key)
        return None if seen is None or seen[1] is None else seen

    def get(self, key: _Key, users: list[str]) -> list[list[str]] | None:
        """The holders of `users` if the cached answer is good for the last entry appended here, else None."""
        seen = self._seen.get(key)
        cached = self._known.get(key)
        if seen is None or cached is None or seen[1] is None:
            return None
        (hv, version), holders = cached
        if version != seen[1] or hv < seen[0]:
            return None
        try:
            return [holders[u] for u in users]
        except KeyError:  # a participant it was not read for
            return None

    def put(self, key: _Key, label: _Label, users: list[str], holders: list[list[str]]) -> None:
        self._known[key] = (label, dict(zip(users, holders, strict=True)))

"""LoadIndex: least-loaded available agent with room, per group.

``make_load_index()`` returns the native ``chatgw_native.LoadIndex`` when it
imports, else ``ReferenceLoadIndex`` below. Both behave identically (results
and exception types); ``tests/test_native_load_index.py`` checks that with
random operation sequences. The caller folds the tenant into the group string.
See docs/native.md for the numbered invariants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, SupportsIndex

import native
from native.args import exact_bool, i64, str_key

NATIVE_AVAILABLE: bool = native.AVAILABLE
MAX_ID_BYTES = 1024


def _str_id(x: object, what: str) -> bytes:
    """Agent/group id -> UTF-8 (surrogatepass) bytes; TypeError if not str, ValueError if > 1024 bytes."""
    return str_key(x, what, MAX_ID_BYTES)


def _group_list(groups: Iterable[str]) -> list[bytes]:
    if isinstance(groups, (str, bytes)):
        raise TypeError("groups must be an iterable of str, not a str/bytes")
    return sorted({_str_id(g, "group") for g in groups})


def _capacity(x: SupportsIndex) -> int:
    v = i64(x)
    if v < 0:
        raise ValueError("capacity must be >= 0")
    return v


class LoadIndex(Protocol):
    """Per-group least-loaded agent index (see module docstring)."""

    def upsert(self, agent: str, groups: Iterable[str], capacity: int, available: bool) -> None: ...

    def remove(self, agent: str) -> None: ...

    def set_available(self, agent: str, available: bool) -> None: ...

    def pick(self, group: str) -> str | None: ...

    def acquire(self, agent: str) -> bool: ...

    def force_acquire(self, agent: str) -> None: ...

    def release(self, agent: str) -> None: ...

    def load(self, agent: str) -> int: ...

    def capacity(self, agent: str) -> int: ...

    def is_available(self, agent: str) -> bool: ...

    def __len__(self) -> int: ...

    def __contains__(self, agent: object) -> bool: ...


class _Agent:
    __slots__ = ("name", "key", "groups", "capacity", "load", "available")

    def __init__(self, name: str, key: bytes, groups: list[bytes], capacity: int, available: bool) -> None:
        self.name = name
        self.key = key
        self.groups = groups
        self.capacity = capacity
        self.load = 0
        self.available = available

    def eligible(self) -> bool:
        return self.available and self.load < self.capacity


class ReferenceLoadIndex:
    """Pure-Python LoadIndex; ``pick`` is O(members of the group)."""

    __slots__ = ("_agents", "_groups")

    def __init__(self) -> None:
        self._agents: dict[bytes, _Agent] = {}
        self._groups: dict[bytes, set[bytes]] = {}  # group -> member agent keys

    def _join(self, key: bytes, groups: list[bytes]) -> None:
        for g in groups:
            self._groups.setdefault(g, set()).add(key)

    def _leave(self, key: bytes, groups: list[bytes]) -> None:
        for g in groups:
            members = self._groups[g]
            members.discard(key)
            if not members:
                del self._groups[g]

    def _get(self, agent: object) -> _Agent:
        a = self._agents.get(_str_id(agent, "agent"))
        if a is None:
            raise KeyError(agent)
        return a

    def upsert(self, agent: str, groups: Iterable[str], capacity: SupportsIndex, available: bool) -> None:
        """Create or update an agent; its current load is kept."""
        key = _str_id(agent, "agent")
        names = _group_list(groups)
        cap = _capacity(capacity)
        avail = exact_bool(available, "available")
        a = self._agents.get(key)
        if a is None:
            a = _Agent(key.decode("utf-8", "surrogatepass"), key, names, cap, avail)
            self._agents[key] = a
        else:
            self._leave(key, a.groups)
            a.groups, a.capacity, a.available = names, cap, avail
        self._join(key, names)

    def remove(self, agent: str) -> None:
        """Forget an agent (no-op if absent)."""
        a = self._agents.pop(_str_id(agent, "agent"), None)
        if a is not None:
            self._leave(a.key, a.groups)

    def set_available(self, agent: str, available: bool) -> None:
        """Mark an agent (un)available; KeyError if absent."""
        key = _str_id(agent, "agent")
        avail = exact_bool(available, "available")
        a = self._agents.get(key)
        if a is None:
            raise KeyError(agent)
        a.available = avail

    def pick(self, group: str) -> str | None:
        """Least-loaded eligible agent of the group (ties: id bytes ascending), or None."""
        members = self._groups.get(_str_id(group, "group"), ())
        best: _Agent | None = None
        for k in members:
            a = self._agents[k]
            if a.eligible() and (best is None or (a.load, a.key) < (best.load, best.key)):
                best = a
        return None if best is None else best.name

    def acquire(self, agent: str) -> bool:
        """Take one unit of load if the agent is available and has room."""
        a = self._agents.get(_str_id(agent, "agent"))
        if a is None or not a.eligible():
            return False
        a.load += 1
        return True

    def force_acquire(self, agent: str) -> None:
        """Take one unit of load unconditionally (state restore); KeyError if absent."""
        a = self._get(agent)
        a.load = min(a.load + 1, (1 << 64) - 1)

    def release(self, agent: str) -> None:
        """Give back one unit of load (never below 0; no-op if absent)."""
        a = self._agents.get(_str_id(agent, "agent"))
        if a is not None and a.load > 0:
            a.load -= 1

    def load(self, agent: str) -> int:
        return self._get(agent).load

    def capacity(self, agent: str) -> int:
        return self._get(agent).capacity

    def is_available(self, agent: str) -> bool:
        return self._get(agent).available

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent: object) -> bool:
        try:
            key = _str_id(agent, "agent")
        except Exception:
            return False
        return key in self._agents

    def _group_count(self) -> int:
        """Test hook: number of live group records."""
        return len(self._groups)

    def __repr__(self) -> str:
        return f"routing.load_index.ReferenceLoadIndex(agents={len(self._agents)}, groups={len(self._groups)})"


def make_load_index(*, prefer_native: bool = True) -> LoadIndex:
    """Build a LoadIndex: native if available and ``prefer_native``, else the pure-Python reference."""
    if prefer_native and native.MODULE is not None:
        return native.MODULE.LoadIndex()
    return ReferenceLoadIndex()

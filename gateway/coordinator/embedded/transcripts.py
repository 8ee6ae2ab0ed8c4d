"""Transcripts in one process: the listing and erasure, from the store where there is one (store.py), else from memory."""

from __future__ import annotations

from collections import deque
from typing import Any

from routing.model import Conversation

from ..ports import Transcripts
from ..retention import Retention
from .store import Store


class MemoryTranscripts(Transcripts):
    _store: Store | None
    _convs: dict[tuple[str, str], Conversation]
    _logs: dict[tuple[str, str], Any]
    _pop_log: Any
    _open_of: dict[tuple[str, str], str]
    _sticky: dict[tuple[str, str], str]
    _agent_convs: dict[tuple[str, str], set[str]]
    _closed: deque[tuple[float, tuple[str, str], int]]
    _closed_bytes: int
    _retention: Retention | None
    _contacts: dict[tuple[str, str, str], dict[str, Any]]

    async def list_conversations(self, tenant: str, *, since_ms: int | None = None, until_ms: int | None = None,
                                 state: str | None = None, agent: str | None = None, limit: int = 100,
                                 after: tuple[int, str] | None = None) -> list[Conversation]:
        if self._store is not None:  # everything is there, open and closed (written ahead)
            return self._store.list_conversations(tenant, since_ms, until_ms, state, agent, limit, after)
        out = [c for (t, _), c in self._convs.items()
               if t == tenant and (since_ms is None or c.created_ms >= since_ms)
               and (until_ms is None or c.created_ms < until_ms) and (state is None or c.state == state)
               and (agent is None or c.agent == agent) and (after is None or (c.created_ms, c.id) > after)]
        out.sort(key=lambda c: (c.created_ms, c.id))
        return [c.copy() for c in out[:limit]]

    async def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        if (tenant, visitor) in self._open_of:
            raise ValueError("the visitor has an open conversation: close it first")
        erased = [conv_id for (t, conv_id), c in self._convs.items() if t == tenant and c.visitor == visitor]
        if self._store is not None:
            erased = sorted(set(erased) | set(self._store.erase_visitor(tenant, visitor)))
        self._sticky.pop((tenant, visitor), None)
        for key in [k for k, rec in self._contacts.items() if k[0] == tenant and rec.get("visitor") == visitor]:
            del self._contacts[key]  # a channel's user who was this visitor (gateway/channels)
        self._forget(tenant, erased)
        return erased

    def expire(self, now_ms: int) -> list[tuple[str, str]]:
        """Delete the closed conversations past their tenant's retention (`Retention`); returns (tenant, id) of each."""
        if self._retention is None or not self._retention.any():
            return []
        tenants = {t for t, _ in self._convs} | set(self._retention.by_tenant)
        if self._store is not None:
            tenants |= self._store.tenants()
        gone: list[tuple[str, str]] = []
        for tenant in sorted(tenants):
            horizon = self._retention.horizon_ms(tenant, now_ms)
            if horizon is None:
                continue
            ids = {conv_id for (t, conv_id), c in self._convs.items()
                   if t == tenant and c.state == "closed" and c.created_ms < horizon}
            if self._store is not None:
                ids |= set(self._store.expire(tenant, horizon))
            self._forget(tenant, sorted(ids))
            gone += [(tenant, conv_id) for conv_id in sorted(ids)]
        return gone

    def _forget(self, tenant: str, erased: list[str]) -> None:
        """The erased conversations leave memory (state, log, the agent's holdings, the eviction queue)."""
        for conv_id in erased:
            c = self._convs.pop((tenant, conv_id), None)
            self._pop_log((tenant, conv_id))
            if c is not None and c.agent:
                self._agent_convs.get((tenant, c.agent), set()).discard(conv_id)
        gone = {(tenant, conv_id) for conv_id in erased}
        if gone:
            self._closed = deque(x for x in self._closed if x[1] not in gone)
            self._closed_bytes = sum(x[2] for x in self._closed)



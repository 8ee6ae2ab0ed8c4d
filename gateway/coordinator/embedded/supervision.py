"""Supervision in one process: the tenant's live picture read from the other ports' dictionaries."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from itertools import islice

from routing.model import Agent, Conversation

from ..ports import (
    LIVE_AGENTS_MAX,
    LIVE_GROUPS_MAX,
    LIVE_QUEUED_MAX,
    OPEN_STATES,
    LiveView,
    NodeSeen,
    QueueView,
    Supervision,
    Waiting,
)


class MemorySupervision(Supervision):
    """Reads what agents.py and conversations.py keep: no index of its own, nothing written."""

    node_id: str
    _agents: dict[tuple[str, str], Agent]
    _agents_of: dict[str, set[str]]
    _groups_of: dict[str, set[str]]
    _queues: dict[tuple[str, str], deque[str]]
    _queued_ms: dict[tuple[str, str], int]
    _state_counts: dict[tuple[str, str], int]
    peek_now: Callable[[str, str], Conversation | None]  # conversations.py

    async def live_view(self, tenant: str) -> LiveView:
        now_ms = int(time.time() * 1000)
        view = LiveView(states={s: self._state_counts.get((tenant, s), 0) for s in OPEN_STATES},
                        nodes=[NodeSeen(self.node_id, 0)])
        groups = sorted(g for g in self._groups_of.get(tenant, ()) if self._queues.get((tenant, g)))
        view.truncated = len(groups) > LIVE_GROUPS_MAX
        room = LIVE_QUEUED_MAX
        for group in groups[:LIVE_GROUPS_MAX]:
            q = self._queues[(tenant, group)]
            waiting = []
            for conv_id in islice(q, room):
                conv = self.peek_now(tenant, conv_id)
                # No enqueue time after a restart (kept in memory only): the creation time is the
                # earliest it can have joined.
                since = self._queued_ms.get((tenant, conv_id), conv.created_ms if conv is not None else now_ms)
                waiting.append(Waiting(conv_id, conv.visitor if conv is not None else "", max(0, now_ms - since)))
            room -= len(waiting)
            view.truncated |= len(waiting) < len(q)
            view.queues.append(QueueView(group, len(q), waiting))
        ids = self._agents_of.get(tenant, set())
        view.truncated |= len(ids) > LIVE_AGENTS_MAX
        view.agents = [replace(self._agents[(tenant, a)]) for a in heapq.nsmallest(LIVE_AGENTS_MAX, ids)]
        return view

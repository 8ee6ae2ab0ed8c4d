"""Supervision on Redis: a tenant's live picture from the keys the other ports keep (keys.py), never KEYS or SCAN.

Where each part comes from:
- agents: `{a:T}:agents` (HSCAN, at most LIVE_AGENTS_MAX) and their loads (`{a:T}:load`, HMGET);
- queues: the groups in `{q:T}:groups` (enqueue.lua adds each group it queues in) and those of the
  agents; per group the list `{q:T}:q:G` and when each entry joined it, `{q:T}:since:G`; the
  visitor (and, for an entry queued before `since` was kept, the creation time) from each doc;
- conversations by state: SCARD of `{s:T}:bot|queued|assigned` (state_index.lua);
- nodes: `P:nodes`, whose scores are heartbeat expiries (presence.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..base import Agent
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
from .errors import available_errors
from .keys import q

NODES_MAX = 1000  # live nodes listed (a cluster has far fewer)
GROUP_NAMES_MAX = 4 * LIVE_GROUPS_MAX  # group names read, empty queues included


class RedisSupervision(Supervision):
    """The `Supervision` port of `RedisCoordinator` (coordinator.py), which provides the client `r`
    and the key builders (keys.py)."""

    r: Any
    _p: str
    _node_ttl_s: float

    @available_errors
    async def live_view(self, tenant: str) -> LiveView:
        now_ms = int(time.time() * 1000)
        view = LiveView()
        view.agents, cut = await self._agents_view(tenant)
        view.truncated |= cut
        async with self.r.pipeline(transaction=False) as p:  # one slot: {s:T}
            for state in OPEN_STATES:
                p.scard(self._sk(tenant, state))
            view.states = dict(zip(OPEN_STATES, (int(n) for n in await p.execute()), strict=True))
        view.nodes = await self._nodes_view(now_ms)
        groups = {g for a in view.agents for g in a.groups}
        groups |= await self._queue_groups(tenant)
        view.queues, cut = await self._queues_view(tenant, sorted(groups), now_ms)
        view.truncated |= cut
        return view

    async def _agents_view(self, tenant: str) -> tuple[list[Agent], bool]:
        """At most LIVE_AGENTS_MAX agents by id, with their loads; and whether there were more."""
        key = self._ak(tenant, "agents")
        total = int(await self.r.hlen(key))
        docs: dict[bytes, bytes] = {}
        cursor = 0
        while True:  # HSCAN may repeat a field: the dict keeps one
            cursor, page = await self.r.hscan(key, cursor, count=LIVE_AGENTS_MAX)
            docs.update(page)
            if not cursor or len(docs) >= LIVE_AGENTS_MAX:
                break
        ids = sorted(docs)[:LIVE_AGENTS_MAX]  # bytes of UTF-8 sort as their strings do
        loads = await self.r.hmget(self._ak(tenant, "load"), ids) if ids else []
        agents = []
        for raw_id, load in zip(ids, loads, strict=True):
            d = orjson.loads(docs[raw_id])
            agents.append(Agent(tenant, raw_id.decode(), tuple(d["groups"]), d["capacity"], d["status"], d["connected"],
                                int(load or 0)))
        return agents, total > len(agents)

    async def _queue_groups(self, tenant: str) -> set[str]:
        """The group names enqueue.lua recorded for the tenant, at most GROUP_NAMES_MAX."""
        names: set[str] = set()
        cursor = 0
        while True:
            cursor, page = await self.r.sscan(self._qk(tenant, "groups"), cursor, count=GROUP_NAMES_MAX)
            names.update(m.decode() for m in page)
            if not cursor or len(names) >= GROUP_NAMES_MAX:
                return names

    async def _nodes_view(self, now_ms: int) -> list[NodeSeen]:
        """Live nodes (expiry not past) by id; a score is the last beat plus the TTL, which every node is
        expected to share (docs/cluster.md), so the beat's age is read with this node's TTL."""
        live = await self.r.zrangebyscore(f"{self._p}:nodes", now_ms, "+inf", start=0, num=NODES_MAX, withscores=True)
        ttl_ms = int(self._node_ttl_s * 1000)
        return sorted((NodeSeen(n.decode(), max(0, now_ms - (int(score) - ttl_ms))) for n, score in live),
                      key=lambda n: n.id)

    async def _queues_view(self, tenant: str, groups: list[str], now_ms: int) -> tuple[list[QueueView], bool]:
        """Non-empty queues of `groups` (at most LIVE_GROUPS_MAX), at most LIVE_QUEUED_MAX entries in all."""
        if not groups:
            return [], False
        async with self.r.pipeline(transaction=False) as p:  # one slot: {q:T}
            for g in groups:
                p.llen(self._qk(tenant, "q:" + q(g)))
            lengths = [int(n) for n in await p.execute()]
        busy = [(g, n) for g, n in zip(groups, lengths, strict=True) if n]
        cut = len(busy) > LIVE_GROUPS_MAX
        busy = busy[:LIVE_GROUPS_MAX]
        room, takes = LIVE_QUEUED_MAX, {}
        for g, n in busy:
            if room:  # LRANGE 0 -1 would be the whole list: a group past the bound is not read
                takes[g] = min(n, room)
                room -= takes[g]
        cut |= sum(takes.values()) < sum(n for _, n in busy)
        ids: dict[str, list[str]] = {}
        if takes:
            async with self.r.pipeline(transaction=False) as p:  # one slot: {q:T}
                for g, take in takes.items():
                    p.lrange(self._qk(tenant, "q:" + q(g)), 0, take - 1)
                ids = {g: [c.decode() for c in got] for g, got in zip(takes, await p.execute(), strict=True)}
        waiting = await self._waiting(tenant, {g: c for g, c in ids.items() if c}, now_ms)
        return [QueueView(g, n, waiting.get(g, [])) for g, n in busy], cut

    async def _waiting(self, tenant: str, ids: dict[str, list[str]], now_ms: int) -> dict[str, list[Waiting]]:
        """Each listed entry with its visitor and wait: when it joined (`since:G`) and its doc, in one pipeline."""
        if not ids:
            return {}
        async with self.r.pipeline(transaction=False) as p:  # since: {q:T}; docs: a slot each
            for g, convs in ids.items():
                p.hmget(self._qk(tenant, "since:" + q(g)), convs)
            for convs in ids.values():
                for conv_id in convs:
                    p.get(self._ck(tenant, conv_id, "doc"))
            answers = await p.execute()
        docs = iter(answers[len(ids):])
        out: dict[str, list[Waiting]] = {}
        for (g, convs), since in zip(ids.items(), answers[:len(ids)], strict=True):
            out[g] = []
            for conv_id, at in zip(convs, since, strict=True):
                raw = next(docs)
                doc = orjson.loads(raw) if raw else {}
                # Queued before `since` was kept (an older node): the creation time is the earliest it joined.
                joined = int(at) if at else int(doc.get("created_ms") or now_ms)
                out[g].append(Waiting(conv_id, doc.get("visitor", ""), max(0, now_ms - joined)))
        return out

"""AgentsAndQueue in one process: agents with the native load index, one deque per queue."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

import orjson

from routing.load_index import make_load_index
from routing.model import Agent

from ..base import agent_event
from ..ports import AgentsAndQueue
from .store import Store


class MemoryAgentsAndQueue(AgentsAndQueue):
    _store: Store | None

    def _init_agents(self) -> None:
        self._agents: dict[tuple[str, str], Agent] = {}
        self._index = make_load_index()
        self._queues: dict[tuple[str, str], deque[str]] = {}
        # For the supervisor's view (supervision.py): a tenant's agent ids and queue groups, and when
        # each waiting conversation joined its queue ((tenant, conv) -> wall clock ms; memory only:
        # after a restart the view falls back to the conversation's creation time).
        self._agents_of: dict[str, set[str]] = {}
        self._groups_of: dict[str, set[str]] = {}
        self._queued_ms: dict[tuple[str, str], int] = {}

    def _ikey(self, tenant: str, agent_id: str) -> str:
        return f"{tenant}\0{agent_id}"

    async def upsert_agent(self, agent: Agent) -> Agent:
        key = (agent.tenant, agent.id)
        old = self._agents.get(key)
        agent = replace(agent, load=old.load if old else 0)
        if self._store is not None:
            changed = old is None or (old.status, old.connected) != (agent.status, agent.connected)
            self._store.save_agent(agent, orjson.dumps(agent_event(agent)) if changed else None)
        self._agents[key] = agent
        self._agents_of.setdefault(agent.tenant, set()).add(agent.id)
        self._index.upsert(
            self._ikey(agent.tenant, agent.id),
            [f"{agent.tenant}\0{g}" for g in agent.groups],
            agent.capacity,
            agent.available,
        )
        return replace(agent)

    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        a = self._agents.get((tenant, agent_id))
        return replace(a) if a else None

    async def reserve_agent(self, tenant: str, group: str, prefer: str | None = None) -> str | None:
        if prefer is not None:
            a = self._agents.get((tenant, prefer))
            if a and group in a.groups and self._index.acquire(self._ikey(tenant, prefer)):
                a.load += 1
                return prefer
        picked = self._index.pick(f"{tenant}\0{group}")
        if picked is None:
            return None
        agent_id = picked.split("\0", 1)[1]
        if not self._index.acquire(picked):  # pick and acquire disagree only on a bug
            raise RuntimeError(f"load index picked {agent_id} but could not charge it")
        self._agents[(tenant, agent_id)].load += 1
        return agent_id

    async def release_agent(self, tenant: str, agent_id: str) -> None:
        a = self._agents.get((tenant, agent_id))
        if a and a.load > 0:
            a.load -= 1
            self._index.release(self._ikey(tenant, agent_id))


    def _restore_agent(self, agent: Agent, load: int) -> None:
        """An agent as the store had it, charged with the `load` conversations it holds."""
        self._agents[(agent.tenant, agent.id)] = agent = replace(agent, load=0, connected=False)
        self._agents_of.setdefault(agent.tenant, set()).add(agent.id)
        self._index.upsert(self._ikey(agent.tenant, agent.id), [f"{agent.tenant}\0{g}" for g in agent.groups],
                           agent.capacity, agent.available)
        for _ in range(load):
            self._agents[(agent.tenant, agent.id)].load += 1
            self._index.force_acquire(self._ikey(agent.tenant, agent.id))

    # queues
    def _restore_queue(self, tenant: str, group: str, convs: list[str]) -> None:
        """A queue as the store had it, head first."""
        self._queues[(tenant, group)] = deque(convs)
        self._groups_of.setdefault(tenant, set()).add(group)

    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None:
        q = self._queues.setdefault((tenant, group), deque())
        if conv_id in q:
            return
        if self._store is not None:
            self._store.enqueue(tenant, group, conv_id, front)
        q.appendleft(conv_id) if front else q.append(conv_id)
        self._groups_of.setdefault(tenant, set()).add(group)
        self._queued_ms[(tenant, conv_id)] = int(time.time() * 1000)

    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool:
        q = self._queues.get((tenant, group))
        if q and conv_id in q:
            if self._store is not None:
                self._store.dequeue(tenant, group, conv_id)
            q.remove(conv_id)
            self._queued_ms.pop((tenant, conv_id), None)
            return True
        return False

    async def queue_head(self, tenant: str, group: str) -> str | None:
        q = self._queues.get((tenant, group))
        return q[0] if q else None

    async def queue_list(self, tenant: str, group: str) -> list[str]:
        return list(self._queues.get((tenant, group), ()))


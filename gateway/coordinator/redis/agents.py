"""AgentsAndQueue on Redis: agent docs, loads and per-group eligible sets changed by scripts; one list per queue."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson

from ..base import Agent, agent_event
from .errors import available_errors
from .keys import q


class RedisAgentsAndQueue:
    """The `AgentsAndQueue` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    webhook_tenants: frozenset[str]  # tenants with webhook subscriptions (gateway/webhooks_cluster.py)

    def _agent_doc(self, a: Agent) -> bytes:
        return orjson.dumps({"groups": list(a.groups), "capacity": a.capacity, "status": a.status, "connected": a.connected})

    @available_errors
    async def upsert_agent(self, agent: Agent) -> Agent:
        event = orjson.dumps(agent_event(agent)) if agent.tenant in self.webhook_tenants else b""
        load = await self._upsert_s(
            keys=[self._ak(agent.tenant, "agents"), self._ak(agent.tenant, "load"), self._ak(agent.tenant, "events")],
            args=[agent.id, self._agent_doc(agent), self._ak(agent.tenant, "avail:"), event],
        )
        return replace(agent, load=int(load))

    @available_errors
    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        raw = await self.r.hget(self._ak(tenant, "agents"), agent_id)
        if raw is None:
            return None
        d = orjson.loads(raw)
        load = int(await self.r.hget(self._ak(tenant, "load"), agent_id) or 0)
        return Agent(tenant, agent_id, tuple(d["groups"]), d["capacity"], d["status"], d["connected"], load)

    @available_errors
    async def reserve_agent(self, tenant: str, group: str, prefer: str | None = None) -> str | None:
        got = await self._reserve_s(
            keys=[self._ak(tenant, "agents"), self._ak(tenant, "load")],
            args=[group, prefer or "", self._ak(tenant, "avail:")],
        )
        return got.decode() if got else None

    @available_errors
    async def release_agent(self, tenant: str, agent_id: str) -> None:
        await self._release_s(keys=[self._ak(tenant, "agents"), self._ak(tenant, "load")],
                              args=[agent_id, self._ak(tenant, "avail:")])

    @available_errors
    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None:
        """With the time it joined and its group's name kept beside the list (enqueue.lua), for supervision.py."""
        await self._enqueue_s(keys=[self._qk(tenant, "q:" + q(group)), self._qk(tenant, "since:" + q(group)),
                                    self._qk(tenant, "groups")],
                              args=[conv_id, "1" if front else "0", int(time.time() * 1000), group])

    @available_errors
    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool:
        return bool(await self._dequeue_s(keys=[self._qk(tenant, "q:" + q(group)), self._qk(tenant, "since:" + q(group))],
                                          args=[conv_id]))

    @available_errors
    async def queue_head(self, tenant: str, group: str) -> str | None:
        v = await self.r.lindex(self._qk(tenant, "q:" + q(group)), 0)
        return v.decode() if v else None

    @available_errors
    async def queue_list(self, tenant: str, group: str) -> list[str]:
        return [v.decode() for v in await self.r.lrange(self._qk(tenant, "q:" + q(group)), 0, -1)]

"""ConversationState on Redis: conversation docs (fenced writes), open and sticky per visitor, holdings per agent."""

from __future__ import annotations

import orjson

from ..base import Conversation, Unavailable
from .errors import available_errors
from .keys import q
from .locks import FENCE


class RedisConversations:
    """The `ConversationState` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    @available_errors
    async def create_conversation(self, conv: Conversation) -> Conversation:
        doc = orjson.dumps(conv.to_dict())
        if not await self.r.set(self._ck(conv.tenant, conv.id, "doc"), doc, nx=True):
            raise ValueError(f"conversation {conv.id} exists")
        await self.r.set(self._vk(conv.tenant, conv.visitor, "open"), conv.id)
        return conv

    @available_errors
    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        raw = await self.r.get(self._ck(tenant, conv_id, "doc"))
        return Conversation.from_dict(orjson.loads(raw)) if raw else None

    @available_errors
    async def save_conversation(self, conv: Conversation) -> None:
        old = await self.get_conversation(conv.tenant, conv.id)
        ok = await self._save_s(
            keys=[self._ck(conv.tenant, conv.id, "doc"), self._ck(conv.tenant, conv.id, "meta")],
            args=[orjson.dumps(conv.to_dict()), FENCE.get()],
        )
        if not ok:
            raise Unavailable("lost the conversation lock to another node (stale fencing token)")
        if old and old.agent and (old.agent != conv.agent or conv.state != "assigned"):
            await self.r.srem(self._ak(conv.tenant, "convs:" + q(old.agent)), conv.id)
        if conv.agent and conv.state == "assigned":
            await self.r.sadd(self._ak(conv.tenant, "convs:" + q(conv.agent)), conv.id)
        if conv.state == "closed":
            key = self._vk(conv.tenant, conv.visitor, "open")
            if (await self.r.get(key) or b"").decode() == conv.id:
                await self.r.delete(key)

    @available_errors
    async def open_conversation_of(self, tenant: str, visitor: str) -> str | None:
        v = await self.r.get(self._vk(tenant, visitor, "open"))
        return v.decode() if v else None

    @available_errors
    async def conversations_of_agent(self, tenant: str, agent: str) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(self._ak(tenant, "convs:" + q(agent))))

    @available_errors
    async def sticky_agent(self, tenant: str, visitor: str) -> str | None:
        v = await self.r.get(self._vk(tenant, visitor, "sticky"))
        return v.decode() if v else None

    @available_errors
    async def set_sticky_agent(self, tenant: str, visitor: str, agent: str) -> None:
        await self.r.set(self._vk(tenant, visitor, "sticky"), agent, ex=30 * 86400)

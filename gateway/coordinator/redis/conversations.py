"""ConversationState on Redis: conversation docs (fenced writes), open and sticky per visitor, holdings per agent."""

from __future__ import annotations

import secrets
import time

import orjson
from lru import LRU

from ..base import Conversation, Unavailable
from ..ports import OPEN_STATES
from ..postgres import PostgresArchive
from ..retention import Retention
from .archiver import member
from .errors import available_errors
from .keys import q
from .locks import FENCE

# Conversations this node serves, kept between messages (docs/cluster.md, step 2b): the `msg`
# path reads them here instead of from Redis; a copy older than the stored state fails the
# append (its version) and is read again.
CACHED_CONVERSATIONS = 100_000
CLOSED_GRACE_MS = 600_000  # a closed conversation's keys live at least this long after the close


class RedisConversations:
    """The `ConversationState` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    _cache: LRU  # (tenant, conv id) -> Conversation, least recently used evicted first
    _retention: Retention | None
    _archive: PostgresArchive | None

    async def _archive_soon(self, tenant: str, conv_id: str) -> None:
        """Queue the conversation for the archiver (archiver.py): its archived state is behind."""
        if self._archive is not None:
            await self.r.zadd(self._archive_key(), {member(tenant, conv_id): int(time.time() * 1000)})

    def _forget(self, tenant: str, conv_id: str) -> None:
        self._cache.pop((tenant, conv_id), None)

    @available_errors
    async def create_conversation(self, conv: Conversation) -> Conversation:
        doc = orjson.dumps(conv.to_dict())
        if not await self.r.set(self._ck(conv.tenant, conv.id, "doc"), doc, nx=True):
            raise ValueError(f"conversation {conv.id} exists")
        async with self.r.pipeline(transaction=False) as p:  # one slot: the visitor's
            p.set(self._vk(conv.tenant, conv.visitor, "open"), conv.id)
            p.sadd(self._vk(conv.tenant, conv.visitor, "convs"), conv.id)  # every one of theirs, for erasure
            await p.execute()
        conv.version = 0
        self._cache[(conv.tenant, conv.id)] = conv.copy()
        await self._index_state(conv)
        await self._archive_soon(conv.tenant, conv.id)
        return conv

    async def _index_state(self, conv: Conversation) -> None:
        """Put `conv` in its tenant's set of open conversations in its state, and out of the others
        (state_index.lua; the counts supervision.py reads). After the doc's write, in another slot:
        a node lost in between leaves the old state counted until the conversation's next save."""
        await self._state_index_s(keys=[self._sk(conv.tenant, s) for s in OPEN_STATES], args=[conv.id, conv.state])

    @available_errors
    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        # The version first: a save between the two reads then pairs a newer doc with an older
        # version, which only makes a conditional append fail and read again (never the reverse).
        async with self.r.pipeline(transaction=False) as p:
            p.hget(self._ck(tenant, conv_id, "meta"), "ver")
            p.get(self._ck(tenant, conv_id, "doc"))
            ver, raw = await p.execute()
        if not raw:
            # Moved to the archive after it closed (archiver.py), or never there.
            return await self._archive.conversation(tenant, conv_id) if self._archive is not None else None
        conv = Conversation.from_dict(orjson.loads(raw))
        conv.version = int(ver or 0)
        if (tenant, conv_id) in self._cache:  # the node keeps this one: keep it fresh
            self._cache[(tenant, conv_id)] = conv.copy()
        return conv

    async def peek_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        """This node's copy when it has one (it may be older than Redis's: see `version`)."""
        conv = self._cache.get((tenant, conv_id))
        if conv is None:
            conv = await self.get_conversation(tenant, conv_id)
            if conv is not None:
                self._cache[(tenant, conv_id)] = conv
        return conv

    @available_errors
    async def save_conversation(self, conv: Conversation) -> None:
        old = await self.get_conversation(conv.tenant, conv.id)
        version = await self._save_s(
            keys=[self._ck(conv.tenant, conv.id, "doc"), self._ck(conv.tenant, conv.id, "meta")],
            args=[orjson.dumps(conv.to_dict()), FENCE.get(), secrets.randbits(52) + 1],
        )
        if version < 0:
            self._forget(conv.tenant, conv.id)
            raise Unavailable("lost the conversation lock to another node (stale fencing token)")
        conv.version = int(version)
        self._cache[(conv.tenant, conv.id)] = conv.copy()
        await self._index_state(conv)
        if old and old.agent and (old.agent != conv.agent or conv.state != "assigned"):
            await self.r.srem(self._ak(conv.tenant, "convs:" + q(old.agent)), conv.id)
        if conv.agent and conv.state == "assigned":
            await self.r.sadd(self._ak(conv.tenant, "convs:" + q(conv.agent)), conv.id)
        if conv.state == "closed":
            key = self._vk(conv.tenant, conv.visitor, "open")
            if (await self.r.get(key) or b"").decode() == conv.id:
                await self.r.delete(key)
            if self._archive is not None:  # its keys stay archive_after_s past this (archiver.py)
                await self.r.hsetnx(self._ck(conv.tenant, conv.id, "meta"), "closed_ms", int(time.time() * 1000))
            await self._expire_closed(conv)
        await self._archive_soon(conv.tenant, conv.id)

    async def _expire_closed(self, conv: Conversation) -> None:
        """Retention: a closed conversation's keys expire when its tenant's period since it opened is
        over, and not within CLOSED_GRACE_MS of the close (the `closed` event and late retries still
        land in them; docs/store.md, step 12)."""
        at = self._retention.delete_at_ms(conv.tenant, conv.created_ms) if self._retention else None
        if at is None:
            return
        at = max(at, int(time.time() * 1000) + CLOSED_GRACE_MS)
        async with self.r.pipeline(transaction=False) as p:  # one slot: the conversation's
            for part in ("doc", "log", "ids", "meta"):
                p.pexpireat(self._ck(conv.tenant, conv.id, part), at)
            await p.execute()

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

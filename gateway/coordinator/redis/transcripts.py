"""Transcripts on Redis: the listing from the PostgreSQL archive, and erasure of a visitor's data.

Streams are trimmed and nothing in Redis indexes a tenant's conversations by time, so the listing
reads the archive (archiver.py keeps a row per conversation, updated each time its state is saved,
within a poll of the change); without an archive there is no listing. Erasure finds a visitor's
conversations in their `convs` set (keys.py) and, with an archive, in it; deletes each one's keys
(doc, log, client ids, meta; one slot each), the visitor's own, the archive's rows, and tells every
live node to drop its cached copies (bus.py, `_forget`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from routing.model import Conversation

from ..base import Unavailable
from ..ports import Transcripts
from ..postgres import PostgresArchive
from .archiver import member
from .errors import available_errors
from .keys import q
from .leases import LEASE_MS, lease_token

_WHY = "cluster mode lists conversations from its PostgreSQL archive, and none is configured (archive_url)"


class RedisTranscripts(Transcripts):
    r: Any
    node_id: str
    _archive: PostgresArchive | None

    async def list_conversations(self, tenant: str, *, since_ms: int | None = None, until_ms: int | None = None,
                                 state: str | None = None, agent: str | None = None, limit: int = 100,
                                 after: tuple[int, str] | None = None) -> list[Conversation]:
        if self._archive is None:
            raise NotImplementedError(_WHY)
        return await self._archive.list_conversations(tenant, since_ms, until_ms, state, agent, limit, after)

    @available_errors
    async def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        if await self.r.exists(self._vk(tenant, visitor, "open")):
            raise ValueError("the visitor has an open conversation: close it first")
        ids = {c.decode() for c in await self.r.smembers(self._vk(tenant, visitor, "convs"))}
        if self._archive is not None:
            ids |= set(await self._archive.conversations_of_visitor(tenant, visitor))
        conv_ids = sorted(ids)
        if self._archive is not None:
            await self._hold_leases(tenant, conv_ids)  # no archiver copies one back while it goes
        # Each conversation's keys share a slot: one DEL each, all at once (webhook cursors too).
        await asyncio.gather(*(self.r.delete(*(self._ck(tenant, c, part) for part in ("doc", "log", "ids", "meta", "wh")))
                               for c in conv_ids))
        await self._erase_around(tenant, visitor, set(conv_ids))
        for conv_id in conv_ids:
            self._forget(tenant, conv_id)
        if self._archive is not None and conv_ids:
            await self.r.zrem(self._archive_key(), *(member(tenant, c) for c in conv_ids))
            await self._archive.erase(tenant, conv_ids)
            # The leases go too (ours: taken above, and within LEASE_MS), so no key names them.
            await asyncio.gather(*(self.r.delete(self._ck(tenant, c, "archiving")) for c in conv_ids))
        await self.r.delete(*(self._vk(tenant, visitor, part) for part in ("convs", "sticky", "open")))
        await self.forget_everywhere(tenant, conv_ids)
        return conv_ids

    async def _erase_around(self, tenant: str, visitor: str, conv_ids: set[str]) -> None:
        """What else holds the visitor: webhook dead letters of the conversations (gateway/webhooks_cluster.py)
        and the channels' contacts that were this visitor (gateway/channels)."""
        dead_key = f"{self._p}:{{w:{q(tenant)}}}:dead"
        dead = await self.r.hgetall(dead_key)
        gone = [k for k, v in dead.items() if orjson.loads(v).get("conv") in conv_ids]
        if gone:
            await self.r.hdel(dead_key, *gone)
        async for key in self.r.scan_iter(match=f"{self._p}:{{k:{q(tenant)}}}:contacts:*", count=1000):
            records = await self.r.hgetall(key)
            them = [k for k, v in records.items() if orjson.loads(v).get("visitor") == visitor]
            if them:
                await self.r.hdel(key, *them)

    async def _hold_leases(self, tenant: str, conv_ids: list[str]) -> None:
        """Take each conversation's archiving lease (archiver.py), waiting for a node that holds one
        to finish (at most LEASE_MS); they lapse by themselves after the erasure. Unavailable if a
        lease is not freed in time (the erasure is asked again)."""
        deadline = time.monotonic() + LEASE_MS / 1000
        for conv_id in conv_ids:
            token = lease_token(self.node_id, "erasing")
            while not await self.r.set(self._ck(tenant, conv_id, "archiving"), token, nx=True, px=LEASE_MS):
                if time.monotonic() > deadline:
                    raise Unavailable(f"conversation {conv_id} is being archived: ask for the erasure again")
                await asyncio.sleep(0.05)

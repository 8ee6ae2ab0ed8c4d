"""Transcripts on Redis: erasure of a visitor's data; the listing is not kept yet.

Streams are trimmed and nothing indexes a tenant's conversations by time: the PostgreSQL archive
(issue 13) is where the listing will read. Erasure finds a visitor's conversations in their
`convs` set (keys.py), deletes each one's keys (doc, log, client ids, meta; one slot each) and the
visitor's own, and tells every live node to drop its cached copies (bus.py, `_forget`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from routing.model import Conversation

from ..ports import Transcripts
from .errors import available_errors

_WHY = "cluster mode keeps no archive yet (the PostgreSQL archiver is not built): the listing needs it"


class RedisTranscripts(Transcripts):
    r: Any

    async def list_conversations(self, tenant: str, *, since_ms: int | None = None, until_ms: int | None = None,
                                 state: str | None = None, agent: str | None = None, limit: int = 100,
                                 after: tuple[int, str] | None = None) -> list[Conversation]:
        raise NotImplementedError(_WHY)

    @available_errors
    async def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        if await self.r.exists(self._vk(tenant, visitor, "open")):
            raise ValueError("the visitor has an open conversation: close it first")
        conv_ids = sorted(c.decode() for c in await self.r.smembers(self._vk(tenant, visitor, "convs")))
        # Each conversation's keys share a slot: one DEL each, all at once.
        await asyncio.gather(*(self.r.delete(*(self._ck(tenant, c, part) for part in ("doc", "log", "ids", "meta")))
                               for c in conv_ids))
        for conv_id in conv_ids:
            self._forget(tenant, conv_id)
        await self.r.delete(*(self._vk(tenant, visitor, part) for part in ("convs", "sticky", "open")))
        await self.forget_everywhere(tenant, conv_ids)
        return conv_ids

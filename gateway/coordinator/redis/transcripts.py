"""Transcripts on Redis: not kept yet. Streams are trimmed and nothing indexes a tenant's closed
conversations; the PostgreSQL archive (issue 13) is where the listing and erasure will read and
delete. Until then both say so instead of answering from part of the data."""

from __future__ import annotations

from routing.model import Conversation

from ..ports import Transcripts

_WHY = "cluster mode keeps no archive yet (the PostgreSQL archiver is not built): transcripts and erasure need it"


class RedisTranscripts(Transcripts):
    async def list_conversations(self, tenant: str, *, since_ms: int | None = None, until_ms: int | None = None,
                                 state: str | None = None, agent: str | None = None, limit: int = 100,
                                 after: tuple[int, str] | None = None) -> list[Conversation]:
        raise NotImplementedError(_WHY)

    async def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        raise NotImplementedError(_WHY)

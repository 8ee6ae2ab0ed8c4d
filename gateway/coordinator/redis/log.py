"""ConversationLog on Redis: one stream per conversation, seq = stream id, (sender, client id) -> seq beside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..base import StaleState, idempotency_key
from .commit import GroupCommit
from .errors import available_errors
from .holders import HolderCache


class RedisLog:
    """The `ConversationLog` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    _commit: GroupCommit
    _forget: Callable[[str, str], None]  # drop a conversation's cached state (conversations.py)
    _holders: HolderCache  # who holds each conversation's participants (holders.py)

    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None, *,
                     if_version: int | None = None) -> tuple[int, bool]:
        """Queued for this loop turn's group commit (commit.py); returns once Redis has it."""
        body = {k: v for k, v in entry.items() if k != "seq"}
        keys = [self._ck(tenant, conv_id, "log"), self._ck(tenant, conv_id, "ids"), self._ck(tenant, conv_id, "meta")]
        try:
            seq, dup, hv = await self._commit.append(keys, entry.get("from", ""), client_id, body, if_version)
        except StaleState:
            self._forget(tenant, conv_id)  # the caller reads the state again
            raise
        self._holders.appended((tenant, conv_id), hv, if_version)
        entry["seq"] = seq
        return seq, dup

    @available_errors
    async def seq_of(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        seq = await self.r.hget(self._ck(tenant, conv_id, "ids"), idempotency_key(sender, client_id))
        return None if seq is None else int(seq)

    async def _read(self, tenant: str, conv_id: str, mode: str, at: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        first, _, items = await self._read_s(
            keys=[self._ck(tenant, conv_id, "log"), self._ck(tenant, conv_id, "meta")],
            args=[mode, "" if at is None else at, limit],
        )
        out = []
        for item_id, fields in items:
            e = orjson.loads(fields[1])
            e["seq"] = int(item_id.split(b"-", 1)[0])
            out.append(e)
        if mode == "before":
            out.reverse()
        return out, int(first)

    @available_errors
    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "after", after, limit)

    @available_errors
    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "before", before, limit)

    @available_errors
    async def last_seq(self, tenant: str, conv_id: str) -> int:
        return int(await self.r.hget(self._ck(tenant, conv_id, "meta"), "seq") or 0)

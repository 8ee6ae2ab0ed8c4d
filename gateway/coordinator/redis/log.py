"""ConversationLog on Redis: one stream per conversation, seq = stream id, (sender, client id) -> seq beside it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..base import StaleState, idempotency_key
from ..postgres import PostgresArchive
from .archiver import member
from .commit import GroupCommit, on_disk_calls
from .errors import available_errors
from .holders import HolderCache


class RedisLog:
    """The `ConversationLog` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    _commit: GroupCommit
    _forget: Callable[[str, str], None]  # drop a conversation's cached state (conversations.py)
    _holders: HolderCache  # who holds each conversation's participants (holders.py)
    _archive: PostgresArchive | None  # older entries and moved conversations (archiver.py)
    _archive_every: int
    webhook_tenants: frozenset[str]  # tenants with webhook subscriptions (set by gateway/webhooks_cluster.py)
    _keep: int
    _pipes: Any
    _log_keys: Any  # an LRU of (tenant, conv) -> [log, ids, meta] keys (coordinator.py)
    _touch: Any  # redis_ack = "aof": the touch script on the AOF connections (coordinator.py), else None

    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None, *,
                     if_version: int | None = None) -> tuple[int, bool]:
        """Queued for this loop turn's group commit (commit.py); returns once Redis has it."""
        body = entry if "seq" not in entry else {k: v for k, v in entry.items() if k != "seq"}
        keys = self._log_keys.get((tenant, conv_id))
        if keys is None:
            keys = self._log_keys[(tenant, conv_id)] = [self._ck(tenant, conv_id, p) for p in ("log", "ids", "meta")]
        try:
            seq, dup, hv = await self._commit.append(keys, entry.get("from", ""), client_id, body, if_version)
        except StaleState:
            self._forget(tenant, conv_id)  # the caller reads the state again
            raise
        self._holders.appended((tenant, conv_id), hv, if_version)
        entry["seq"] = seq
        if self._archive is not None and not dup and seq > self._keep and seq % self._archive_every == 0:
            self._archive_later(tenant, conv_id)
        if not dup and tenant in self.webhook_tenants:
            self._webhooks_later(tenant, conv_id)
        return seq, dup

    def _webhooks_later(self, tenant: str, conv_id: str) -> None:
        """Queue the conversation for the webhook senders (gateway/webhooks_cluster.py), not waiting: if
        this node dies first, a sweep finds the conversation (its last seq past a cursor)."""
        key = f"{self._p}:whq"
        # GT: a conversation being sent is queued again (its score moves, so the pass keeps it), one in
        # backoff keeps its later time.
        fut = self._pipes.for_key(key).call("ZADD", key, "GT", int(time.time() * 1000), member(tenant, conv_id))
        fut.add_done_callback(_ignore)

    def _archive_later(self, tenant: str, conv_id: str) -> None:
        """Queue the conversation for the archiver, through the message path's pipe and without
        waiting: if this one is lost, the next `_archive_every` entries ask again."""
        key = self._archive_key()
        fut = self._pipes.for_key(key).call("ZADD", key, int(time.time() * 1000), member(tenant, conv_id))
        fut.add_done_callback(_ignore)

    @available_errors
    async def seq_of(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        """The seq of a stored client id. With `redis_ack = "aof"` only once the AOF has it on disk
        (its first append may still wait for its fsync, or have failed it: the answer is an ack)."""
        seq = await self.r.hget(self._ck(tenant, conv_id, "ids"), idempotency_key(sender, client_id))
        if seq is not None and self._touch is not None:
            await on_disk_calls(self._touch, [([self._ck(tenant, conv_id, "meta")], [])])
        return None if seq is None else int(seq)

    async def _read(self, tenant: str, conv_id: str, mode: str, at: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        first, seq, items = await self._read_s(
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
        first = int(first)
        if self._archive is None or (seq and first <= 1):
            return out, first
        return await self._read_through(tenant, conv_id, mode, at, limit, out, first, int(seq))

    async def _read_through(self, tenant: str, conv_id: str, mode: str, at: int | None, limit: int,
                            hot: list[dict[str, Any]], first: int, seq: int) -> tuple[list[dict[str, Any]], int]:
        """Redis has the entries from `first` on (none at all when `seq` is 0: the conversation was
        moved); the archive has the older ones (docs/archive.md). Joined in seq order."""
        assert self._archive is not None
        if seq == 0:
            old, oldest = await self._archive.read(tenant, conv_id, mode, at, limit)
            return old, oldest or 1
        if mode == "after":
            if (at or 0) + 1 >= first:
                old, oldest = [], await self._archive_first(tenant, conv_id, first)
            else:
                old, oldest = await self._archive.read(tenant, conv_id, "after", at, limit)
            old = [e for e in old if e["seq"] < first]
            return (old + hot)[:limit], oldest or first
        if len(hot) >= limit:
            return hot, await self._archive_first(tenant, conv_id, first)
        top = first if at is None else min(at, first)
        old, oldest = await self._archive.read(tenant, conv_id, "before", top, limit - len(hot))
        return old + hot, oldest or first

    async def _archive_first(self, tenant: str, conv_id: str, first: int) -> int:
        """The oldest seq kept anywhere: the archive's, when it has any."""
        assert self._archive is not None
        _, oldest = await self._archive.read(tenant, conv_id, "after", first, 0)
        return oldest or first

    @available_errors
    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "after", after, limit)

    @available_errors
    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "before", before, limit)

    @available_errors
    async def last_seq(self, tenant: str, conv_id: str) -> int:
        seq = int(await self.r.hget(self._ck(tenant, conv_id, "meta"), "seq") or 0)
        if seq == 0 and self._archive is not None:  # moved to the archive (archiver.py)
            return await self._archive.last_seq(tenant, conv_id)
        return seq


def _ignore(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a lost queueing is made good by the next one

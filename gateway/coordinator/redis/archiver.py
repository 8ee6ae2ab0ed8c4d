"""The archiver: moves conversations from Redis to the PostgreSQL archive (docs/archive.md).

Every node runs one. Work is a sorted set of conversations whose archive copy is behind (keys.py,
`P:archive`, score = when it is due, ms): a node adds a conversation when its state is saved
(created, assigned, transferred, closed) and every `every` entries once its log is longer than the
hot window. A pass takes the due members; a conversation is worked on by the node that holds its
lease (`P:{c:T:C}:archiving`, SET NX PX), so exactly one node archives it at a time; a lease held
by a node seen dead (its heartbeat lapsed) is taken over, and any lease lapses after
LEASE_MS, so a node that dies archiving holds nothing up for long.

Archiving one conversation (each step safe to repeat, so a pass cut short anywhere loses nothing):
1. read its state and last seq from Redis (nothing there: erased, expired or already moved: done);
2. copy the entries past what the archive has, up to the last seq for a closed conversation or up
   to `keep` before it for an open one, with the state, in one transaction per page;
3. trim the stream up to what was copied (XTRIM MINID); the client-id map stays, so a retry of an
   archived message is still acked with its first seq while the conversation is open;
4. a closed conversation stays in Redis `after_ms` past its close (late retries and the `closed`
   event still land there); once that is over, its keys are dropped if no entry came after the copy.
The member leaves the set only if nobody queued it again meanwhile (its score is the one taken).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote

import orjson

from routing.model import Conversation

from ..base import Unavailable
from ..postgres import ArchivedEntry, PostgresArchive
from ..retention import Retention
from .errors import UNREACHABLE
from .keys import q
from .leases import LeaseLost, Leases

log = logging.getLogger("chatgw.archiver")

PAGE = 1000  # entries per transaction
BATCH = 100  # conversations per pass
EXPIRE_EVERY_S = 60.0  # retention in the archive
RETRY_BAD_S = 60  # a conversation whose archiving failed for another reason than an outage

# Drop a closed conversation's keys, unless an entry came after the copy.
_DROP = """
if tonumber(redis.call('HGET', KEYS[4], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""


def member(tenant: str, conv_id: str) -> str:
    """A conversation in the work set: `T:C`, each part percent-encoded (keys.py `q`)."""
    return f"{q(tenant)}:{q(conv_id)}"


def _split(m: bytes | str) -> tuple[str, str]:
    s = m.decode() if isinstance(m, bytes) else m
    t, c = s.split(":", 1)
    return unquote(t), unquote(c)


class Archiver:
    """One node's archiver over `coord` (a RedisCoordinator: its client `r` and key builders) into `archive`."""

    def __init__(self, coord: Any, archive: PostgresArchive, *, keep: int, after_ms: int, poll_s: float,
                 retention: Retention | None):
        self.coord = coord
        self.archive = archive
        self.keep = keep
        self.after_ms = after_ms
        self.poll_s = poll_s
        self.retention = retention
        self.stats = {"archived_conversations": 0, "archived_entries": 0, "dropped": 0, "failures": 0}
        self._last_expire = 0.0
        self.leases = Leases(coord)
        self._drop = coord.r.register_script(_DROP)
        self._wake = asyncio.Event()

    @property
    def key(self) -> str:
        return self.coord._archive_key()

    def wake(self) -> None:
        """Run a pass now (tests, a drain), not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Passes until cancelled; a pass that fails (Redis or PostgreSQL away) is logged and tried again."""
        logged = 0.0
        while True:
            try:
                busy = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure; nothing is lost
                self.stats["failures"] += 1
                busy = 0
                if time.monotonic() - logged > 30:  # once in 30 s while it lasts
                    away = isinstance(e, (Unavailable, *UNREACHABLE))
                    log.log(logging.WARNING if away else logging.ERROR, "archiving delayed (nothing is lost; tried "
                            "again every %.1f s): %s: %s", self.poll_s, type(e).__name__, e, exc_info=not away)
                    logged = time.monotonic()
            if not busy:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass

    async def pass_once(self) -> int:
        """Archive the due conversations (at most BATCH); returns how many this node worked on."""
        now = int(time.time() * 1000)
        due = await self.coord.r.zrangebyscore(self.key, "-inf", now, start=0, num=BATCH, withscores=True)
        worked = 0
        for m, score in due:
            tenant, conv_id = _split(m)
            lease = self.coord._ck(tenant, conv_id, "archiving")
            token = self.leases.token()
            if not await self.leases.take(lease, token):
                continue  # another node has it
            try:
                later = await self.archive_one(tenant, conv_id, lease, token)
            except (Unavailable, *UNREACHABLE):
                raise  # Redis or PostgreSQL away: the whole pass waits
            except LeaseLost:
                continue  # the node that took it over finishes it
            except Exception:  # noqa: BLE001 - one bad conversation must not stop the others
                log.exception("archiving %s/%s failed; tried again in %d s", tenant, conv_id, RETRY_BAD_S)
                later = int(time.time() * 1000) + RETRY_BAD_S * 1000
            finally:
                await self.leases.release(lease, token)
            await self.leases.finish(self.key, m, score, later)
            worked += 1
        if self.retention is not None and self.retention.any() and time.monotonic() - self._last_expire > EXPIRE_EVERY_S:
            await self.expire(now)
        return worked

    async def archive_one(self, tenant: str, conv_id: str, lease: str | None = None, token: str = "") -> int | None:
        """Steps 1-4 above for one conversation, holding `lease` (renewed before each write; LeaseLost
        if another node took it); returns when to look at it again (ms), or None."""
        ck = self.coord._ck
        log_k, ids_k, meta_k, doc_k = (ck(tenant, conv_id, p) for p in ("log", "ids", "meta", "doc"))
        async with self.coord.r.pipeline(transaction=False) as p:  # one slot: the conversation's
            p.get(doc_k)
            p.hmget(meta_k, "ver", "seq", "closed_ms")
            raw, (ver, seq, closed_ms) = await p.execute()
        if raw is None:
            return None
        conv = Conversation.from_dict(orjson.loads(raw))
        seq = int(seq or 0)
        closed = conv.state == "closed"
        upto = seq if closed else seq - self.keep
        have = await self.archive.last_seq(tenant, conv_id)
        copied = 0
        while True:
            start = max(have, copied)
            items = await self.coord.r.xrange(log_k, f"({start}-1", f"{upto}-1", count=PAGE) if start < upto else []
            entries = [ArchivedEntry(int(i.split(b"-", 1)[0]), f.get(b"c", b"").decode(), f[b"e"]) for i, f in items]
            if lease is not None:
                await self.leases.renew(lease, token)
            await self.archive.write(conv, int(ver or 0), entries)  # the state, even with no entry to copy
            if not entries:
                break
            copied = entries[-1].seq
            self.stats["archived_entries"] += len(entries)
        self.stats["archived_conversations"] += 1
        if upto > 0:
            await self.coord.r.xtrim(log_k, minid=f"{upto + 1}-0", approximate=False)
        if not closed:
            return None
        now = int(time.time() * 1000)
        if closed_ms is None:  # closed before this node knew of the archive: its grace starts now
            await self.coord.r.hsetnx(meta_k, "closed_ms", now)
            return now + self.after_ms
        if now < int(closed_ms) + self.after_ms:
            return int(closed_ms) + self.after_ms
        if await self._drop(keys=[doc_k, log_k, ids_k, meta_k], args=[seq]):
            self.stats["dropped"] += 1
            self.coord._forget(tenant, conv_id)
            return None
        return now  # an entry came after the copy: again, now

    async def expire(self, now_ms: int) -> None:
        """Retention in the archive: each tenant's closed conversations past its period are deleted."""
        assert self.retention is not None
        for tenant in await self.archive.tenants():
            horizon = self.retention.horizon_ms(tenant, now_ms)
            if horizon is not None:
                await self.archive.expire(tenant, horizon)
        self._last_expire = time.monotonic()

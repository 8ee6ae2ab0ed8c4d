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
import secrets
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

log = logging.getLogger("chatgw.archiver")

LEASE_MS = 60_000  # a node archiving one conversation takes at most this long, or another takes over
PAGE = 1000  # entries per transaction
BATCH = 100  # conversations per pass
EXPIRE_EVERY_S = 60.0  # retention in the archive
RETRY_BAD_S = 60  # a conversation whose archiving failed for another reason than an outage

# The member leaves only if its score is still the one the pass took (nobody queued it again), or
# is moved to `next` (a closed conversation's drop, later).
_FINISH = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
  return 1
end
return 0
"""
_UNLEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Still ours? Then it lasts another LEASE_MS (a long copy renews it page by page).
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class LeaseLost(Exception):
    """Another node took the conversation (this one stalled past LEASE_MS): stop before writing more."""
# Take over a dead node's lease: only if it still holds it.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# Drop a closed conversation's keys, unless an entry came after the copy.
_DROP = """
if tonumber(redis.call('HGET', KEYS[4], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""


def lease_token(node_id: str, what: str = "") -> str:
    """`node/nonce`: which node holds a conversation's lease, so others can tell when it died."""
    return f"{node_id}/{what or secrets.token_hex(8)}"


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
        self._finish = coord.r.register_script(_FINISH)
        self._unlease = coord.r.register_script(_UNLEASE)
        self._take_over = coord.r.register_script(_TAKE_OVER)
        self._renew = coord.r.register_script(_RENEW)
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
            token = lease_token(self.coord.node_id)
            if not await self._lease(lease, token):
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
                await self._unlease(keys=[lease], args=[token])
            await self._finish(keys=[self.key], args=[m, int(score), "" if later is None else later])
            worked += 1
        if self.retention is not None and self.retention.any() and time.monotonic() - self._last_expire > EXPIRE_EVERY_S:
            await self.expire(now)
        return worked

    async def _lease(self, key: str, token: str) -> bool:
        """Take the conversation's lease: free, or held by a node seen dead (its heartbeat lapsed: it
        died archiving), so the work doesn't wait out LEASE_MS. Not merely one this node hasn't seen
        live yet: a node that started after our last look at the nodes is alive."""
        if await self.coord.r.set(key, token, nx=True, px=LEASE_MS):
            return True
        holder = await self.coord.r.get(key)
        if holder is None or holder.decode().rsplit("/", 1)[0] not in self.coord._dead_nodes:
            return False
        return bool(await self._take_over(keys=[key], args=[holder, token, LEASE_MS]))

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
            if lease is not None and not await self._renew(keys=[lease], args=[token, LEASE_MS]):
                raise LeaseLost(conv_id)
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

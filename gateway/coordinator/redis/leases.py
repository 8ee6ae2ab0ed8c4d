"""Leases and work sets on Redis: one node at a time works on a thing (archiver.py, gateway/webhooks_cluster.py).

A lease is a key whose value is `node/nonce` (SET NX PX), so other nodes can tell who holds it.
One held by a node seen dead (its heartbeat lapsed: presence.py `_dead_nodes`) is taken over with
a compare-and-set, not waited out; a holder renews it before each step of a long piece of work
and stops (LeaseLost) if it is no longer its own. A work set is a sorted set of members due at a
score (ms); `finish` removes a member, or moves it to a later score, only if nobody queued it again
since the pass read it.
"""

from __future__ import annotations

import secrets
from typing import Any

LEASE_MS = 60_000  # a node works on one thing at most this long between renewals, or another takes over

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_FINISH = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
  return 1
end
return 0
"""


class LeaseLost(Exception):
    """Another node took the lease (this one stalled past LEASE_MS): stop before writing more."""


def lease_token(node_id: str, what: str = "") -> str:
    """`node/nonce`: which node holds a lease, so others can tell when it died."""
    return f"{node_id}/{what or secrets.token_hex(8)}"


class Leases:
    """The lease operations over a RedisCoordinator (`coord`: its client `r`, `node_id`, `_dead_nodes`)."""

    def __init__(self, coord: Any, ttl_ms: int = LEASE_MS):
        self.coord, self.ttl_ms = coord, ttl_ms
        r = coord.r
        self._release, self._renew = r.register_script(_RELEASE), r.register_script(_RENEW)
        self._take_over, self._finish = r.register_script(_TAKE_OVER), r.register_script(_FINISH)

    def token(self) -> str:
        return lease_token(self.coord.node_id)

    async def take(self, key: str, token: str) -> bool:
        """Free, or held by a node seen dead (not merely one started after our last look at the nodes)."""
        r = self.coord.r
        if await r.set(key, token, nx=True, px=self.ttl_ms):
            return True
        holder = await r.get(key)
        if holder is None or holder.decode().rsplit("/", 1)[0] not in self.coord._dead_nodes:
            return False
        return bool(await self._take_over(keys=[key], args=[holder, token, self.ttl_ms]))

    async def renew(self, key: str, token: str) -> None:
        """Another `ttl_ms` if it is still ours; LeaseLost if not."""
        if not await self._renew(keys=[key], args=[token, self.ttl_ms]):
            raise LeaseLost(key)

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[key], args=[token])

    async def finish(self, queue: str, member: Any, score: float, later: int | None) -> None:
        """The work set's `member` (read at `score`) leaves it, or waits until `later` (ms)."""
        await self._finish(keys=[queue], args=[member, int(score), "" if later is None else later])

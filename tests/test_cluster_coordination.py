"""Two Redis coordinators (two nodes) on a real Redis and a real Redis Cluster: delivery, presence, node loss."""

from __future__ import annotations

import uuid

import orjson
import pytest

from gateway.coordinator.redis import RedisCoordinator

from .support import wait_for


@pytest.fixture(params=["redis", "redis-cluster"])
async def pair(request):
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    nodes = [
        RedisCoordinator(name, server.url, cluster=request.param == "redis-cluster", prefix=prefix,
                         heartbeat_s=0.1, node_ttl_s=0.5)
        for name in ("node-a", "node-b")
    ]
    for n in nodes:
        await n.start()
    # Each must see the other as live before delivering.
    await wait_for(lambda: all({"node-a", "node-b"} <= n._live_nodes for n in nodes), what="both nodes live")
    yield nodes
    for n in nodes:
        if n.r is not None:
            try:
                await n.close()
            except Exception:  # noqa: BLE001 - a crashed node's client is already closed
                pass


async def test_delivery_goes_only_to_the_node_holding_the_user(pair):
    a, b = pair
    got_b: list = []
    got_a: list = []
    b.on_delivery(lambda t, users, env, encoded: got_b.append((t, users, env)))
    a.on_delivery(lambda t, users, env, encoded: got_a.append((t, users, env)))
    await b.set_present("t", "agent-1", True, "agent")
    assert await a.is_present("t", "agent-1")
    for i in range(20):
        await a.deliver_remote("t", ["agent-1", "nobody"], {"t": "msg", "conv": "c", "seq": i + 1})
    await wait_for(lambda: len(got_b) == 20, what="20 deliveries on node b")
    assert [e["seq"] for _, _, e in got_b] == list(range(1, 21))
    assert all(users == ["agent-1"] for _, users, _ in got_b)
    assert got_a == []
    assert a.stats["delivered_items"] == 20


async def test_an_entry_crosses_nodes_encoded_once(pair):
    """A log entry sent with its JSON arrives as its routing head and those very bytes."""
    a, b = pair
    got: list = []
    b.on_delivery(lambda t, users, env, encoded: got.append((env, encoded)))
    await b.set_present("t", "agent-3", True, "agent")
    entry = {"t": "msg", "conv": "c9", "seq": 7, "id": "x", "from": "v", "role": "visitor", "text": "héllo", "ts": 1}
    encoded = orjson.dumps(entry)
    await a.deliver_remote("t", ["agent-3"], entry, encoded)
    await wait_for(lambda: got, what="the entry on node b")
    assert got == [({"t": "msg", "conv": "c9", "seq": 7}, encoded)]


async def test_queued_deliveries_leave_as_one_publish_per_node(pair):
    a, b = pair
    got: list = []
    b.on_delivery(lambda t, users, env, encoded: got.append(env["seq"]))
    await b.set_present("t", "agent-2", True, "agent")
    before = dict(a.stats)
    # What piles up while a publish is in flight is flushed together: one publish for node b.
    a._outbox["node-b"] = [("t", ["agent-2"], {"t": "msg", "conv": "c", "seq": i}, None) for i in range(1, 51)]
    await a._flush()
    await wait_for(lambda: len(got) == 50, what="50 deliveries")
    assert got == list(range(1, 51))
    assert a.stats["published"] - before["published"] == 1
    assert a.stats["pipelines"] - before["pipelines"] == 1


async def test_presence_counts_nodes(pair):
    a, b = pair
    assert await a.set_present("t", "u", True, "visitor") == 1
    assert await b.set_present("t", "u", True, "visitor") == 2
    assert await a.set_present("t", "u", False, "visitor") == 1
    assert await b.set_present("t", "u", False, "visitor") == 0
    assert not await a.is_present("t", "u")


async def crash(node) -> None:
    """Stop a coordinator without deregistering it, as a killed process would."""
    await node._stop_tasks()
    await node.r.aclose()


async def test_dead_node_is_reaped_and_its_users_reported(pair):
    a, b = pair
    lost: list = []

    async def on_lost(users):
        lost.extend(users)

    a.on_node_lost(on_lost)
    await b.set_present("t", "agent-9", True, "agent")
    await b.set_present("t", "visitor-9", True, "visitor")
    await crash(b)
    await wait_for(lambda: len(lost) == 2, what="node b reaped")
    assert sorted(lost) == [("t", "agent-9", "agent"), ("t", "visitor-9", "visitor")]
    assert not await a.is_present("t", "agent-9")
    assert "node-b" not in a._live_nodes


async def test_health_probe_proves_delivery(pair):
    a, _ = pair
    await a._probe()
    assert (await a.health())["ok"] is True


async def test_stale_lock_holder_cannot_overwrite(pair):
    """Fencing: a holder whose lease ran out and was taken over cannot write the conversation any more."""
    from gateway.coordinator import Conversation, Unavailable

    a, b = pair
    conv = await a.create_conversation(Conversation("c1", "t", "v1", "g"))
    async with a.lock("t", "c1"):
        # a stalls past its lease: the lock key expires (we expire it by hand) and b takes over.
        await a.r.delete(*[k async for k in a.r.scan_iter(match=f"{a._p}:*:lock")]) if not a._cluster else None
        if a._cluster:
            for node_key in [k async for k in _cluster_keys(a, f"{a._p}:*:lock")]:
                await a.r.delete(node_key)
        async with b.lock("t", "c1"):
            conv.state = "assigned"
            await b.save_conversation(conv)
        conv.state = "closed"
        with pytest.raises(Unavailable, match="fencing"):
            await a.save_conversation(conv)
    assert (await a.get_conversation("t", "c1")).state == "assigned"


async def _cluster_keys(coord, pattern):
    for node in coord.r.get_primaries():
        async for k in coord.r.scan_iter(match=pattern, target_nodes=node):
            yield k

"""The contract of each port (gateway/coordinator/ports.py): every implementation must pass these.

Grouped by port; each group runs against the embedded, Redis and Redis Cluster implementations.
The node bus and node loss need several nodes: tests/test_cluster_coordination.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.coordinator import Agent, Conversation, ports
from gateway.coordinator.embedded import EmbeddedCoordinator, Store
from gateway.coordinator.redis import RedisCoordinator

from .support import wait_for

IMPLEMENTATIONS = ["embedded", "embedded-store", "redis", "redis-cluster"]


@pytest.fixture(params=IMPLEMENTATIONS)
async def coord(request, tmp_path):
    if request.param == "embedded":
        c = EmbeddedCoordinator("n1", history_keep=5, lock_segments=8)
    elif request.param == "embedded-store":  # the default: the same dictionaries, written to SQLite
        c = EmbeddedCoordinator("n1", history_keep=5, lock_segments=8, store=Store(tmp_path / "data"))
    else:
        server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
        # A fresh key prefix per test keeps tests apart on the shared server.
        c = RedisCoordinator(f"n-{uuid.uuid4().hex[:6]}", server.url, cluster=request.param == "redis-cluster",
                             history_keep=5, lock_segments=8, prefix=f"t{uuid.uuid4().hex[:8]}")
    await c.start()
    yield c
    await c.close()


def conv(i: str = "c1", tenant: str = "t", visitor: str = "v1", group: str = "g") -> Conversation:
    return Conversation(id=i, tenant=tenant, visitor=visitor, group=group)


def test_every_implementation_provides_every_port(coord):
    for port in (ports.Locks, ports.ConversationState, ports.ConversationLog, ports.AgentsAndQueue,
                 ports.NodeBus, ports.Presence, ports.Supervision):
        assert isinstance(coord, port), port
    # The synchronous fast path is declared, and offered only by a log in this process.
    assert isinstance(coord, ports.SyncLog) == isinstance(coord, EmbeddedCoordinator)


# ConversationLog (and SyncLog where offered)


async def test_append_allocates_gap_free_seq_and_dedups_client_ids(coord):
    await coord.create_conversation(conv())
    seqs = [await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": str(i)}, f"id{i}") for i in range(3)]
    assert seqs == [(1, False), (2, False), (3, False)]
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "again"}, "id1") == (2, True)
    assert await coord.append("t", "c1", {"t": "event"}) == (4, False)
    assert await coord.last_seq("t", "c1") == 4
    assert await coord.seq_of("t", "c1", "v1", "id1") == 2 and await coord.seq_of("t", "c1", "v1", "nope") is None


async def test_appends_in_one_loop_turn_each_get_their_own_answer(coord):
    """Appends issued together (a Redis log commits them as one group): seqs per conversation in
    issue order, a client id repeated within the group answered as a duplicate of the first."""
    for c in ("c1", "c2"):
        await coord.create_conversation(conv(c))
    calls = [coord.append("t", c, {"t": "msg", "from": "v1", "text": f"{c}{i}"}, f"id{i}") for i in range(3) for c in ("c1", "c2")]
    calls.append(coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "again"}, "id0"))
    calls.append(coord.append("t", "c2", {"t": "event"}))
    results = await asyncio.gather(*calls)
    assert results == [(1, False), (1, False), (2, False), (2, False), (3, False), (3, False), (1, True), (4, False)]
    entries, _ = await coord.read_after("t", "c1", 0, 10)
    assert [e["text"] for e in entries] == ["c10", "c11", "c12"]


async def test_state_versions_and_conditional_appends(coord):
    """Created at version 0, another at each save; an append with a stale `if_version` appends nothing."""
    from gateway.coordinator import StaleState

    await coord.create_conversation(conv())
    assert (await coord.get_conversation("t", "c1")).version == 0
    seen = await coord.peek_conversation("t", "c1")
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "a"}, "a", if_version=seen.version) == (1, False)
    c = await coord.get_conversation("t", "c1")
    c.state, c.agent = "assigned", "a1"
    async with coord.lock("t", "c1"):
        await coord.save_conversation(c)
    assert c.version != 0 and (await coord.get_conversation("t", "c1")).version == c.version
    with pytest.raises(StaleState):
        await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "b"}, "b", if_version=0)
    assert await coord.last_seq("t", "c1") == 1 and await coord.seq_of("t", "c1", "v1", "b") is None
    fresh = await coord.peek_conversation("t", "c1")  # a stale copy was dropped: read again
    assert (fresh.version, fresh.agent) == (c.version, "a1")
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "b"}, "b", if_version=c.version) == (2, False)
    async with coord.lock("t", "c1"):
        await coord.save_conversation(c)
    assert c.version not in (0, fresh.version)  # every save a version it never had


async def test_two_senders_reusing_each_others_client_ids_are_two_messages(coord):
    """Issue 10, item 4: the visitor sends id "1", then the agent sends a different id "1"."""
    await coord.create_conversation(conv())
    assert await coord.append("t", "c1", {"t": "event"}) == (1, False)
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "hi"}, "1") == (2, False)
    assert await coord.append("t", "c1", {"t": "msg", "from": "a1", "text": "hello"}, "1") == (3, False)
    # Each sender's retry still finds its own first seq.
    assert await coord.append("t", "c1", {"t": "msg", "from": "a1", "text": "hello"}, "1") == (3, True)
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "hi"}, "1") == (2, True)
    assert await coord.seq_of("t", "c1", "v1", "1") == 2 and await coord.seq_of("t", "c1", "a1", "1") == 3
    # Ids and senders that would run together if simply joined stay apart.
    assert (await coord.append("t", "c1", {"t": "msg", "from": "a", "text": "x"}, "b:c"))[1] is False
    assert (await coord.append("t", "c1", {"t": "msg", "from": "a:b", "text": "x"}, "c"))[1] is False
    entries, _ = await coord.read_after("t", "c1", 0, 10)
    assert [(e.get("from"), e.get("text")) for e in entries[:3]] == [(None, None), ("v1", "hi"), ("a1", "hello")]


async def test_log_retention_is_bounded_and_reports_first(coord, request):
    await coord.create_conversation(conv())
    for i in range(8):
        await coord.append("t", "c1", {"n": i, "from": "v1"}, f"id{i}")
    on_disk = request.node.callspec.params["coord"] == "embedded-store"
    entries, first = await coord.read_after("t", "c1", 0, 100)
    if on_disk:
        # Memory keeps the newest 5 (history_keep); reads past them come from the store, which keeps all.
        assert first == 1 and [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [e["seq"] for e in (await coord.read_after("t", "c1", 1, 2))[0]] == [2, 3]
        assert [e["seq"] for e in (await coord.read_before("t", "c1", 5, 3))[0]] == [2, 3, 4]
    else:
        assert first == 4 and [e["seq"] for e in entries] == [4, 5, 6, 7, 8]
    entries, first = await coord.read_after("t", "c1", 6, 100)
    assert [e["seq"] for e in entries] == [7, 8]
    page, first = await coord.read_before("t", "c1", 7, 2)
    assert [e["seq"] for e in page] == [5, 6]
    # A client id is known while its entry is in memory (the newest history_keep), store or not.
    assert await coord.seq_of("t", "c1", "v1", "id7") == 8 and await coord.seq_of("t", "c1", "v1", "id0") is None
    assert (await coord.append("t", "c1", {"n": 0, "from": "v1"}, "id0"))[1] is False


async def test_sync_log_answers_as_the_log_does(coord):
    if not isinstance(coord, ports.SyncLog):
        pytest.skip("no synchronous fast path: the log is remote")
    await coord.create_conversation(conv())
    seq, dup, packed = coord.append_now("t", "c1", {"t": "msg", "from": "v1", "text": "a"}, "x")
    assert (seq, dup) == (1, False) and b'"seq":1' in packed
    assert await coord.append("t", "c1", {"t": "msg", "from": "v1", "text": "a"}, "x") == (1, True)
    assert coord.append_now("t", "c1", {"t": "msg", "from": "a1", "text": "b"}, "x")[:2] == (2, False)
    assert coord.seq_of_now("t", "c1", "v1", "x") == await coord.seq_of("t", "c1", "v1", "x") == 1
    assert coord.peek_now("t", "c1") == await coord.get_conversation("t", "c1")


async def test_tenants_are_isolated(coord):
    await coord.create_conversation(conv("c1", tenant="a"))
    assert await coord.get_conversation("b", "c1") is None
    assert (await coord.read_after("b", "c1", 0, 10))[0] == []
    assert await coord.open_conversation_of("b", "v1") is None
    assert await coord.open_conversation_of("a", "v1") == "c1"


# AgentsAndQueue


async def test_reserve_respects_capacity_and_least_load(coord):
    await coord.upsert_agent(Agent("t", "a1", ("g",), capacity=2, status="online", connected=True))
    await coord.upsert_agent(Agent("t", "a2", ("g",), capacity=1, status="online", connected=True))
    await coord.upsert_agent(Agent("t", "a3", ("g",), capacity=5, status="away", connected=True))
    got = [await coord.reserve_agent("t", "g") for _ in range(4)]
    assert got == ["a1", "a2", "a1", None]
    assert (await coord.get_agent("t", "a1")).load == 2
    await coord.release_agent("t", "a2")
    assert await coord.reserve_agent("t", "g", prefer="a2") == "a2"
    assert await coord.reserve_agent("t", "other-group") is None


async def test_concurrent_reservations_never_exceed_capacity(coord):
    await coord.upsert_agent(Agent("t", "a1", ("g",), capacity=3, status="online", connected=True))
    got = await asyncio.gather(*[coord.reserve_agent("t", "g") for _ in range(20)])
    assert got.count("a1") == 3 and (await coord.get_agent("t", "a1")).load == 3


async def test_upsert_keeps_load_and_availability_follows_status(coord):
    await coord.upsert_agent(Agent("t", "a1", ("g",), capacity=2, status="online", connected=True))
    assert await coord.reserve_agent("t", "g") == "a1"
    a = await coord.upsert_agent(Agent("t", "a1", ("g",), capacity=2, status="away", connected=True))
    assert a.load == 1 and not a.available
    assert await coord.reserve_agent("t", "g") is None


async def test_queue_is_fifo_with_front_insert(coord):
    for c in ("c1", "c2", "c3"):
        await coord.enqueue("t", "g", c)
    await coord.enqueue("t", "g", "c0", front=True)
    await coord.enqueue("t", "g", "c2")  # already queued: no duplicate
    assert await coord.queue_list("t", "g") == ["c0", "c1", "c2", "c3"]
    assert await coord.queue_remove("t", "g", "c1") is True
    assert await coord.queue_remove("t", "g", "c1") is False
    assert await coord.queue_head("t", "g") == "c0"


# Supervision


async def _set_state(coord, c: Conversation, state: str, agent: str | None = None) -> None:
    c.state, c.agent = state, agent
    async with coord.lock(c.tenant, c.id):
        await coord.save_conversation(c)


async def test_live_view_shows_queues_with_waits_agents_states_and_nodes(coord):
    started = time.monotonic()
    await coord.upsert_agent(Agent("t", "a1", ("g",), capacity=2, status="online", connected=True))
    await coord.upsert_agent(Agent("t", "a2", ("g", "h"), capacity=1, status="away", connected=True))
    await coord.upsert_agent(Agent("u", "a9", ("g",), capacity=3, status="online", connected=True))  # another tenant
    await coord.create_conversation(Conversation("c1", "t", "v1", "g", state="bot", created_ms=1))
    for i, group in ((2, "g"), (3, "g"), (4, "h")):
        await coord.create_conversation(Conversation(f"c{i}", "t", f"v{i}", group, created_ms=1))
        await coord.enqueue("t", group, f"c{i}")
    c5 = await coord.create_conversation(Conversation("c5", "t", "v5", "g", created_ms=1))
    assert await coord.reserve_agent("t", "g") == "a1"
    await _set_state(coord, c5, "assigned", "a1")
    c6 = await coord.create_conversation(Conversation("c6", "t", "v6", "g", created_ms=1))
    await _set_state(coord, c6, "closed")  # closed: counted nowhere

    async def waited_a_while():
        view = await coord.live_view("t")
        return view if view.queues and view.queues[0].waiting[0].waited_ms >= 20 else None

    view = await wait_for(waited_a_while, what="the head's wait to grow")  # waits are time, not a snapshot
    elapsed_ms = (time.monotonic() - started) * 1000 + 5  # clocks: wall (theirs) and monotonic (ours)
    assert [(q.group, q.length, [(w.conv, w.visitor) for w in q.waiting]) for q in view.queues] == [
        ("g", 2, [("c2", "v2"), ("c3", "v3")]), ("h", 1, [("c4", "v4")])]
    g_waits = [w.waited_ms for w in view.queues[0].waiting]
    assert 20 <= g_waits[0] <= elapsed_ms and 0 <= g_waits[1] <= g_waits[0]  # the head has waited longest
    assert view.agents == [Agent("t", "a1", ("g",), 2, "online", True, 1), Agent("t", "a2", ("g", "h"), 1, "away", True, 0)]
    assert view.states == {"bot": 1, "queued": 3, "assigned": 1}
    assert [n.id for n in view.nodes] == [coord.node_id] and 0 <= view.nodes[0].heartbeat_age_ms < 5000
    assert not view.truncated

    # Requeued in front: its wait starts again, below the entries behind it.
    await coord.enqueue("t", "g", "c0", front=True)
    assert await coord.queue_remove("t", "g", "c3") is True
    await _set_state(coord, c5, "closed")
    view = await coord.live_view("t")
    g = view.queues[0]
    assert [w.conv for w in g.waiting] == ["c0", "c2"] and g.waiting[0].waited_ms < g.waiting[1].waited_ms
    assert g.waiting[0].visitor == ""  # c0 has no conversation doc: still listed
    assert view.states == {"bot": 1, "queued": 3, "assigned": 0}  # states are the docs', not the queues'

    other = await coord.live_view("u")  # tenants are isolated
    assert other.queues == [] and [a.id for a in other.agents] == ["a9"]
    assert other.states == {"bot": 0, "queued": 0, "assigned": 0}


async def test_live_view_is_bounded(coord):
    n = ports.LIVE_QUEUED_MAX + 5
    for i in range(n - 10):
        await coord.enqueue("t", "g", f"c{i:04d}")
    for i in range(10):
        await coord.enqueue("t", "h", f"d{i:04d}")
    view = await coord.live_view("t")
    assert view.truncated
    assert [(q.group, q.length, len(q.waiting)) for q in view.queues] == [("g", n - 10, n - 10), ("h", 10, 5)]
    assert [w.conv for w in view.queues[1].waiting] == [f"d{i:04d}" for i in range(5)]


# ConversationState


async def test_conversation_state_and_agent_index(coord):
    c = await coord.create_conversation(conv())
    c.state, c.agent = "assigned", "a1"
    await coord.save_conversation(c)
    assert await coord.conversations_of_agent("t", "a1") == ["c1"]
    c.state = "closed"
    await coord.save_conversation(c)
    assert await coord.conversations_of_agent("t", "a1") == []
    assert await coord.open_conversation_of("t", "v1") is None
    await coord.set_sticky_agent("t", "v1", "a1")
    assert await coord.sticky_agent("t", "v1") == "a1"


# Presence


async def test_presence_counts_this_node(coord):
    assert not await coord.is_present("t", "u1")
    assert await coord.set_present("t", "u1", True, "visitor") == 1
    assert await coord.is_present("t", "u1") and not await coord.is_present("t2", "u1")
    assert await coord.set_present("t", "u1", False, "visitor") == 0
    assert not await coord.is_present("t", "u1")


# Locks


async def test_lock_serialises_holders_of_the_same_key(coord):
    order: list[str] = []
    release = asyncio.Event()
    entered = asyncio.Event()
    trying = asyncio.Event()

    async def holder(name: str) -> None:
        if name == "second":
            trying.set()  # it goes straight on into lock() and waits there before we resume
        async with coord.lock("t", "c1"):
            order.append(name + "+")
            if name == "first":
                entered.set()
                await release.wait()
            order.append(name + "-")

    t1 = asyncio.create_task(holder("first"))
    await entered.wait()
    t2 = asyncio.create_task(holder("second"))
    await trying.wait()
    assert order == ["first+"]  # second is waiting on the lock
    release.set()
    await asyncio.gather(t1, t2)
    assert order == ["first+", "first-", "second+", "second-"]


# Transcripts


async def test_transcripts_list_by_time_state_and_agent_and_erase_a_visitor(coord):
    listing = not isinstance(coord, RedisCoordinator)  # Redis: no archive to list from yet; it says so
    for i, (visitor, ms) in enumerate([("v1", 30), ("v2", 10), ("v1", 20)]):
        c = conv(f"c{i}", visitor=visitor)
        c.created_ms = ms
        await coord.create_conversation(c)
        await coord.append("t", c.id, {"t": "msg", "from": visitor, "text": "hi"}, "m1")
        if i < 2:  # a visitor has one open conversation at a time: close the first two
            c.state, c.agent = "closed", "a1"
            await coord.save_conversation(c)
    if not listing:
        with pytest.raises(NotImplementedError):
            await coord.list_conversations("t")
        with pytest.raises(ValueError, match="open conversation"):
            await coord.erase_visitor("t", "v1")  # c2 is open
        assert await coord.erase_visitor("t", "v2") == ["c1"]
        assert await coord.get_conversation("t", "c1") is None and (await coord.read_after("t", "c1", 0, 10))[0] == []
        assert await coord.get_conversation("t", "c0") is not None
        return
    assert [c.id for c in await coord.list_conversations("t")] == ["c1", "c2", "c0"]
    assert [c.id for c in await coord.list_conversations("t", limit=1, after=(10, "c1"))] == ["c2"]
    assert [c.id for c in await coord.list_conversations("t", since_ms=15, until_ms=30)] == ["c2"]
    assert [c.id for c in await coord.list_conversations("t", state="closed", agent="a1")] == ["c1", "c0"]
    assert await coord.list_conversations("other") == []
    with pytest.raises(ValueError, match="open conversation"):
        await coord.erase_visitor("t", "v1")  # c2 is open
    assert await coord.erase_visitor("t", "v2") == ["c1"]
    assert await coord.get_conversation("t", "c1") is None and (await coord.read_after("t", "c1", 0, 10))[0] == []
    assert [c.id for c in await coord.list_conversations("t")] == ["c2", "c0"]


async def test_a_failing_append_in_a_group_fails_alone_and_claims_no_client_id(coord):
    if not isinstance(coord, RedisCoordinator):
        pytest.skip("a Redis group commit: one script call for several appends")
    await coord.create_conversation(conv("ok"))
    await coord.create_conversation(conv("bad", visitor="v2"))
    await coord.append("t", "bad", {"t": "msg", "from": "v2", "text": "first"}, "b0")
    log_key = coord._ck("t", "bad", "log")
    await coord.r.delete(log_key)
    await coord.r.set(log_key, "not a stream")  # its XADD now fails inside the script
    results = await asyncio.gather(coord.append("t", "ok", {"t": "msg", "from": "v1", "text": "x"}, "o1"),
                                   coord.append("t", "bad", {"t": "msg", "from": "v2", "text": "y"}, "b1"),
                                   return_exceptions=True)  # one loop turn: one script call
    assert results[0] == (1, False)
    assert isinstance(results[1], RuntimeError) and "failed inside Redis" in str(results[1])
    assert await coord.seq_of("t", "bad", "v2", "b1") is None  # not stored, so not claimed
    await coord.r.delete(log_key)
    assert await coord.append("t", "bad", {"t": "msg", "from": "v2", "text": "y"}, "b1") == (2, False)


async def test_appends_within_the_commit_interval_leave_together_and_a_lone_one_at_once(coord):
    """docs/cluster.md, step 2a. An hour's interval makes "waits for the interval" observable without
    a clock: the first append returns (it did not wait an hour); the ones after it, each from its own
    loop turn, are all still queued until `flush`, then leave in one call, in order."""
    if not isinstance(coord, RedisCoordinator):
        pytest.skip("a Redis group commit")
    from gateway.coordinator.redis.commit import GroupCommit

    await coord.create_conversation(conv("c1"))
    stats: dict[str, int] = {}
    commit = GroupCommit(coord._commit._call, 0, coord._commit._slot_of, stats, interval_s=3600)
    keys = [coord._ck("t", "c1", k) for k in ("log", "ids", "meta")]
    assert (await commit.append(keys, "v1", "m0", {"t": "msg", "text": "lone"}))[:2] == (1, False)
    assert stats["commit_batches"] == 1
    waiting = []
    for i in range(1, 6):
        waiting.append(asyncio.ensure_future(commit.append(keys, "v1", f"m{i}", {"t": "msg", "text": str(i)})))
        await asyncio.sleep(0)  # each from its own loop turn
    await asyncio.sleep(0)
    assert stats["commit_batches"] == 1 and not any(w.done() for w in waiting)
    commit.flush()
    assert [seq for seq, _, _ in await asyncio.gather(*waiting)] == [2, 3, 4, 5, 6]
    assert stats == {"commit_batches": 2, "commit_appends": 6}


# ApiKeys

async def test_api_keys_are_kept_by_tenant_and_revoked(coord):
    from gateway import api_keys

    token, key = api_keys.mint("t", "crm", ["messages:write"])
    _, other = api_keys.mint("u", "crm", ["conversations:read"])
    await coord.save_api_key(key)
    await coord.save_api_key(other)
    got = await coord.api_key(key.id)
    assert got == key and api_keys.matches(got, api_keys.parse(token)[1])
    assert not api_keys.matches(got, "not-the-secret")
    assert [k.id for k in await coord.api_keys("t")] == [key.id]
    assert not await coord.delete_api_key("t", other.id)  # another tenant's: as if it did not exist
    assert await coord.api_key(other.id) == other
    assert await coord.delete_api_key("t", key.id)
    assert await coord.api_key(key.id) is None and await coord.api_keys("t") == []


# Contacts

async def test_contacts_are_kept_per_tenant_and_channel(coord):
    assert await coord.contact("t", "telegram", "42") is None
    await coord.save_contact("t", "telegram", "42", {"visitor": "v1", "conv": None, "seq": 0})
    await coord.save_contact("t", "http", "42", {"visitor": "v2", "conv": None, "seq": 0})
    await coord.save_contact("u", "telegram", "42", {"visitor": "v3", "conv": None, "seq": 0})
    await coord.save_contact("t", "telegram", "42", {"visitor": "v1", "conv": "c1", "seq": 7})
    assert await coord.contact("t", "telegram", "42") == {"visitor": "v1", "conv": "c1", "seq": 7}
    assert await coord.contacts("t", "telegram") == {"42": {"visitor": "v1", "conv": "c1", "seq": 7}}
    assert (await coord.contact("t", "http", "42"))["visitor"] == "v2"

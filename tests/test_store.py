"""The embedded default keeps its state on disk (gateway/coordinator/embedded/store.py, docs/store.md).

Real node processes on real SQLite files: SIGKILL in the middle of traffic and start again on the
same directory; one directory per node; an embedded node refuses a port in use; a database that
can't be read stops the node at start; a full store answers `unavailable` and acks nothing it could
not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import urllib.request

import orjson
import pytest

from gateway.coordinator import Conversation, Unavailable
from gateway.coordinator.embedded import EmbeddedCoordinator, Store, StoreError

from .support import Client, start_gateway, uid, wait_for


def _serve(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m gateway serve` that is expected to refuse to start: its exit status and output."""
    env = {**os.environ, "GATEWAY_HTTP_PORT": "0", "GATEWAY_WS_PORT": "0", "GATEWAY_BOTS_ENABLED": "false", **env_extra}
    return subprocess.run([sys.executable, "-m", "gateway", "serve"], env=env, cwd="/", capture_output=True,
                          text=True, timeout=60)


@contextlib.asynccontextmanager
async def _coordinator(data, **kw):
    """An embedded coordinator on a store in `data`, started and closed around the block."""
    store = Store(data, max_bytes=kw.pop("max_bytes", 0))  # the rest go to the coordinator
    c = EmbeddedCoordinator("n1", store=store, **kw)
    await c.start()
    try:
        yield c, store
    finally:
        await c.close()


def _admin(gw, path: str) -> dict:
    req = urllib.request.Request(f"{gw.http_url}{path}", headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())


async def _history(v: Client, conv: str) -> list[dict]:
    """The whole log of `conv` as `v` may read it, paged back 100 at a time."""
    out: list[dict] = []
    before = None
    while True:
        req = {"t": "history", "conv": conv, "limit": 100, **({"before": before} if before else {})}
        page = (await v.request(req, "history"))["msgs"]
        out = page + out
        if not page or page[0]["seq"] == 1:
            return out
        before = page[0]["seq"]


@pytest.mark.parametrize("mode", ["embedded", "cluster-archive"])
async def test_sigkill_in_the_middle_of_traffic_loses_no_acked_message(request, tmp_path, mode):
    """Embedded: the node's SQLite store. cluster-archive: a node over Redis (the hot log: 50
    entries) with the PostgreSQL archiver moving the rest while the traffic runs."""
    fast = {"rate_per_s": 100_000, "rate_burst": 100_000}  # the visitors send as fast as they can
    if mode == "embedded":
        where = {"data_dir": str(tmp_path / "data")}
    else:
        where = {"coordinator": "redis", "redis_url": request.getfixturevalue("redis_server").url,
                 "archive_url": request.getfixturevalue("archive_url"), "history_keep": 50, "archive_poll_s": 0.05}
    gw = start_gateway(**where, **fast)
    secret = gw.secret
    tenant, agent_id = uid("t"), uid("agent")
    per_visitor = 1000
    try:
        agent = await Client.connect(gw, "agent", agent_id, tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 2}, "status")
        visitors, convs = [], []
        for _ in range(4):  # two assigned to the agent (capacity 2), two waiting in the queue, in order
            v = await Client.connect(gw, "visitor", uid("v"), tenant)
            convs.append((await v.request({"t": "open"}, "conv"))["conv"])
            visitors.append(v)
        await agent.next("assigned", lambda e: e["conv"] == convs[1])
        queue_before = _admin(gw, f"/admin/tenants/{tenant}/queues/default")["queue"]
        assert queue_before == convs[2:]
        # Every visitor keeps sending (at most 20 ahead of its acks) until the node is killed, once
        # 200 acks are back in all.
        sent = dict.fromkeys(convs, 0)

        def acked(v: Client) -> list[dict]:
            return [e for e in v.seen if e.get("t") == "ack"]

        async def keep_sending(v: Client, c: str) -> None:
            try:
                for i in range(per_visitor):
                    if i - len(acked(v)) >= 20:
                        await wait_for(lambda i=i: i - len(acked(v)) < 20, what="room in the send window")
                    await v.send({"t": "msg", "conv": c, "id": f"m{i}", "text": f"{c} {i}"})
                    sent[c] = i + 1
            except Exception:  # noqa: BLE001 - the connection died with the node
                pass

        senders = [asyncio.create_task(keep_sending(v, c)) for v, c in zip(visitors, convs, strict=True)]
        await wait_for(lambda: sum(len(acked(v)) for v in visitors) >= 200, what="200 acks")
        if mode == "cluster-archive":  # the archiver has moved entries out of Redis before the kill
            await wait_for(lambda: (_admin(gw, "/admin/stats")["hub"]["coordinator"].get("archived_entries", 0) > 0),
                           what="entries archived")
        gw.proc.kill()
        gw.proc.wait()
        for v in visitors:
            await v.closed
        for t in senders:
            t.cancel()
        acks = {(e["conv"], e["id"]): e["seq"] for v in visitors for e in acked(v)}
        assert 200 <= len(acks) < sum(sent.values()) + 1 and sum(sent.values()) < per_visitor * len(visitors)
    finally:
        gw.stop()

    gw = start_gateway(**where, jwt_secret=secret, **fast)
    try:
        names = [v.welcome["user"] for v in visitors]
        for name, c in zip(names, convs, strict=True):
            v = await Client.connect(gw, "visitor", name, tenant)
            assert [x["conv"] if isinstance(x, dict) else x for x in v.welcome["convs"]] == [c]
            hist = await _history(v, c)
            msgs = [e for e in hist if e["t"] == "msg"]
            ids = [e["id"] for e in msgs]
            assert len(ids) == len(set(ids))  # nothing twice
            for (ac, cid), seq in acks.items():  # every acked message, at its seq
                if ac == c:
                    assert any(e["id"] == cid and e["seq"] == seq for e in msgs), (c, cid, seq)
            seqs = [e["seq"] for e in hist]
            assert seqs == list(range(1, len(seqs) + 1))  # no gap
            last = seqs[-1]
            # The client sends everything again: the acked get their first seq, the rest are taken once.
            replies = [await v.msg(c, f"{c} {i}", cid=f"m{i}") for i in range(sent[c])]
            for i, r in enumerate(replies):
                if (c, f"m{i}") in acks:
                    assert r["dup"] and r["seq"] == acks[(c, f"m{i}")]
            new = sorted(r["seq"] for r in replies if not r["dup"])
            assert new == list(range(last + 1, last + 1 + len(new)))  # the seqs go on
            hist = await _history(v, c)
            assert sorted(e["id"] for e in hist if e["t"] == "msg") == sorted(f"m{i}" for i in range(sent[c]))
            if mode == "cluster-archive":  # the history is split between Redis and the archive
                import redis

                # A lease the killed node held is taken over once its heartbeat lapses (node_ttl_s).
                r, key, last = redis.Redis.from_url(where["redis_url"]), f"cg:{{c:{tenant}:{c}}}:log", hist[-1]["seq"]
                await wait_for(lambda r=r, key=key, last=last: r.xlen(key) < last, what="entries archived")
                r.close()
                assert await _history(v, c) == hist
            await v.close()
        # Assignments and the queue are back.
        agent = await Client.connect(gw, "agent", agent_id, tenant)
        held = sorted(x["conv"] if isinstance(x, dict) else x for x in agent.welcome["convs"])
        assert held == sorted(convs[:2])
        assert _admin(gw, f"/admin/tenants/{tenant}/queues/default")["queue"] == queue_before
    finally:
        gw.stop()


def test_a_second_node_on_the_same_data_dir_refuses_to_start(tmp_path):
    gw = start_gateway(data_dir=str(tmp_path / "data"))
    try:
        out = _serve({"GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_LOG_LEVEL": "warning"})
        assert out.returncode == 1
        assert "in use by another node" in out.stderr
        assert gw.alive()
    finally:
        gw.stop()


def test_an_embedded_node_refuses_a_port_in_use(tmp_path):
    gw = start_gateway()
    try:
        out = _serve({"GATEWAY_DATA_DIR": str(tmp_path / "other"), "GATEWAY_WS_PORT": str(gw.ws_port)})
        assert out.returncode == 1
        assert "can't start" in out.stderr and str(gw.ws_port) in out.stderr
    finally:
        gw.stop()


def test_an_unreadable_database_stops_the_node_at_start(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "chatgw.sqlite3").write_bytes(b"this is not a database" * 200)
    out = _serve({"GATEWAY_DATA_DIR": str(data)})
    assert out.returncode == 1
    assert "can't be read" in out.stderr and "chatgw.sqlite3" in out.stderr


async def test_a_full_store_acks_nothing_it_could_not_write(tmp_path):
    # A store at its size limit fails its writes with SQLITE_FULL, as a full disk does.
    async with _coordinator(tmp_path / "data", max_bytes=64 * 1024) as (c, store):
        await c.create_conversation(Conversation(id="c1", tenant="t", visitor="v", group="g"))
        stored: list[int] = []
        with pytest.raises(Unavailable, match="store can't write"):
            for i in range(10_000):
                seq, _ = await c.append("t", "c1", {"t": "msg", "from": "v", "text": "x" * 200}, f"id{i}")
                stored.append(seq)
        # What failed was taken back: the log ends at the last acked entry, and the same entry goes in
        # once there is room (here: after the limit is lifted). The memory budget's count too.
        assert await c.last_seq("t", "c1") == stored[-1]
        assert c._log_bytes == sum(log.nbytes for log in c._logs.values())
        store._db.execute("PRAGMA max_page_count = 1000000")
        seq, dup = await c.append("t", "c1", {"t": "msg", "from": "v", "text": "again"}, f"id{len(stored)}")
        assert (seq, dup) == (stored[-1] + 1, False)
    async with _coordinator(tmp_path / "data") as (again, _):  # everything acked is on disk
        entries, _ = await again.read_after("t", "c1", 0, 100_000)
        assert [e["seq"] for e in entries] == list(range(1, stored[-1] + 2))


async def test_a_store_is_read_back_as_it_was_written(tmp_path):
    c = EmbeddedCoordinator("n1", store=Store(tmp_path / "data"), history_keep=3)
    await c.start()
    await c.create_conversation(Conversation(id="c1", tenant="t", visitor="v", group="g"))
    await c.create_conversation(Conversation(id="c2", tenant="t", visitor="w", group="g"))
    for i in range(5):
        await c.append("t", "c1", {"t": "msg", "from": "v", "n": i}, f"id{i}")
    await c.enqueue("t", "g", "c2")
    await c.enqueue("t", "g", "c1", front=True)
    await c.set_sticky_agent("t", "v", "a1")
    held = Store(tmp_path / "data")
    with pytest.raises(StoreError, match="in use by another node"):
        held.open(3)  # c still holds the directory
    await c.close()
    again = EmbeddedCoordinator("n1", store=Store(tmp_path / "data"), history_keep=3)
    await again.start()
    try:
        assert (await again.get_conversation("t", "c1")).visitor == "v"
        assert await again.open_conversation_of("t", "w") == "c2"
        assert await again.queue_list("t", "g") == ["c1", "c2"]
        assert await again.sticky_agent("t", "v") == "a1"
        assert await again.last_seq("t", "c1") == 5
        # Client ids come back with the entries memory keeps (the newest 3 here: ids 2-4).
        assert (await again.append("t", "c1", {"t": "msg", "from": "v"}, "id4")) == (5, True)
        assert (await again.append("t", "c1", {"t": "msg", "from": "v"}, "id5")) == (6, False)
        assert [e["seq"] for e in (await again.read_after("t", "c1", 0, 10))[0]] == [1, 2, 3, 4, 5, 6]
    finally:
        await again.close()


async def test_a_closed_conversation_leaves_memory_and_the_store_answers_for_it(tmp_path):
    c = EmbeddedCoordinator("n1", store=Store(tmp_path / "data"), history_keep=3)
    await c.start()
    try:
        conv = Conversation(id="c1", tenant="t", visitor="v", group="g")
        await c.create_conversation(conv)
        for i in range(5):
            await c.append("t", "c1", {"t": "msg", "from": "v", "n": i}, f"id{i}")
        conv = await c.get_conversation("t", "c1")
        conv.state = "closed"
        await c.save_conversation(conv)
        assert c.evict_closed(3600) == 0  # closed just now: kept (a retry still finds its client id)
        assert await c.seq_of("t", "c1", "v", "id4") == 5
        assert c.evict_closed(0) == 1
        assert ("t", "c1") not in c._convs and ("t", "c1") not in c._logs  # out of memory
        # ...and still answered: state, seqs, history, and an entry appended after (its seq goes on).
        assert (await c.get_conversation("t", "c1")).state == "closed"
        assert await c.last_seq("t", "c1") == 5
        assert [e["n"] for e in (await c.read_before("t", "c1", None, 10))[0]] == [0, 1, 2, 3, 4]
        assert (await c.append("t", "c1", {"t": "event", "ev": "late"})) == (6, False)
        assert (await c.append("t", "c1", {"t": "event", "ev": "later"})) == (7, False)
        assert ("t", "c1") not in c._logs  # written, and gone again
        assert [e["seq"] for e in (await c.read_after("t", "c1", 4, 10))[0]] == [5, 6, 7]
    finally:
        await c.close()


@pytest.mark.parametrize("with_store", [True, False])
async def test_retention_deletes_closed_conversations_past_their_tenants_period(tmp_path, with_store):
    from gateway.coordinator.embedded import Retention

    day = 86_400_000
    now = 100 * day
    store = Store(tmp_path / "data") if with_store else None
    c = EmbeddedCoordinator("n1", store=store, retention=Retention(30, {"short": 1, "forever": 0}))
    await c.start()
    try:
        # (tenant, id, visitor, opened days ago, closed?)
        plan = [("t", "old-closed", "v1", 40, True), ("t", "old-open", "v2", 40, False),
                ("t", "new-closed", "v3", 10, True), ("short", "s-closed", "v1", 2, True),
                ("short", "s-fresh", "v2", 0.5, True), ("forever", "f-closed", "v1", 400, True)]
        for tenant, conv_id, visitor, ago, closed in plan:
            conv = Conversation(id=conv_id, tenant=tenant, visitor=visitor, group="g", created_ms=now - int(ago * day))
            await c.create_conversation(conv)
            await c.append(tenant, conv_id, {"t": "msg", "from": visitor, "text": "x"}, "m1")
            if closed:
                conv.state = "closed"
                await c.save_conversation(conv)
        assert sorted(c.expire(now)) == [("short", "s-closed"), ("t", "old-closed")]
        for tenant, conv_id, *_ in plan:
            gone = (tenant, conv_id) in {("short", "s-closed"), ("t", "old-closed")}
            assert (await c.get_conversation(tenant, conv_id) is None) == gone, conv_id
            assert ((await c.read_after(tenant, conv_id, 0, 10))[0] == []) == gone, conv_id
        assert c.expire(now) == []  # nothing twice
    finally:
        await c.close()


async def test_an_entry_is_not_read_before_its_commit_and_never_after_a_failed_one(tmp_path):
    async with _coordinator(tmp_path / "data", max_bytes=64 * 1024) as (c, store):
        await c.create_conversation(Conversation(id="c1", tenant="t", visitor="v", group="g"))
        seq, _, _ = c.append_now("t", "c1", {"t": "msg", "from": "v", "text": "a"}, "a")
        # Same loop turn, not committed yet: no read shows it, and it is nobody's last seq.
        assert (await c.read_after("t", "c1", 0, 10))[0] == [] and await c.last_seq("t", "c1") == 0
        assert (await c.read_before("t", "c1", None, 10))[0] == []
        store.commit()
        assert [e["seq"] for e in (await c.read_after("t", "c1", 0, 10))[0]] == [seq] == [1]
        # A commit that fails: the entry was never readable, and is gone.
        store._db.execute("PRAGMA max_page_count = 1")
        c.append_now("t", "c1", {"t": "msg", "from": "v", "text": "b" * 100_000}, "b")
        assert [e["seq"] for e in (await c.read_after("t", "c1", 0, 10))[0]] == [1]
        store.commit()
        assert [e["seq"] for e in (await c.read_after("t", "c1", 0, 10))[0]] == [1] and await c.last_seq("t", "c1") == 1
        store._db.execute("PRAGMA max_page_count = 1000000")  # room for the close to commit


async def test_log_memory_stays_within_its_byte_budget_and_reads_go_to_the_store(tmp_path):
    """`memory_budget_mb`: past three quarters of it the oldest conversations' committed entries leave memory;
    every entry is still read back, in order, from memory and the store together."""
    budget = 40_000
    async with _coordinator(tmp_path / "data", memory_budget_bytes=budget) as (c, _):
        convs = [f"c{i}" for i in range(20)]
        for conv in convs:
            await c.create_conversation(Conversation(id=conv, tenant="t", visitor=f"v{conv}", group="g"))
        for n in range(30):
            for conv in convs:  # 600 entries of about 150 bytes: about twice the budget
                await c.append("t", conv, {"t": "msg", "from": f"v{conv}", "text": f"{conv} {n} " + "x" * 80}, f"m{n}")
                assert c._log_bytes <= budget * 3 // 4
                assert c._log_bytes == sum(log.nbytes == sum(map(len, log.entries)) and log.nbytes
                                           for log in c._logs.values())
        assert c.budget_sheds > 0
        assert sum(len(c._logs[("t", conv)].entries) for conv in convs) < 400  # of 600 written
        for conv in convs:
            entries, first = await c.read_after("t", conv, 0, 1000)
            assert first == 1 and [e["text"].split()[:2] for e in entries] == [[conv, str(n)] for n in range(30)]
            back, _ = await c.read_before("t", conv, None, 7)
            assert [e["seq"] for e in back] == list(range(24, 31))
            # A retry is still answered with its first seq, in memory or not.
            assert await c.append("t", conv, {"t": "msg", "from": f"v{conv}", "text": "again"}, "m3") == (4, True)


async def test_closed_conversations_kept_for_retries_stay_within_a_quarter_of_the_budget(tmp_path):
    budget = 200_000
    async with _coordinator(tmp_path / "data", memory_budget_bytes=budget) as (c, _):
        for i in range(200):
            conv = Conversation(id=f"c{i}", tenant="t", visitor=f"v{i}", group="g")
            await c.create_conversation(conv)
            for m in range(5):
                await c.append("t", conv.id, {"t": "msg", "from": conv.visitor, "text": "x"}, f"m{m}")
            conv.state = "closed"
            await c.save_conversation(conv)
            assert c._closed_bytes <= budget // 4
        kept = [key for _, key, _ in c._closed]
        assert 0 < len(kept) < 200 and kept[-1] == ("t", "c199")  # the newest are kept
        assert c._closed_bytes == sum(cost for *_, cost in c._closed)
        # A retry into a kept one is answered with its first seq; every log is read back whole.
        assert await c.append("t", "c199", {"t": "msg", "from": "v199", "text": "x"}, "m2") == (3, True)
        for i in (0, 199):
            entries, _ = await c.read_after("t", f"c{i}", 0, 100)
            assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]


async def test_erasing_a_visitor_takes_their_contacts_and_unsent_webhook_events_too(tmp_path):
    async with _coordinator(tmp_path / "data") as (c, store):
        store.subscribers = lambda tenant, body: [("crm", "message.created")]  # a subscription wants every entry
        await c.create_conversation(Conversation(id="c1", tenant="t", visitor="v", group="g"))
        await c.append("t", "c1", {"t": "msg", "from": "v", "text": "my address"}, "m1")
        await c.save_contact("t", "tg", "777", {"visitor": "v", "conv": "c1", "seq": 0})
        await c.save_contact("t", "tg", "888", {"visitor": "someone else", "conv": None, "seq": 0})
        conv = await c.get_conversation("t", "c1")
        conv.state = "closed"
        await c.save_conversation(conv)
        store.commit()
        assert store.outbox_due("crm", 2**62, 10)
        assert await c.erase_visitor("t", "v") == ["c1"]
        assert store.outbox_due("crm", 2**62, 10) == [] and store.dead_letters("t") == []
        assert await c.contact("t", "tg", "777") is None and await c.contact("t", "tg", "888") is not None
    async with _coordinator(tmp_path / "data") as (again, _):  # and on disk
        assert await again.contact("t", "tg", "777") is None

"""Transcripts out and a visitor's data erased (gateway/transcripts_http.py, docs/store.md), on real nodes."""

from __future__ import annotations

import csv
import io
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis

from .support import Client, start_gateway, uid, wait_for


def _http(gw, method: str, path: str) -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"{gw.http_url}{path}", method=method,
                                 headers={"Authorization": f"Bearer {gw.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _json(gw, path: str) -> dict:
    status, body, _ = _http(gw, "GET", path)
    assert status == 200, body
    return orjson.loads(body)


async def _close(v: Client, conv: str) -> None:
    await v.send({"t": "close", "conv": conv})
    await v.next("event", lambda e: e["conv"] == conv and e["ev"] == "closed")


async def _chat(gw, tenant: str, agent: Client, text: str) -> tuple[Client, str]:
    v = await Client.connect(gw, "visitor", uid("v"), tenant)
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    await agent.next("assigned", lambda e: e["conv"] == conv)
    await v.msg(conv, text)
    await agent.msg(conv, f"re: {text}")
    return v, conv


async def test_listing_pages_and_filters_and_a_transcript_comes_as_json_and_csv(tmp_path):
    gw = start_gateway(data_dir=str(tmp_path / "data"))
    try:
        tenant = uid("t")
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 10}, "status")
        convs = []
        for i in range(5):
            v, conv = await _chat(gw, tenant, agent, f"question {i}, with a comma")
            convs.append(conv)
            if i < 2:
                await _close(v, conv)
        # All five, two per page, in creation order; the cursor carries on exactly where the page ended.
        seen, after = [], ""
        while True:
            page = _json(gw, f"/admin/tenants/{tenant}/conversations?limit=2{after}")
            seen += [c["id"] for c in page["conversations"]]
            if not page["next"]:
                break
            after = f"&after={page['next']}"
        assert seen == convs
        closed = _json(gw, f"/admin/tenants/{tenant}/conversations?state=closed")["conversations"]
        assert [c["id"] for c in closed] == convs[:2]
        assert [c["id"] for c in _json(gw, f"/admin/tenants/{tenant}/conversations?agent=ann&state=assigned")
                ["conversations"]] == convs[2:]
        assert _json(gw, f"/admin/tenants/{tenant}/conversations?agent=nobody")["conversations"] == []
        first = _json(gw, f"/admin/tenants/{tenant}/conversations?limit=1")["conversations"][0]
        assert _json(gw, f"/admin/tenants/{tenant}/conversations?until={first['created_ms']}")["conversations"] == []
        assert _json(gw, f"/admin/tenants/{uid('other')}/conversations")["conversations"] == []
        # Bad parameters are refused with the reason.
        status, body, _ = _http(gw, "GET", f"/admin/tenants/{tenant}/conversations?state=sleeping")
        assert status == 400 and b"state must be one of" in body
        status, body, _ = _http(gw, "GET", f"/admin/tenants/{tenant}/conversations?after=garbage")
        assert status == 400 and b"cursor" in body

        t = _json(gw, f"/admin/tenants/{tenant}/conversations/{convs[0]}/transcript")
        texts = [e["text"] for e in t["entries"] if e["t"] == "msg"]
        assert texts == ["question 0, with a comma", "re: question 0, with a comma"]
        assert t["conversation"]["state"] == "closed"
        assert [e["seq"] for e in t["entries"]] == list(range(1, len(t["entries"]) + 1))
        status, body, ctype = _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{convs[0]}/transcript?format=csv")
        assert status == 200 and ctype.startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(r["t"], r["from"], r["text"]) for r in rows if r["t"] == "msg"] == [
            ("msg", t["entries"][i]["from"], text) for i, text in
            [(i, e["text"]) for i, e in enumerate(t["entries"]) if e["t"] == "msg"]]
        assert [int(r["seq"]) for r in rows] == [e["seq"] for e in t["entries"]]
        status, _, _ = _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/nope/transcript")
        assert status == 404
    finally:
        gw.stop()


async def test_erasing_a_visitor_leaves_nothing_of_it_in_memory_or_in_the_files(tmp_path):
    data = tmp_path / "data"
    gw = start_gateway(data_dir=str(data))
    try:
        tenant = uid("t")
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 10}, "status")
        marker = "ERASE-ME-" + uid("secret")
        v, conv = await _chat(gw, tenant, agent, f"my address is {marker}")
        keep_v, keep_conv = await _chat(gw, tenant, agent, "someone else's question")
        name = v.welcome["user"]
        # Not while the conversation is open.
        status, body, _ = _http(gw, "DELETE", f"/admin/tenants/{tenant}/visitors/{name}")
        assert status == 409 and b"open conversation" in body
        await _close(v, conv)
        files = [p for p in data.iterdir() if p.name.startswith("chatgw.sqlite3")]
        assert any(marker.encode() in p.read_bytes() for p in files)  # it was on disk
        status, body, _ = _http(gw, "DELETE", f"/admin/tenants/{tenant}/visitors/{name}")
        assert status == 200 and orjson.loads(body) == {"erased": [conv]}
        # Memory: the node knows nothing of it.
        assert _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{conv}")[0] == 404
        assert _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{conv}/transcript")[0] == 404
        listed = [c["id"] for c in _json(gw, f"/admin/tenants/{tenant}/conversations")["conversations"]]
        assert listed == [keep_conv]
        v2 = await Client.connect(gw, "visitor", name, tenant)
        assert v2.welcome["convs"] == []
        err = await v2.request({"t": "history", "conv": conv}, "error")
        assert err["code"] in ("not_participant", "not_found")
        # The files: not in the database, its WAL or anything else in the directory.
        for p in data.iterdir():
            assert marker.encode() not in p.read_bytes(), p.name
        # Everyone else's is untouched.
        t = _json(gw, f"/admin/tenants/{tenant}/conversations/{keep_conv}/transcript")
        assert "someone else's question" in [e.get("text") for e in t["entries"]]
    finally:
        gw.stop()
    # And after a restart on the same directory, still nothing.
    gw = start_gateway(data_dir=str(data))
    try:
        assert _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{conv}")[0] == 404
        for p in Path(data).iterdir():
            assert marker.encode() not in p.read_bytes(), p.name
    finally:
        gw.stop()


@pytest.mark.parametrize("data_dir", ["none"])
async def test_a_memory_only_node_lists_and_erases_from_memory(data_dir):
    gw = start_gateway(data_dir=data_dir)
    try:
        tenant = uid("t")
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 10}, "status")
        v, conv = await _chat(gw, tenant, agent, "hello")
        assert [c["id"] for c in _json(gw, f"/admin/tenants/{tenant}/conversations")["conversations"]] == [conv]
        await _close(v, conv)
        status, body, _ = _http(gw, "DELETE", f"/admin/tenants/{tenant}/visitors/{v.welcome['user']}")
        assert status == 200 and orjson.loads(body) == {"erased": [conv]}
        assert _json(gw, f"/admin/tenants/{tenant}/conversations")["conversations"] == []
    finally:
        gw.stop()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_cluster_mode_erases_a_visitor_everywhere_and_says_it_has_no_listing_without_an_archive(request, kind):
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    secret = secrets.token_urlsafe(32)
    settings = dict(coordinator="redis", redis_url=server.url, redis_cluster=str(kind == "redis-cluster").lower(),
                    jwt_secret=secret)
    a_node, b_node = start_gateway(**settings), start_gateway(**settings)
    try:
        status, body, _ = _http(a_node, "GET", "/admin/tenants/t/conversations")
        assert status == 501 and b"none is configured (archive_url)" in body
        tenant = uid("t")
        agent = await Client.connect(b_node, "agent", "ann", tenant)  # on the other node
        await agent.request({"t": "status", "status": "online", "capacity": 10}, "status")
        marker = "ERASE-ME-" + uid("secret")
        v, conv = await _chat(a_node, tenant, agent, f"my address is {marker}")
        _, keep_conv = await _chat(a_node, tenant, agent, "someone else's question")
        name = v.welcome["user"]
        assert _http(b_node, "GET", f"/admin/tenants/{tenant}/conversations/{conv}")[0] == 200  # B has it
        status, body, _ = _http(a_node, "DELETE", f"/admin/tenants/{tenant}/visitors/{name}")
        assert status == 409
        await _close(v, conv)
        await v.close()  # gone: its presence (who holds it) leaves Redis with its last connection
        r = redis.Redis.from_url(server.url) if kind == "redis" else redis.RedisCluster.from_url(server.url)
        await wait_for(lambda: not [k for k in r.scan_iter(match="*{p:*", count=1000) if name.encode() in k],
                       what="the visitor's presence gone")
        status, body, _ = _http(a_node, "DELETE", f"/admin/tenants/{tenant}/visitors/{name}")
        assert status == 200 and orjson.loads(body) == {"erased": [conv]}
        for gw in (a_node, b_node):  # neither node answers from a copy
            assert _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{conv}")[0] == 404
        # Redis: no key names the conversation or the visitor, and no value holds the text.
        try:
            keys = [k.decode() for k in r.scan_iter(count=1000)]
            assert not [k for k in keys if conv in k or name in k]
            for k in keys:
                assert marker.encode() not in (r.dump(k) or b""), k
        finally:
            r.close()
        t = _json(a_node, f"/admin/tenants/{tenant}/conversations/{keep_conv}/transcript")
        assert "someone else's question" in [e.get("text") for e in t["entries"]]
    finally:
        a_node.stop()
        b_node.stop()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_cluster_mode_retention_expires_a_closed_conversations_keys(request, kind):
    import time
    import uuid

    from gateway.coordinator import Conversation
    from gateway.coordinator.redis import RedisCoordinator
    from gateway.coordinator.retention import DAY_MS, Retention

    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    c = RedisCoordinator(f"n-{uuid.uuid4().hex[:6]}", server.url, cluster=kind == "redis-cluster",
                         prefix=f"t{uuid.uuid4().hex[:8]}", retention=Retention(1, {"kept": 0}))
    await c.start()
    try:
        now = int(time.time() * 1000)
        plan = {("t", "recent"): now, ("t", "old"): now - 2 * DAY_MS, ("kept", "any"): now - 400 * DAY_MS}
        for (tenant, conv_id), created in plan.items():
            conv = Conversation(id=conv_id, tenant=tenant, visitor=f"v-{conv_id}", group="g", created_ms=created)
            await c.create_conversation(conv)
            await c.append(tenant, conv_id, {"t": "msg", "from": conv.visitor, "text": "x"}, "m1")
            conv.state = "closed"
            await c.save_conversation(conv)
        after = int(time.time() * 1000)
        keys = lambda t, i: [c._ck(t, i, p) for p in ("doc", "log", "ids", "meta")]  # noqa: E731
        # A day after it opened; for one opened long ago, ten minutes after the close (the grace).
        assert {await c.r.pexpiretime(k) for k in keys("t", "recent")} == {now + DAY_MS}
        old = {await c.r.pexpiretime(k) for k in keys("t", "old")}
        assert len(old) == 1 and now + 600_000 <= old.pop() <= after + 600_000
        assert {await c.r.pexpiretime(k) for k in keys("kept", "any")} == {-1}  # retention 0: no expiry
    finally:
        await c.close()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_cluster_nodes_archive_closed_conversations_and_any_node_serves_them(request, kind, archive_url,
                                                                                   postgres_server):
    """Two nodes over Redis with the PostgreSQL archive: a closed conversation leaves Redis; its
    history, transcript and listing come from the archive on either node; erasure clears it there."""
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    settings = dict(coordinator="redis", redis_url=server.url, redis_cluster=str(kind == "redis-cluster").lower(),
                    jwt_secret=secrets.token_urlsafe(32), archive_url=archive_url, archive_after_s=0,
                    archive_poll_s=0.05, history_keep=10)
    a_node, b_node = start_gateway(**settings), start_gateway(**settings)
    r = redis.Redis.from_url(server.url) if kind == "redis" else redis.RedisCluster.from_url(server.url)
    db = archive_url.rsplit("/", 1)[1]
    try:
        tenant = uid("t")
        agent = await Client.connect(b_node, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 10}, "status")
        marker = "ERASE-ME-" + uid("secret")
        v, conv = await _chat(a_node, tenant, agent, f"my address is {marker}")
        for i in range(12):
            await v.msg(conv, f"more {i}")
        await _close(v, conv)
        await wait_for(lambda: not [k for k in r.scan_iter(match=f"*{conv}*", count=1000)], what="the keys moved out")
        assert postgres_server.sql(f"SELECT count(*) FROM chatgw_entries WHERE conv = '{conv}'", db)[0][0] != "0"
        # History from the other node, paged; the transcript and the listing from either.
        name = v.welcome["user"]
        await v.close()
        v2 = await Client.connect(b_node, "visitor", name, tenant)
        hist: list[dict] = []
        before = None
        while True:
            page = (await v2.request({"t": "history", "conv": conv, "limit": 5,
                                      **({"before": before} if before else {})}, "history"))["msgs"]
            hist = page + hist
            if not page or page[0]["seq"] == 1:
                break
            before = page[0]["seq"]
        assert [e["seq"] for e in hist] == list(range(1, len(hist) + 1))
        texts = [e["text"] for e in hist if e["t"] == "msg"]
        assert texts == [f"my address is {marker}", f"re: my address is {marker}"] + [f"more {i}" for i in range(12)]
        t = _json(a_node, f"/admin/tenants/{tenant}/conversations/{conv}/transcript")
        assert t["conversation"]["state"] == "closed" and t["entries"] == hist
        assert [c["id"] for c in _json(b_node, f"/admin/tenants/{tenant}/conversations?state=closed")
                ["conversations"]] == [conv]
        # Erasure: nothing of it left in the archive (or Redis).
        await v2.close()
        await wait_for(lambda: not [k for k in r.scan_iter(match="*{p:*", count=1000) if name.encode() in k],
                       what="the visitor's presence gone")
        status, body, _ = _http(b_node, "DELETE", f"/admin/tenants/{tenant}/visitors/{name}")
        assert status == 200 and orjson.loads(body) == {"erased": [conv]}
        for table, where in (("chatgw_entries", f"conv = '{conv}' OR position(convert_to('{marker}', 'UTF8') in body) > 0"),
                             ("chatgw_conversations", f"id = '{conv}' OR visitor = '{name}'")):
            assert postgres_server.sql(f"SELECT count(*) FROM {table} WHERE {where}", db) == [("0",)]
        assert not [k for k in r.scan_iter(count=1000) if conv.encode() in k or name.encode() in k]
        for gw in (a_node, b_node):
            assert _http(gw, "GET", f"/admin/tenants/{tenant}/conversations/{conv}/transcript")[0] == 404
    finally:
        r.close()
        a_node.stop()
        b_node.stop()

"""End to end over real sockets against a real node: the chat path of issue 2."""

from __future__ import annotations

from .support import Client, uid


async def agent_online(gw, tenant: str, name: str | None = None, capacity: int = 2, groups=None) -> Client:
    a = await Client.connect(gw, "agent", name or uid("agent"), tenant, groups=groups)
    st = await a.request({"t": "status", "status": "online", "capacity": capacity}, "status")
    assert st["status"] == "online" and st["capacity"] == capacity
    return a


async def open_conv(gw, tenant: str, name: str | None = None, group: str | None = None) -> tuple[Client, dict]:
    v = await Client.connect(gw, "visitor", name or uid("visitor"), tenant)
    req = {"t": "open"}
    if group:
        req["group"] = group
    conv = await v.request(req, "conv")
    return v, conv


async def test_visitor_and_agent_chat_both_ways_in_order(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant)
    v, conv = await open_conv(gateway, tenant)
    cid = conv["conv"]
    got = await a.next("assigned", lambda e: e["conv"] == cid)
    assert got["visitor"] == v.welcome["user"]
    ev = await v.next("event", lambda e: e["ev"] == "assigned")
    assert ev["agent"] == a.welcome["user"]

    acks = [await v.msg(cid, f"v{i}") for i in range(5)]
    assert [x["seq"] for x in acks] == list(range(acks[0]["seq"], acks[0]["seq"] + 5))
    for i in range(5):
        m = await a.next("msg", lambda e, i=i: e["text"] == f"v{i}")
        assert m["from"] == v.welcome["user"] and m["seq"] == acks[i]["seq"]
    r = await a.msg(cid, "hello from agent")
    m = await v.next("msg", lambda e: e["text"] == "hello from agent")
    assert m["seq"] == r["seq"] == acks[-1]["seq"] + 1
    # Every connection saw every entry once, in seq order, with no gap.
    for c in (v, a):
        seqs = [e["seq"] for e in c.entries(cid)]
        assert seqs == sorted(set(seqs)), seqs
        assert seqs == list(range(seqs[0], seqs[-1] + 1))


async def test_msgpack_client_gets_msgpack(gateway):
    tenant = uid("t")
    v = await Client.connect(gateway, "visitor", uid("v"), tenant, binary=True)
    conv = await v.request({"t": "open"}, "conv")
    ack = await v.msg(conv["conv"], "binary hello")
    assert ack["seq"] >= 1
    assert isinstance(v.ws, object)
    m = await v.next("msg", lambda e: e["text"] == "binary hello")
    assert m["seq"] == ack["seq"]


async def test_assignment_by_least_load(gateway):
    tenant = uid("t")
    a1 = await agent_online(gateway, tenant, "a1", capacity=3)
    a2 = await agent_online(gateway, tenant, "a2", capacity=3)
    owners = []
    for _ in range(4):
        v, conv = await open_conv(gateway, tenant)
        ev = await v.next("event", lambda e: e["ev"] == "assigned")
        owners.append(ev["agent"])
    # Least-loaded first with id order on ties: a1, a2, a1, a2.
    assert owners == ["a1", "a2", "a1", "a2"]
    assert len([e for e in a1.seen if e["t"] == "assigned"]) == 2
    assert len([e for e in a2.seen if e["t"] == "assigned"]) == 2


async def test_queue_positions_then_assignment_when_room_frees(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant, "solo", capacity=1)
    v1, c1 = await open_conv(gateway, tenant)
    await v1.next("event", lambda e: e["ev"] == "assigned")
    v2, c2 = await open_conv(gateway, tenant)
    v3, c3 = await open_conv(gateway, tenant)
    assert (await v2.next("queue"))["position"] == 1
    assert (await v3.next("queue"))["position"] == 2
    assert c3["state"] == "queued"
    # The `open` reply of a queued conversation names its position too (docs/protocol.md).
    assert (c2["state"], c2["position"], c3["position"]) == ("queued", 1, 2)
    # The agent closes the first conversation: v2 gets the agent, v3 moves up to 1.
    await a.send({"t": "close", "conv": c1["conv"]})
    await v1.next("event", lambda e: e["ev"] == "closed")
    ev = await v2.next("event", lambda e: e["ev"] == "assigned")
    assert ev["agent"] == "solo"
    assert (await v3.next("queue", lambda e: e["position"] == 1))["conv"] == c3["conv"]
    assigned = await a.next("assigned", lambda e: e["conv"] == c2["conv"])
    assert any(h.get("ev") == "queued" for h in assigned["history"])


async def test_sticky_return_to_previous_agent(gateway):
    tenant = uid("t")
    await agent_online(gateway, tenant, "a1", capacity=5)
    b = await agent_online(gateway, tenant, "b9", capacity=5)
    name = uid("returning")
    # Give a1 a load so that least-load alone would pick b9... first conversation goes to a1 (tie, id order).
    v, c = await open_conv(gateway, tenant, name)
    ev = await v.next("event", lambda e: e["ev"] == "assigned")
    first_agent = ev["agent"]
    await v.send({"t": "close", "conv": c["conv"]})
    await v.next("event", lambda e: e["ev"] == "closed")
    # Load the other agent less than the first one so least-load would choose it.
    other_v, _ = await open_conv(gateway, tenant)
    await other_v.next("event", lambda e: e["ev"] == "assigned")
    v2, c2 = await open_conv(gateway, tenant, name)
    ev2 = await v2.next("event", lambda e: e["ev"] == "assigned" and e["conv"] == c2["conv"])
    assert ev2["agent"] == first_agent
    assert c2["conv"] != c["conv"]
    del b


async def test_transfer_to_agent_and_to_group(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant, "a1", capacity=2, groups=["sales", "default"])
    b = await agent_online(gateway, tenant, "b1", capacity=2, groups=["sales", "default"])
    v, c = await open_conv(gateway, tenant)
    cid = c["conv"]
    ev = await v.next("event", lambda e: e["ev"] == "assigned")
    holder, other = (a, b) if ev["agent"] == "a1" else (b, a)
    await holder.msg(cid, "let me transfer you")
    await holder.send({"t": "transfer", "conv": cid, "to": other.welcome["user"]})
    got = await other.next("assigned", lambda e: e["conv"] == cid)
    assert any(h.get("text") == "let me transfer you" for h in got["history"])
    await holder.next("unassigned", lambda e: e["conv"] == cid)
    tr = await v.next("event", lambda e: e["ev"] == "transferred")
    assert tr["agent"] == other.welcome["user"] and tr["by"] == holder.welcome["user"]
    # The old agent is no longer a participant.
    err = await holder.request({"t": "msg", "conv": cid, "id": "x1", "text": "still here?"}, "error")
    assert err["code"] == "not_participant"
    # Transfer to a group: goes through the queue and lands on an agent of that group.
    await other.send({"t": "transfer", "conv": cid, "group": "sales"})
    ev = await v.next("event", lambda e: e["ev"] == "assigned" and e.get("by") is None and e["seq"] > tr["seq"])
    assert ev["agent"] in ("a1", "b1")
    # Transfer by someone who does not hold it is refused.
    not_holder = a if ev["agent"] == "b1" else b
    err = await not_holder.request({"t": "transfer", "conv": cid, "to": "a1"}, "error")
    assert err["code"] in ("not_participant", "forbidden")


async def test_exactly_once_on_retry_and_after_reconnect(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant)
    name = uid("v")
    v, c = await open_conv(gateway, tenant, name)
    cid = c["conv"]
    await a.next("assigned")
    first = await v.msg(cid, "only once", cid="client-1")
    again = await v.msg(cid, "only once", cid="client-1")
    assert again["seq"] == first["seq"] and again["dup"] is True and first["dup"] is False
    await v.close()
    v2 = await Client.connect(gateway, "visitor", name, tenant)
    third = await v2.msg(cid, "only once", cid="client-1")
    assert third["seq"] == first["seq"] and third["dup"] is True
    marker = await v2.msg(cid, "after")
    await a.next("msg", lambda e: e["seq"] == marker["seq"])
    assert [e["id"] for e in a.seen if e.get("t") == "msg"].count("client-1") == 1


async def test_closed_conversation_still_acks_a_retry_but_takes_nothing_new(gateway):
    tenant = uid("t")
    v, c = await open_conv(gateway, tenant, uid("v"))
    cid = c["conv"]
    first = await v.msg(cid, "before closing", cid="client-1")
    await v.send({"t": "close", "conv": cid})
    await v.next("event", lambda e: e["ev"] == "closed")
    again = await v.msg(cid, "before closing", cid="client-1")  # the ack was lost; the client retries
    assert again["seq"] == first["seq"] and again["dup"] is True
    await v.send({"t": "msg", "conv": cid, "id": "client-2", "text": "after closing", "rid": 7})
    err = await v.next("error", lambda e: e.get("rid") == 7)
    assert err["code"] == "conflict"


async def test_resume_after_reconnect_gets_missed_then_live(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant)
    name = uid("v")
    v, c = await open_conv(gateway, tenant, name)
    cid = c["conv"]
    await a.next("assigned")
    await v.msg(cid, "before")
    last_seen = (await v.next("msg", lambda e: e["text"] == "before"))["seq"]
    await v.close()
    missed = [await a.msg(cid, f"missed {i}") for i in range(3)]
    v2 = await Client.connect(gateway, "visitor", name, tenant)
    assert [x["conv"] for x in v2.welcome["convs"]] == [cid]
    await v2.send({"t": "resume", "conv": cid, "after": last_seen})
    done = await v2.next("resumed")
    got = [e for e in v2.entries(cid)]
    assert [e["seq"] for e in got] == list(range(last_seen + 1, done["seq"] + 1))
    assert [e["text"] for e in got if e["t"] == "msg"] == [f"missed {i}" for i in range(3)]
    assert done["seq"] == missed[-1]["seq"]
    live = await a.msg(cid, "live")
    m = await v2.next("msg", lambda e: e["text"] == "live")
    assert m["seq"] == live["seq"] == done["seq"] + 1


async def test_history_paging(gateway):
    tenant = uid("t")
    v, c = await open_conv(gateway, tenant)
    cid = c["conv"]
    for i in range(12):
        await v.msg(cid, f"m{i}")
    page = await v.request({"t": "history", "conv": cid, "limit": 5}, "history")
    assert [e["text"] for e in page["msgs"]] == [f"m{i}" for i in range(7, 12)]
    older = await v.request({"t": "history", "conv": cid, "limit": 5, "before": page["msgs"][0]["seq"]}, "history")
    assert [e["text"] for e in older["msgs"]] == [f"m{i}" for i in range(2, 7)]
    assert older["first"] == 1


async def test_typing_and_read_are_relayed_not_logged(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant)
    v, c = await open_conv(gateway, tenant)
    cid = c["conv"]
    await a.next("assigned")
    await v.send({"t": "typing", "conv": cid, "on": True})
    t = await a.next("typing")
    assert t["from"] == v.welcome["user"] and t["on"] is True
    ack = await v.msg(cid, "hi")
    await a.send({"t": "read", "conv": cid, "seq": ack["seq"]})
    r = await v.next("read")
    assert r["seq"] == ack["seq"] and r["from"] == a.welcome["user"]
    hist = await v.request({"t": "history", "conv": cid}, "history")
    assert all(e["t"] in ("msg", "event") for e in hist["msgs"])


async def test_agent_loss_grace_period_requeues(gateway_factory):
    gw = gateway_factory(agent_grace_s=1.0)
    tenant = uid("t")
    a = await agent_online(gw, tenant, "leaver", capacity=2)
    v, c = await open_conv(gw, tenant)
    cid = c["conv"]
    await a.next("assigned")
    # Reconnecting within the grace period keeps the conversation.
    await a.close()
    a_back = await Client.connect(gw, "agent", "leaver", tenant)
    assert [x["conv"] for x in a_back.welcome["convs"]] == [cid]
    # Gone for longer than the grace period: the conversation returns to the queue and
    # goes to the next available agent with the history.
    await a_back.close()
    b = await agent_online(gw, tenant, "stayer", capacity=2)
    got = await b.next("assigned", lambda e: e["conv"] == cid, timeout=15)
    assert any(h.get("ev") == "requeued" for h in got["history"])
    ev = await v.next("event", lambda e: e["ev"] == "assigned" and e["agent"] == "stayer", timeout=15)
    assert ev["conv"] == cid


async def test_visitor_reopen_returns_same_open_conversation(gateway):
    tenant = uid("t")
    name = uid("v")
    v, c = await open_conv(gateway, tenant, name)
    again = await v.request({"t": "open"}, "conv")
    assert again["conv"] == c["conv"]
    v2 = await Client.connect(gateway, "visitor", name, tenant)
    assert v2.welcome["convs"][0]["conv"] == c["conv"]


async def test_http_side_health_metrics_config(gateway):
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.http_url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        async with s.get(gateway.http_url + "/readyz") as r:
            assert r.status == 200
        async with s.get(gateway.http_url + "/metrics") as r:
            assert "chatgw_connections" in await r.text()
        async with s.get(gateway.http_url + "/api/config") as r:
            cfg = await r.json()
            assert cfg["ws_url"].endswith(f":{gateway.ws_port}/ws") and cfg["version"] == 1
        async with s.get(gateway.http_url + "/api/dev/token?role=agent&sub=z1") as r:
            assert (await r.json())["role"] == "agent"
        async with s.get(gateway.http_url + "/visitor") as r:
            assert r.status == 200 and "<html" in (await r.text()).lower()


async def test_second_connection_gets_live_entries_only_after_resume(gateway):
    # Regression: a connection that saw an entry live and then resumed from 0 got [4, 1, 2, 3, 4].
    tenant = uid("t")
    a = await agent_online(gateway, tenant)
    name = uid("v")
    v, c = await open_conv(gateway, tenant, name)
    cid = c["conv"]
    await a.next("assigned")
    tab2 = await Client.connect(gateway, "visitor", name, tenant)
    assert tab2.welcome["convs"][0]["conv"] == cid
    before = await a.msg(cid, "before tab2 resumed")
    await v.next("msg", lambda e: e["seq"] == before["seq"])
    await tab2.send({"t": "resume", "conv": cid, "after": 0})
    done = await tab2.next("resumed")
    live = await a.msg(cid, "after tab2 resumed")
    await tab2.next("msg", lambda e: e["seq"] == live["seq"])
    seqs = [e["seq"] for e in tab2.entries(cid)]
    assert seqs == list(range(1, live["seq"] + 1)) and done["seq"] == before["seq"]
    # The opener's connection also saw every entry exactly once, in order.
    assert [e["seq"] for e in v.entries(cid)] == list(range(1, live["seq"] + 1))


async def test_agent_welcome_reports_status(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant, "a-status", capacity=4)
    await a.close()
    again = await Client.connect(gateway, "agent", "a-status", tenant)
    assert again.welcome["status"] == "online" and again.welcome["capacity"] == 4


async def test_assignment_when_queue_and_conversation_share_a_lock_segment(gateway_factory):
    # With one segment every key collides: draining the queue must never hold the queue's
    # segment while it takes the conversation's (segment locks are not reentrant).
    gw = gateway_factory(lock_segments=1)
    tenant = uid("t")
    a = await agent_online(gw, tenant, "one-seg", capacity=2)
    v, c = await open_conv(gw, tenant)
    got = await a.next("assigned", lambda e: e["conv"] == c["conv"])
    assert got["visitor"] == v.welcome["user"]
    await a.send({"t": "transfer", "conv": c["conv"], "group": "default"})
    await a.next("assigned", lambda e: e["conv"] == c["conv"] and e is not got)

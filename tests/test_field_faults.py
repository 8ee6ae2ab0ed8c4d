"""Faults people hit in the field (issue 10), each as the reported input with the right answer.

Real gateway processes, real sockets; the cluster variants run on a real Redis and a real
Redis Cluster (tests/test_cluster_e2e.py's `nodes` fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from .support import Client, uid, wait_for
from .test_cluster_e2e import nodes  # noqa: F401 - the fixture, reused
from .test_e2e_chat import agent_online, open_conv
from .wsraw import RawWS


async def _assigned_pair(gw, tenant: str, agent_gw=None) -> tuple[Client, Client, str]:
    a = await agent_online(agent_gw or gw, tenant, uid("agent"))
    v, c = await open_conv(gw, tenant)
    cid = c["conv"]
    await a.next("assigned", lambda e: e["conv"] == cid)
    await v.next("event", lambda e: e["ev"] == "assigned")
    return v, a, cid


async def _two_senders_reuse_an_id(v: Client, a: Client, cid: str) -> None:
    """Item 4: the visitor sends id "1", then the agent a different message with id "1"."""
    first = await v.msg(cid, "visitor's one", cid="1")
    second = await a.msg(cid, "agent's one", cid="1")
    assert first["dup"] is False and second["dup"] is False
    assert second["seq"] == first["seq"] + 1
    got = await v.next("msg", lambda e: e["text"] == "agent's one")
    assert got["seq"] == second["seq"] and got["from"] == a.welcome["user"]
    # Each sender's retry is still recognised as its own.
    assert (await v.msg(cid, "visitor's one", cid="1"))["seq"] == first["seq"]
    retry = await a.msg(cid, "agent's one", cid="1")
    assert retry["seq"] == second["seq"] and retry["dup"] is True
    hist = await v.request({"t": "history", "conv": cid}, "history")
    texts = [m["text"] for m in hist["msgs"] if m["t"] == "msg"]
    assert texts == ["visitor's one", "agent's one"]


async def test_two_senders_may_reuse_each_others_client_ids(gateway):
    v, a, cid = await _assigned_pair(gateway, uid("t"))
    await _two_senders_reuse_an_id(v, a, cid)


async def test_two_senders_may_reuse_each_others_client_ids_across_nodes(nodes):  # noqa: F811
    n1, n2 = nodes()
    v, a, cid = await _assigned_pair(n1, uid("t"), agent_gw=n2)
    await _two_senders_reuse_an_id(v, a, cid)


async def test_resume_cursors_below_at_and_past_the_end(gateway):
    """Item 5: a conversation at seq 3; a second tab resumes after 1000, then after 0."""
    tenant = uid("t")
    v, a, cid = await _assigned_pair(gateway, tenant)
    ack = await v.msg(cid, "hello")
    assert ack["seq"] == 3
    tab = await Client.connect(gateway, "visitor", v.welcome["user"], tenant)
    err = await tab.request({"t": "resume", "conv": cid, "after": 1000}, "error")
    assert (err["code"], err["field"], err["seq"]) == ("bad_field", "after", 3)
    # At the end: nothing replayed, subscribed from there; the next message arrives live.
    done = await tab.request({"t": "resume", "conv": cid, "after": 3}, "resumed")
    assert done["seq"] == 3 and tab.entries(cid) == []
    reply = await a.msg(cid, "seq four")
    assert (await tab.next("msg", lambda e: e["text"] == "seq four"))["seq"] == reply["seq"] == 4
    # Below: a fresh tab gets everything from the start, in order, once.
    tab2 = await Client.connect(gateway, "visitor", v.welcome["user"], tenant)
    await tab2.request({"t": "resume", "conv": cid, "after": 1000}, "error")
    done = await tab2.request({"t": "resume", "conv": cid, "after": 0}, "resumed")
    assert [e["seq"] for e in tab2.entries(cid)] == [1, 2, 3, 4] and done["seq"] == 4


async def test_requeue_keeps_the_original_order(gateway_factory):
    """Item 6: an agent holding c1, c2, c3 (assigned in that order) vanishes past its grace period."""
    gw = gateway_factory(agent_grace_s=0.3)
    tenant = uid("t")
    a = await agent_online(gw, tenant, "leaver", capacity=3)
    convs = []
    for _ in range(3):
        v, c = await open_conv(gw, tenant)
        await a.next("assigned", lambda e, c=c: e["conv"] == c["conv"])
        convs.append((v, c["conv"]))
    await a.close()
    for v, cid in convs:
        await v.next("event", lambda e, cid=cid: e["ev"] == "requeued" and e["conv"] == cid, timeout=15)

    def told(v: Client, cid: str) -> int | None:
        positions = [e["position"] for e in v.seen if e["t"] == "queue" and e["conv"] == cid]
        return positions[-1] if positions else None

    await wait_for(lambda: [told(v, cid) for v, cid in convs] == [1, 2, 3], what="positions 1, 2, 3")
    b = await agent_online(gw, tenant, "next", capacity=1)
    got = await b.next("assigned")
    assert got["conv"] == convs[0][1]


async def test_transfer_to_the_own_group_goes_to_another_agent(gateway):
    """Item 7: A and B online with room; A transfers its conversation to its own group."""
    tenant = uid("t")
    a = await agent_online(gateway, tenant, "a1", capacity=3)
    b = await agent_online(gateway, tenant, "b1", capacity=3)
    v, c = await open_conv(gateway, tenant)
    cid = c["conv"]
    ev = await v.next("event", lambda e: e["ev"] == "assigned")
    holder, other = (a, b) if ev["agent"] == "a1" else (b, a)
    # Item 8: the reply to the transfer (the `unassigned` frame) carries the request's rid.
    un = await holder.request({"t": "transfer", "conv": cid, "group": "default"}, "unassigned")
    assert un["conv"] == cid
    got = await v.next("event", lambda e: e["ev"] == "assigned" and e["seq"] > ev["seq"])
    assert got["agent"] == other.welcome["user"]
    await other.next("assigned", lambda e: e["conv"] == cid)


async def test_transfer_to_group_returns_only_when_nobody_else_has_room(gateway):
    tenant = uid("t")
    a = await agent_online(gateway, tenant, "a1", capacity=2)
    v, c = await open_conv(gateway, tenant)
    cid = c["conv"]
    ev = await v.next("event", lambda e: e["ev"] == "assigned")
    await a.request({"t": "transfer", "conv": cid, "group": "default"}, "unassigned")
    got = await v.next("event", lambda e: e["ev"] == "assigned" and e["seq"] > ev["seq"])
    assert got["agent"] == "a1"  # the only agent: waiting for nobody would strand the visitor


async def test_flood_gets_a_closing_envelope_before_1008(gateway_factory):
    """Item 9: the close of a flood is explained in an envelope first."""
    gw = gateway_factory(rate_per_s=5, rate_burst=5, flood_strikes=3)
    flooder = await Client.connect(gw, "visitor", uid("v"), uid("t"))
    for i in range(50):
        if flooder.closed.done():
            break
        await flooder.send({"t": "ping", "rid": str(i)})
    closing = await flooder.next("closing")
    assert (closing["code"], closing["reason"]) == (1008, "flood")
    assert await asyncio.wait_for(flooder.closed, 10) == 1008
    # Each dropped request is named by its rid, and none of them was answered.
    dropped = [e["rid"] for e in flooder.seen if e.get("code") == "rate_limited"]
    answered = {e["rid"] for e in flooder.seen if e["t"] == "pong"}
    assert dropped and not set(dropped) & answered
    assert flooder.welcome["limits"] == {"max_text": 4000, "max_frame": 65536, "rate_per_s": 5.0, "rate_burst": 5.0,
                                         "flood_strikes": 3, "heartbeat_timeout_s": 10.0}


async def _long_conversation(gw, tenant: str, n: int, size: int) -> tuple[Client, Client, str]:
    v, a, cid = await _assigned_pair(gw, tenant)
    text = "z" * size
    for i in range(0, n, 100):
        for j in range(i, min(i + 100, n)):
            await a.send({"t": "msg", "conv": cid, "id": f"h{j}", "text": text})
        last = min(i + 100, n) - 1
        await a.next("ack", lambda e, last=last: e["id"] == f"h{last}", timeout=30)
    return v, a, cid


async def test_a_long_history_reaches_a_client_that_reads(gateway_factory):
    """A resume of about 12 MB is paced by what the client reads, not refused as a slow reader."""
    gw = gateway_factory(rate_per_s=100000, rate_burst=100000, max_write_buffer=262144)
    tenant = uid("t")
    v, a, cid = await _long_conversation(gw, tenant, 3000, 4000)
    tab = await Client.connect(gw, "visitor", v.welcome["user"], tenant)
    done = await tab.request({"t": "resume", "conv": cid, "after": 0}, "resumed")
    seqs = [e["seq"] for e in tab.entries(cid)]
    assert seqs == list(range(1, done["seq"] + 1)) and done["seq"] >= 3002


async def _sloth_resuming_a_long_history(gateway_factory) -> tuple[Any, RawWS]:
    """A node, and a raw client with a tiny receive buffer that asks for about 12 MB of history, then
    reads nothing: more than the kernel's socket buffers hold (tcp_wmem max 4 MiB here), so the
    node itself sees the client stop reading."""
    gw = gateway_factory(rate_per_s=100000, rate_burst=100000, heartbeat_timeout_s=1)
    tenant = uid("t")
    v, _a, cid = await _long_conversation(gw, tenant, 3000, 4000)
    token = gw.token("visitor", v.welcome["user"], tenant)
    sloth, status, _ = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={token}", rcvbuf=4096)
    assert status == 101
    sloth.send_frame(0x1, b'{"t":"resume","conv":"%s","after":0}' % cid.encode())
    return gw, sloth


async def test_a_client_that_stops_reading_history_gets_1008_not_a_reset(gateway_factory):
    """Item 9: it stops reading while it is sent about 12 MB of history; it reads again later."""
    gw, sloth = await _sloth_resuming_a_long_history(gateway_factory)
    async with aiohttp.ClientSession() as s:
        async def dropped() -> bool:
            async with s.get(gw.http_url + "/metrics") as r:
                return "chatgw_slow_readers_total 1.0" in await r.text()

        await wait_for(dropped, timeout=30, what="the slow reader to be closed")
    # Reading again: what was buffered, then the explanation and the close frame (no reset).
    frames = []
    while True:
        op, payload = await asyncio.wait_for(sloth.read_frame(), 10)
        frames.append((op, payload))
        if op == 0x8:
            break
    assert int.from_bytes(frames[-1][1][:2], "big") == 1008
    assert b'"closing"' in frames[-2][1] and b'"slow_reader"' in frames[-2][1]
    # What reached the client is what the kernel's send buffer (at most tcp_wmem's maximum) and
    # the node's own bound (write limit, high-water mark, one replay chunk) held: never the 12 MB.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        kernel_max = int(f.read().split()[2])
    received = sum(len(p) for _, p in frames)
    assert received < kernel_max + 1024 * 1024 < 3000 * 4000, received
    assert gw.alive()


async def test_expired_token_closes_the_connection_and_refresh_extends_it(gateway_factory):
    """Item 3: a token that expires in 3 s must not keep working 6 s later."""
    gw = gateway_factory()
    tenant = uid("t")
    exp = int(time.time()) + 3
    v = await Client.connect(gw, "visitor", uid("v"), tenant, ttl_s=3)
    assert abs(v.welcome["exp"] - exp) <= 1
    conv = await v.request({"t": "open"}, "conv")
    closing = await v.next("closing", timeout=15)
    assert (closing["code"], closing["reason"]) == (3000, "token_expired")
    assert await asyncio.wait_for(v.closed, 10) == 3000
    del conv

    # A client that refreshes in time stays, and keeps working past the first token's expiry.
    user = uid("v")
    r = await Client.connect(gw, "visitor", user, tenant, ttl_s=3)
    start = r.welcome["exp"]
    fresh = await r.request({"t": "refresh", "token": gw.token("visitor", user, tenant, ttl_s=600)}, "refreshed")
    assert fresh["exp"] > start + 500
    c = await r.request({"t": "open"}, "conv")
    await wait_for(lambda: time.time() > start + 1, timeout=10, what="the first token's expiry")
    ack = await r.msg(c["conv"], "still here")
    assert ack["seq"] >= 1 and not r.closed.done()


@pytest.mark.parametrize(
    "token, code",
    [
        ("not a jwt", "unauthorized"),
        ("expired", "unauthorized"),
        ("other user", "forbidden"),
        ("other role", "forbidden"),
    ],
)
async def test_bad_refresh_is_refused_and_the_connection_stays(gateway, token, code):
    tenant, user = uid("t"), uid("v")
    c = await Client.connect(gateway, "visitor", user, tenant)
    tokens = {
        "not a jwt": "not a jwt",
        "expired": gateway.token("visitor", user, tenant, ttl_s=-10),
        "other user": gateway.token("visitor", uid("v"), tenant),
        "other role": gateway.token("agent", user, tenant),
    }
    err = await c.request({"t": "refresh", "token": tokens[token]}, "error")
    assert (err["code"], err["field"]) == (code, "token")
    assert (await c.request({"t": "ping"}, "pong"))["t"] == "pong"


async def test_every_request_reply_copies_its_rid(gateway):
    """Item 8, as a kind: the replies to open, msg, history, resume, status, transfer and ping carry the rid."""
    tenant = uid("t")
    v, a, cid = await _assigned_pair(gateway, tenant)
    for client, env, kind in [
        (v, {"t": "msg", "conv": cid, "id": "r-1", "text": "x"}, "ack"),
        (v, {"t": "msg", "conv": cid, "id": "r-1", "text": "x"}, "ack"),  # the retry's ack too
        (v, {"t": "open"}, "conv"),
        (v, {"t": "history", "conv": cid}, "history"),
        (v, {"t": "resume", "conv": cid, "after": 0}, "resumed"),
        (a, {"t": "status", "status": "online"}, "status"),
        (v, {"t": "ping"}, "pong"),
    ]:
        got = await client.request(env, kind)  # waits for `kind` with this request's rid
        assert got["t"] == kind


async def test_read_marker_past_the_end_is_refused_and_not_relayed(gateway):
    v, a, cid = await _assigned_pair(gateway, uid("t"))
    err = await v.request({"t": "read", "conv": cid, "seq": 1000}, "error")
    assert (err["code"], err["field"], err["seq"]) == ("bad_field", "seq", 2)
    await v.send({"t": "read", "conv": cid, "seq": 2})
    assert (await a.next("read"))["seq"] == 2  # the first read marker the agent sees is the real one


@pytest.mark.parametrize("text, ok", [("😀" * 4000, True), ("😀" * 4001, False), ("é" * 4000, True)])
async def test_max_text_counts_code_points(gateway, text, ok):
    """Item 10: `max_text` counts code points; "😀" * 4000 is 8000 UTF-16 units (a JS .length) and fits."""
    v, _a, cid = await _assigned_pair(gateway, uid("t"))
    reply = await v.request({"t": "msg", "conv": cid, "id": uid("m"), "text": text}, "ack" if ok else "error")
    if not ok:
        assert (reply["code"], reply["field"]) == ("bad_field", "text")


async def test_a_slow_reader_that_never_reads_again_is_released(gateway_factory):
    """Its close can't be delivered: after the close grace and heartbeat_timeout_s the node lets it go."""
    gw, sloth = await _sloth_resuming_a_long_history(gateway_factory)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s:
        async def metrics() -> str:
            async with s.get(gw.http_url + "/metrics") as r:
                return await r.text()

        async def connections() -> int:
            async with s.get(gw.http_url + "/admin/stats") as r:
                return (await r.json())["hub"]["connections"]

        await wait_for(lambda: _equals(connections(), 2), timeout=30, what="the sloth to be released")
        # Released as a slow reader (not by the 20 s heartbeat): 1008 queued, then cut off.
        assert "chatgw_slow_readers_total 1.0" in await metrics()
    assert gw.alive()
    sloth.close()


async def _equals(coro, value) -> bool:
    return (await coro) == value

"""Outbound webhooks (gateway/webhooks.py, docs/webhooks.md) from a real node to a receiver in the test.

The receiver is a local aiohttp server that checks each delivery as a site's receiver would
(`webhooks.verify`: signature, replay window) and can be taken down (503) and brought back. It
stands for the site's own endpoint; nothing outside this machine is called.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time

import orjson
import pytest
from aiohttp import web

from gateway import webhooks

from .support import Client, start_gateway, uid, wait_for

SECRET = secrets.token_urlsafe(24)


class Receiver:
    """A webhook endpoint: records what it accepts; `down` makes it answer 503."""

    def __init__(self):
        self.events: list[dict] = []
        self.ids: list[str] = []
        self.refused = 0
        self.down = False
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event_id = webhooks.verify(SECRET, request.headers, body)
        except ValueError:
            return web.Response(status=401)
        if self.down:
            self.refused += 1
            return web.Response(status=503)
        if event_id not in self.ids:  # a receiver drops an id it has seen (at least once on the wire)
            self.ids.append(event_id)
            self.events.append(orjson.loads(body))
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _config(tmp_path, tenant: str, url: str, **extra) -> str:
    lines = ["[[webhooks]]", 'name = "crm"', f'tenant = "{tenant}"', f'url = "{url}"', f'secret = "{SECRET}"',
             "backoff_s = 0.05"] + [f"{k} = {v}" for k, v in extra.items()]
    path = tmp_path / "chatgw.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def _chat(gw, tenant: str, n: int) -> str:
    agent = await Client.connect(gw, "agent", "ann", tenant)
    await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
    v = await Client.connect(gw, "visitor", uid("v"), tenant)
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    await agent.next("assigned", lambda e: e["conv"] == conv)
    for i in range(n):
        await v.msg(conv, f"question {i}")
    await v.send({"t": "close", "conv": conv})
    await v.next("event", lambda e: e["conv"] == conv and e["ev"] == "closed")
    await v.close()
    await agent.close()
    return conv


def _kinds(events: list[dict]) -> list[str]:
    """The conversation's events (agent.status events are the agents', checked apart)."""
    return [e["type"] for e in events if e["type"] != "agent.status"]


def _convs(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] != "agent.status"]


async def test_events_arrive_signed_in_order_once_each(tmp_path):
    rx = await Receiver().start()
    tenant = uid("t")
    gw = start_gateway(data_dir=str(tmp_path / "data"), config=_config(tmp_path, tenant, rx.url))
    try:
        conv = await _chat(gw, tenant, 3)
        await wait_for(lambda: "conversation.closed" in _kinds(rx.events), what="the close's webhook")
        assert _kinds(rx.events) == ["conversation.opened", "conversation.queued", "conversation.assigned",
                                     "message.created", "message.created", "message.created", "conversation.closed"]
        convs = _convs(rx.events)
        assert {e["conversation"] for e in convs} == {conv} and {e["tenant"] for e in rx.events} == {tenant}
        assert [e["data"]["seq"] for e in convs] == [1, 1, 2, 3, 4, 5, 6]
        assert [e["data"]["text"] for e in convs if e["type"] == "message.created"] == [f"question {i}" for i in range(3)]
        assert len(set(rx.ids)) == len(rx.events)
        # The agent's status changes: connected, online, and gone when it left.
        await wait_for(lambda: [e["data"]["connected"] for e in rx.events if e["type"] == "agent.status"][-1:] == [False],
                       what="the agent's leaving")
        statuses = [(e["data"]["agent"], e["data"]["status"], e["data"]["connected"]) for e in rx.events
                    if e["type"] == "agent.status"]
        assert ("ann", "online", True) in statuses and statuses[-1] == ("ann", "online", False)
        # Another tenant's conversation sends nothing to this subscription.
        before = len(rx.events)
        await _chat(gw, uid("other"), 1)
        assert len(rx.events) == before
    finally:
        gw.stop()
        await rx.stop()


async def test_a_receiver_down_for_a_while_and_a_node_restart_lose_nothing(tmp_path):
    rx = await Receiver().start()
    rx.down = True
    tenant = uid("t")
    data = str(tmp_path / "data")
    config = _config(tmp_path, tenant, rx.url)
    gw = start_gateway(data_dir=data, config=config)
    try:
        await _chat(gw, tenant, 4)
        await wait_for(lambda: rx.refused >= 3, what="retries while the receiver is down")
    finally:
        gw.stop()  # the node goes away with the whole outbox undelivered
    assert rx.events == []
    gw = start_gateway(data_dir=data, config=config)
    try:
        refused = rx.refused
        await wait_for(lambda: rx.refused > refused, what="the restarted node retrying")
        rx.down = False
        await wait_for(lambda: len(_convs(rx.events)) == 8, what="every event, once the receiver is back")
        assert _kinds(rx.events) == ["conversation.opened", "conversation.queued", "conversation.assigned"] + \
            ["message.created"] * 4 + ["conversation.closed"]
        assert [e["data"]["seq"] for e in _convs(rx.events)] == [1] + list(range(1, 8))
    finally:
        gw.stop()
        await rx.stop()


async def test_an_event_past_its_age_is_a_dead_letter_until_replayed(tmp_path):
    import urllib.request

    rx = await Receiver().start()
    rx.down = True
    tenant = uid("t")
    gw = start_gateway(data_dir=str(tmp_path / "data"), config=_config(tmp_path, tenant, rx.url, max_age_s=0.3,
                                                                         events='["conversation.closed"]'))

    def admin(method: str, path: str) -> dict:
        req = urllib.request.Request(f"{gw.http_url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {gw.admin_token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return orjson.loads(r.read())

    try:
        conv = await _chat(gw, tenant, 1)
        await wait_for(lambda: admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"], what="a dead letter")
        dead = admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"]
        assert len(dead) == 1 and dead[0]["conv"] == conv and dead[0]["error"] == "HTTP 503"
        rx.down = False
        admin("POST", f"/admin/tenants/{tenant}/webhooks/dead/{dead[0]['id']}/replay")
        await wait_for(lambda: rx.events, what="the replayed event")
        assert _kinds(rx.events) == ["conversation.closed"] and rx.ids == [dead[0]["id"]]
        assert admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"] == []
    finally:
        gw.stop()
        await rx.stop()


def test_a_receiver_refuses_a_bad_signature_and_a_replay():
    body = b'{"id": "evt_1"}'
    now = int(time.time())
    good = {"Chatgw-Event-Id": "evt_1", "Chatgw-Timestamp": str(now),
            "Chatgw-Signature": webhooks.signature(SECRET, "evt_1", now, body)}
    assert webhooks.verify(SECRET, good, body) == "evt_1"
    with pytest.raises(ValueError, match="bad signature"):
        webhooks.verify(SECRET, good, body + b" ")
    with pytest.raises(ValueError, match="bad signature"):
        webhooks.verify("another-secret-of-the-right-length", good, body)
    old = now - 3600
    replayed = {**good, "Chatgw-Timestamp": str(old), "Chatgw-Signature": webhooks.signature(SECRET, "evt_1", old, body)}
    with pytest.raises(ValueError, match="replay window"):
        webhooks.verify(SECRET, replayed, body)


@pytest.mark.parametrize("line, why", [('url = "ftp://x"', "url must be http"), ('secret = "short"', "at least 16"),
                                       ('events = ["order.paid"]', "events must be some of")])
def test_a_bad_subscription_stops_the_node_at_start(tmp_path, line, why):
    key = line.split(" = ")[0]
    base = {"name": '"crm"', "tenant": '"t"', "url": '"http://127.0.0.1:9/hook"', "secret": f'"{SECRET}"'}
    base[key] = line.split(" = ", 1)[1]
    path = tmp_path / "bad.toml"
    path.write_text("[[webhooks]]\n" + "".join(f"{k} = {v}\n" for k, v in base.items()))
    run = subprocess.run([sys.executable, "-m", "gateway", "serve"], cwd="/", capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "GATEWAY_CONFIG": str(path), "GATEWAY_DATA_DIR": str(tmp_path / "d"),
                              "GATEWAY_HTTP_PORT": "0", "GATEWAY_WS_PORT": "0"})
    assert run.returncode != 0 and why in run.stderr + run.stdout


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_cluster_nodes_lose_no_event_when_the_appending_node_dies(request, kind, tmp_path):
    """Two nodes over Redis; the receiver is down while node A appends; A is SIGKILLed, and even the
    queue A left behind is lost (deleted): B's sweep finds the conversation, and once the receiver is
    back every event arrives once, in seq order, with the same ids whoever sends it."""
    import redis as redis_py

    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    rx = await Receiver().start()
    rx.down = True
    tenant = uid("t")
    settings = dict(coordinator="redis", redis_url=server.url, redis_cluster=str(kind == "redis-cluster").lower(),
                    jwt_secret=secrets.token_urlsafe(32), config=_config(tmp_path, tenant, rx.url), webhook_sweep_s=0.5)
    a_node, b_node = start_gateway(**settings), start_gateway(**settings)
    r = redis_py.Redis.from_url(server.url) if kind == "redis" else redis_py.RedisCluster.from_url(server.url)
    try:
        conv = await _chat(a_node, tenant, 3)
        await wait_for(lambda: rx.refused >= 1, what="a refused delivery")
        a_node.proc.kill()
        a_node.proc.wait()
        r.delete("cg:whq")  # what A queued is gone too: only the sweep can find the conversation now
        rx.down = False
        await wait_for(lambda: "conversation.closed" in _kinds(rx.events), what="every event, from B", timeout=30)
        assert _kinds(rx.events) == ["conversation.opened", "conversation.queued", "conversation.assigned",
                                     "message.created", "message.created", "message.created", "conversation.closed"]
        convs = _convs(rx.events)
        assert [e["data"]["seq"] for e in convs] == [1, 1, 2, 3, 4, 5, 6]
        assert {e["conversation"] for e in convs} == {conv}
        from gateway.webhooks_cluster import event_id

        assert [e["id"] for e in convs] == [event_id(tenant, conv, e["data"]["seq"], "crm", e["type"]) for e in convs]
        # The agent's events come from their own stream (a lease A may have held when it died: B takes it
        # over once it has seen A dead).
        await wait_for(lambda: ("ann", "online", True) in [(e["data"]["agent"], e["data"]["status"], e["data"]["connected"])
                                                           for e in rx.events if e["type"] == "agent.status"],
                       what="the agent's status events", timeout=30)
    finally:
        r.close()
        a_node.stop()
        b_node.stop()
        await rx.stop()


async def test_cluster_mode_dead_letters_are_listed_and_replayed(redis_server, tmp_path):
    import urllib.request

    rx = await Receiver().start()
    rx.down = True
    tenant = uid("t")
    gw = start_gateway(coordinator="redis", redis_url=redis_server.url,
                       config=_config(tmp_path, tenant, rx.url, max_age_s=0.3, events='["conversation.closed"]'))

    def admin(method: str, path: str) -> dict:
        req = urllib.request.Request(f"{gw.http_url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {gw.admin_token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return orjson.loads(r.read())

    try:
        conv = await _chat(gw, tenant, 1)
        await wait_for(lambda: admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"], what="a dead letter")
        dead = admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"]
        assert len(dead) == 1 and dead[0]["conv"] == conv and dead[0]["error"] == "HTTP 503"
        rx.down = False
        # The node sends it while the call waits: the receiver (in this loop) must keep answering.
        await asyncio.to_thread(admin, "POST", f"/admin/tenants/{tenant}/webhooks/dead/{dead[0]['id']}/replay")
        assert _kinds(rx.events) == ["conversation.closed"] and rx.ids == [dead[0]["id"]]
        assert admin("GET", f"/admin/tenants/{tenant}/webhooks/dead")["dead"] == []
    finally:
        gw.stop()
        await rx.stop()


async def test_a_receiver_down_for_ten_minutes_loses_nothing(tmp_path, monkeypatch):
    """Ten minutes of outage on a simulated clock: the node's own sender and store (in this process, a
    real SQLite file, a real receiver over HTTP) are driven pass by pass while the clock moves 15 s a
    pass. Nothing is dropped or dead-lettered; once the receiver is back every event arrives, in order."""
    import aiohttp

    from gateway.coordinator import Conversation
    from gateway.coordinator.embedded import EmbeddedCoordinator, Store

    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    rx = Receiver()
    rx_verify = webhooks.verify
    monkeypatch.setattr(webhooks, "verify", lambda secret, headers, body: rx_verify(secret, headers, body, now=clock[0]))
    await rx.start()
    rx.down = True
    store = Store(tmp_path / "data")
    c = EmbeddedCoordinator("n1", store=store)
    await c.start()
    sub = webhooks.Subscription(name="crm", tenant="t", url=rx.url, secret=SECRET, backoff_s=1.0)
    sender = webhooks.Sender(store, [sub])
    sender._http = aiohttp.ClientSession()
    try:
        await c.create_conversation(Conversation(id="c1", tenant="t", visitor="v", group="g"))
        for i in range(5):
            await c.append("t", "c1", {"t": "msg", "from": "v", "text": f"message {i}"}, f"m{i}")
        start = clock[0]
        while clock[0] - start < 600:  # the receiver is down for ten minutes
            await sender._drain(sub)
            clock[0] += 15
        assert rx.refused >= 8 and rx.events == [] and store.dead_letters("t") == []
        assert len(store.outbox_due("crm", 2**62, 100)) == 5  # all still there
        rx.down = False
        clock[0] += webhooks.BACKOFF_CAP_S * 1.5  # past any backoff
        await sender._drain(sub)
        assert [e["data"]["text"] for e in rx.events] == [f"message {i}" for i in range(5)]
        assert store.outbox_due("crm", 2**62, 100) == []
    finally:
        await sender._http.close()
        await c.close()
        await rx.stop()

"""Messaging channels (gateway/channels, docs/channels.md): Telegram's Bot API and a generic HTTP
channel beside the web widget and the REST API, on a real node.

Telegram is replaced by a local server that speaks its documented Bot API wire format
(https://core.telegram.org/bots/api: Update objects POSTed to the webhook with
X-Telegram-Bot-Api-Secret-Token; sendMessage answered {"ok": true, "result": Message}); the
generic channel's far end is a local server checking our signatures. Nothing outside this machine
is called.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request

import orjson
from aiohttp import web

from gateway import webhooks

from .support import Client, start_gateway, uid, wait_for

TG_SECRET = secrets.token_urlsafe(24)
HTTP_SECRET = secrets.token_urlsafe(24)
TG_TOKEN = "123456:ABC-DEF"


class FakeTelegram:
    """The Bot API's sendMessage, recorded; `failing` answers 502 as Telegram does when it is down."""

    def __init__(self):
        self.sent: list[dict] = []
        self.failing = 0
        self.blocked_text: str | None = None  # answered 403 for good, as when a user blocked the bot

    async def send_message(self, request: web.Request) -> web.Response:
        assert request.match_info["token"] == TG_TOKEN
        body = await request.json()
        if self.failing:
            self.failing -= 1
            return web.json_response({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502)
        if body["text"] == self.blocked_text:
            return web.json_response({"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"},
                                     status=403)
        self.sent.append(body)
        return web.json_response({"ok": True, "result": {"message_id": len(self.sent), "chat": {"id": body["chat_id"]},
                                                         "text": body["text"], "date": 0}})


class FakeApp:
    """The generic HTTP channel's far end (a site's own app backend)."""

    def __init__(self):
        self.got: list[dict] = []

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhooks.verify(HTTP_SECRET, request.headers, body)
        self.got.append(orjson.loads(body))
        return web.Response(status=204)


async def _serve(routes: list[tuple[str, str, object]]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")


async def _telegram(tg: FakeTelegram, tmp_path) -> tuple[web.AppRunner, str, object]:
    """`tg` served locally, a tenant, and a config file with a Telegram channel `tg` for it pointed there."""
    tg_runner, tg_url = await _serve([("POST", "/bot{token}/sendMessage", tg.send_message)])
    tenant = uid("t")
    cfg = tmp_path / "chatgw.toml"
    cfg.write_text(f'[[channels]]\nkind = "telegram"\nname = "tg"\ntenant = "{tenant}"\nsecret = "{TG_SECRET}"\n'
                   f'token = "{TG_TOKEN}"\napi_base = "{tg_url}"\n')
    return tg_runner, tenant, cfg


def _update(update_id: int, chat_id: int, message_id: int, text: str) -> bytes:
    """A Telegram Update with a private text message."""
    return orjson.dumps({"update_id": update_id, "message": {
        "message_id": message_id, "date": 1796000000, "text": text,
        "from": {"id": chat_id, "is_bot": False, "first_name": "Alice"}, "chat": {"id": chat_id, "type": "private"}}})


def _signed(event_id: str, body: bytes) -> dict[str, str]:
    import time

    ts = int(time.time())
    return {"Chatgw-Event-Id": event_id, "Chatgw-Timestamp": str(ts),
            "Chatgw-Signature": webhooks.signature(HTTP_SECRET, event_id, ts, body)}


async def test_one_conversation_through_telegram_the_http_channel_the_widget_and_the_api(tmp_path):
    tg, app = FakeTelegram(), FakeApp()
    tg_runner, tg_url = await _serve([("POST", "/bot{token}/sendMessage", tg.send_message)])
    app_runner, app_url = await _serve([("POST", "/inbox", app.receive)])
    tenant = uid("t")
    cfg = tmp_path / "chatgw.toml"
    cfg.write_text(
        f'[[channels]]\nkind = "telegram"\nname = "tg"\ntenant = "{tenant}"\nsecret = "{TG_SECRET}"\n'
        f'token = "{TG_TOKEN}"\napi_base = "{tg_url}"\n\n'
        f'[[channels]]\nkind = "http"\nname = "app"\ntenant = "{tenant}"\nsecret = "{HTTP_SECRET}"\nurl = "{app_url}/inbox"\n')
    gw = start_gateway(data_dir=str(tmp_path / "data"), config=str(cfg))
    from .test_api import _http, _key

    try:
        key = _key(gw, tenant)
        # One contact: Telegram chat 777 and the app's user u-1 are the widget's visitor alice.
        for channel, external in (("tg", "777"), ("app", "u-1")):
            status, _, _ = _http(gw, "POST", "/api/v1/contacts", {"channel": channel, "external_id": external,
                                                                   "visitor": "alice"}, key=key)
            assert status == 200
        assert _http(gw, "POST", "/api/v1/contacts", {"channel": "nope", "external_id": "1", "visitor": "a"},
                     key=key)[0] == 404
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")

        tg_hook = f"{gw.http_url}/channels/tg"
        update = _update(1001, 777, 1, "hi from telegram")
        status, got = _post(tg_hook, update, {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})
        assert status == 200 and got["dup"] is False
        first = await agent.next("msg", lambda e: e["text"] == "hi from telegram")
        conv = first["conv"]
        assert first["from"] == "alice" and first["ch"] == "tg"
        # Telegram delivers the same update again (our 200 was lost): stored once.
        assert _post(tg_hook, update, {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}) == (200, {**got, "dup": True})
        assert _post(tg_hook, update, {"X-Telegram-Bot-Api-Secret-Token": "wrong"})[0] == 401

        await agent.msg(conv, "hello Alice, how can I help?")
        await wait_for(lambda: any(m["text"] == "hello Alice, how can I help?" for m in tg.sent), what="sendMessage")
        assert tg.sent[-1]["chat_id"] == 777

        body = orjson.dumps({"user": "u-1", "text": "hi from the app"})
        status, got = _post(f"{gw.http_url}/channels/app", body, _signed("app-msg-1", body))
        assert status == 200
        assert _post(f"{gw.http_url}/channels/app", body, {**_signed("app-msg-1", body), "Chatgw-Signature": "v1=00"})[0] == 401
        assert (await agent.next("msg", lambda e: e["text"] == "hi from the app"))["ch"] == "app"

        # The widget: alice's open conversation, with everything so far.
        v = await Client.connect(gw, "visitor", "alice", tenant)
        assert [c["conv"] for c in v.welcome["convs"]] == [conv]
        await v.msg(conv, "and from the web page")
        status, ack, _ = _http(gw, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "status-1",
                                                                                       "text": "your order shipped"},
                               key=key)
        assert status == 200
        # What the others wrote reaches both of alice's platforms, in order.
        await wait_for(lambda: [m["text"] for m in tg.sent][-1:] == ["your order shipped"], what="telegram got it")
        await wait_for(lambda: [m.get("text") for m in app.got][-1:] == ["your order shipped"], what="the app got it")
        assert [m["text"] for m in tg.sent] == ["hello Alice, how can I help?", "your order shipped"]
        # The app joined later: it gets what others wrote that it had not had (not alice's own from the web page).
        assert [m["text"] for m in app.got] == ["hello Alice, how can I help?", "your order shipped"]
        # One log: ordered, every message once, each stamped with where it came from.
        status, log, _ = _http(gw, "GET", f"/api/v1/conversations/{conv}/messages?limit=100", key=key)
        msgs = [(e["text"], e.get("ch")) for e in log["entries"] if e["t"] == "msg"]
        assert msgs == [("hi from telegram", "tg"), ("hello Alice, how can I help?", None), ("hi from the app", "app"),
                        ("and from the web page", None), ("your order shipped", "api")]
        assert [e["seq"] for e in log["entries"]] == list(range(1, len(log["entries"]) + 1))
    finally:
        gw.stop()
        await tg_runner.cleanup()
        await app_runner.cleanup()


async def test_telegram_down_delays_the_answers_and_a_restart_loses_none(tmp_path):
    tg = FakeTelegram()
    tg_runner, tenant, cfg = await _telegram(tg, tmp_path)
    data = str(tmp_path / "data")
    gw = start_gateway(data_dir=data, config=str(cfg))
    secret = gw.secret
    try:
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
        assert _post(f"{gw.http_url}/channels/tg", _update(1, 42, 1, "hello?"),
                     {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})[0] == 200
        got = await agent.next("msg", lambda e: e["text"] == "hello?")
        conv = got["conv"]
        assert got["from"] == "tg:42"  # a user nobody linked: a visitor of their own, named after the chat
        tg.failing = 10_000  # Telegram is down
        for i in range(3):
            await agent.msg(conv, f"answer {i}")
        await wait_for(lambda: tg.failing < 10_000 - 2, what="retries while Telegram is down")
    finally:
        gw.stop()
    tg.failing = 0
    gw = start_gateway(data_dir=data, config=str(cfg), jwt_secret=secret)
    try:
        await wait_for(lambda: len(tg.sent) == 3, what="the answers, once the node is back", timeout=20)
        assert [m["text"] for m in tg.sent] == ["answer 0", "answer 1", "answer 2"]
        assert {m["chat_id"] for m in tg.sent} == {42}
    finally:
        gw.stop()
        await tg_runner.cleanup()


async def test_in_cluster_mode_another_node_takes_a_dead_nodes_contacts_over(tmp_path, redis_server):
    """Two nodes over Redis; the node that relays a Telegram contact is SIGKILLed; the other takes the
    contact over (its lease lapsed) and the agent's answers reach Telegram once each, in order."""
    tg = FakeTelegram()
    tg_runner, tenant, cfg = await _telegram(tg, tmp_path)
    settings = dict(coordinator="redis", redis_url=redis_server.url, jwt_secret=secrets.token_urlsafe(32), config=str(cfg),
                    channel_owner_s=1)
    a_node, b_node = start_gateway(**settings), start_gateway(**settings)
    try:
        agent = await Client.connect(b_node, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
        assert _post(f"{a_node.http_url}/channels/tg", _update(1, 99, 1, "hello from the app"),
                     {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})[0] == 200
        conv = (await agent.next("msg", lambda e: e["text"] == "hello from the app"))["conv"]
        await agent.msg(conv, "answer 1")
        await wait_for(lambda: [m["text"] for m in tg.sent] == ["answer 1"], what="the first answer, through A")
        a_node.proc.kill()
        a_node.proc.wait()
        await agent.msg(conv, "answer 2")
        await agent.msg(conv, "answer 3")
        await wait_for(lambda: len(tg.sent) >= 3, what="the answers, through B", timeout=20)
        assert [m["text"] for m in tg.sent] == ["answer 1", "answer 2", "answer 3"]
        assert {m["chat_id"] for m in tg.sent} == {99}
    finally:
        a_node.stop()
        b_node.stop()
        await tg_runner.cleanup()


async def test_a_message_telegram_refuses_for_good_is_skipped_and_the_rest_goes_on(tmp_path):
    tg = FakeTelegram()
    tg.blocked_text = "refused one"
    tg_runner, tenant, cfg = await _telegram(tg, tmp_path)
    gw = start_gateway(data_dir=str(tmp_path / "data"), config=str(cfg))
    try:
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
        assert _post(f"{gw.http_url}/channels/tg", _update(1, 5, 1, "hi"), {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})[0] == 200
        conv = (await agent.next("msg", lambda e: e["text"] == "hi"))["conv"]
        for text in ("first", "refused one", "after it"):
            await agent.msg(conv, text)
        await agent.send({"t": "msg", "conv": conv, "id": "att", "text": "", "att": [{"ref": "s3://x/y.pdf", "name": "y.pdf"}]})
        await wait_for(lambda: len(tg.sent) == 3, what="the others, past the refused one")
        assert [m["text"] for m in tg.sent] == ["first", "after it", "(attachment: y.pdf)"]
        # A secret header that is not even ASCII is a wrong secret, not a server error.
        assert _post(f"{gw.http_url}/channels/tg", _update(2, 5, 2, "x"),
                     {"X-Telegram-Bot-Api-Secret-Token": "\u00e9t\u00e9"})[0] == 401
    finally:
        gw.stop()
        await tg_runner.cleanup()

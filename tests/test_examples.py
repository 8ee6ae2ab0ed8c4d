"""Every program in examples/ runs as a user would run it, and does what it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import ROOT


def run_example(name: str, *args: str) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                       timeout=120, cwd="/")  # from anywhere, as an installed gateway would be
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_embedded_node_relays_both_ways():
    out = run_example("embedded_node.py")
    assert "agent got seq 3: 'Where is my order?' (visitor's ack: seq 3)" in out
    assert "visitor got seq 4: 'It ships today.'" in out and out.rstrip().endswith("node stopped")


def test_custom_bot_answers_then_hands_off():
    out = run_example("custom_bot.py")
    assert "bot (orders, confidence 0.95): Hello! Order 1001 is shipped on Monday, arriving Thursday." in out
    assert "handed to a person: not_an_order_question" in out


@pytest.mark.parametrize("messages", ["6", "20"])
def test_resuming_client_loses_and_repeats_nothing(gateway, messages):
    out = run_example("resuming_client.py", "--http", gateway.http_url, "--messages", messages)
    assert "connection lost with" in out
    assert f"sent {messages}, acked {messages}, saw seqs 1..{int(messages) + 1}, repeats 0, no gap" in out


async def test_webhook_receiver_gets_a_nodes_events(tmp_path):
    """examples/webhook_receiver.py as a site would run it, a node sending to it (docs/webhooks.md)."""
    import secrets as _secrets

    from .support import Client, start_gateway, uid, wait_for

    # A URL-safe secret may start with "-" (one run in 64 drew such a one, and argparse took it for an
    # option): this one always does, passed as the example's usage says.
    secret = "-" + _secrets.token_urlsafe(24)
    out = tmp_path / "events.jsonl"
    rx = subprocess.Popen([sys.executable, str(ROOT / "examples" / "webhook_receiver.py"), "--port", "0",
                           f"--secret={secret}", "--events-out", str(out)], stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        port = int(rx.stdout.readline().split()[1])
        tenant = uid("t")
        cfg = tmp_path / "chatgw.toml"
        cfg.write_text(f'[[webhooks]]\nname = "crm"\ntenant = "{tenant}"\nurl = "http://127.0.0.1:{port}/chatgw"\n'
                       f'secret = "{secret}"\nevents = ["message.created"]\n')
        gw = start_gateway(data_dir=str(tmp_path / "data"), config=str(cfg))
        try:
            v = await Client.connect(gw, "visitor", uid("v"), tenant)
            conv = (await v.request({"t": "open"}, "conv"))["conv"]
            await v.msg(conv, "hello")
            await v.msg(conv, "anyone?")
            await wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 2, what="two events written")
            import json

            events = [json.loads(line) for line in out.read_text().splitlines()]
            assert [e["data"]["text"] for e in events] == ["hello", "anyone?"]
            assert all(e["type"] == "message.created" and e["conversation"] == conv for e in events)
        finally:
            gw.stop()
    finally:
        rx.terminate()
        rx.wait(10)


async def test_sms_channel_example_relays_both_ways(tmp_path):
    """examples/sms_channel.py loaded by a node as `kind = "sms_channel:SmsChannel"`, against a local
    stand-in for the SMS gateway (it records what it is asked to send)."""
    import json
    import secrets as _secrets
    import urllib.request

    from aiohttp import web

    from .support import Client, start_gateway, uid, wait_for

    sent: list[dict] = []

    async def send(request: web.Request) -> web.Response:
        sent.append(await request.json())
        return web.json_response({"queued": True})

    app = web.Application()
    app.router.add_post("/send", send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    secret, tenant = _secrets.token_urlsafe(20), uid("t")
    cfg = tmp_path / "chatgw.toml"
    cfg.write_text(f'[[channels]]\nkind = "sms_channel:SmsChannel"\nname = "sms"\ntenant = "{tenant}"\n'
                   f'secret = "{secret}"\nurl = "http://127.0.0.1:{port}/send"\n')
    gw = start_gateway(data_dir=str(tmp_path / "data"), config=str(cfg), pythonpath=str(ROOT / "examples"))
    try:
        agent = await Client.connect(gw, "agent", "ann", tenant)
        await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
        req = urllib.request.Request(f"{gw.http_url}/channels/sms", method="POST", headers={"X-Sms-Secret": secret},
                                     data=json.dumps({"from": "+15551234567", "id": "sms-1", "body": "hi"}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        got = await agent.next("msg", lambda e: e["text"] == "hi")
        assert got["ch"] == "sms" and got["from"] == "sms:+15551234567"
        await agent.msg(got["conv"], "hello from ann")
        await wait_for(lambda: sent, what="the SMS out")
        assert sent == [{"to": "+15551234567", "body": "hello from ann"}]
    finally:
        gw.stop()
        await runner.cleanup()

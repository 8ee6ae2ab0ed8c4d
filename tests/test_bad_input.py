"""Bad input gets a clear answer and hurts nobody else (non-negotiable 4, issue 2)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
import websockets

from .support import Client, uid, wait_for
from .wsraw import RawWS


async def still_works(c: Client) -> None:
    pong = await c.request({"t": "ping"}, "pong")
    assert pong["t"] == "pong"


async def raw(gw, role: str = "visitor", **kw) -> RawWS:
    token = gw.token(role, uid(role), uid("t"))
    ws, status, head = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={token}", **kw)
    assert status == 101, head
    return ws


@pytest.mark.parametrize(
    "frame, code, field",
    [
        ('{"t": "msg", "conv": ', "bad_envelope", None),
        ("[1, 2, 3]", "bad_envelope", None),
        ('"just a string"', "bad_envelope", None),
        ('{"t": "launch_rockets"}', "unknown_kind", "t"),
        ('{"no_kind": 1}', "unknown_kind", "t"),
        ('{"t": "msg", "conv": "c1", "text": "hi"}', "missing_field", "id"),
        ('{"t": "msg", "conv": "c1", "id": 7, "text": "hi"}', "bad_field", "id"),
        ('{"t": "msg", "conv": "c1", "id": "x", "text": "' + "a" * 5000 + '"}', "bad_field", "text"),
        ('{"t": "history", "conv": "c1", "limit": 1000}', "bad_field", "limit"),
        ('{"t": "status", "status": "sleeping"}', "bad_field", "status"),
        ('{"t": "ping", "rid": true}', "bad_field", "rid"),
        ('{"t": "transfer", "conv": "c1"}', "missing_field", "to"),
        ('{"t": "msg", "conv": "c1", "id": "x", "text": "", "att": [{"ref": "r", "secret": 1}]}', "bad_field", "att"),
        ('{"t": "msg", "conv": "c1", "id": "x", "text": ""}', "bad_field", "text"),
        ('{"t": "open", "meta": {"k": 1, "' + "k" * 65 + '": 2}}', "bad_field", "meta"),
    ],
)
async def test_malformed_json_envelopes_get_error_and_connection_stays(gateway, frame, code, field):
    c = await Client.connect(gateway, "visitor", uid("v"), uid("t"))
    await c.send(frame)
    err = await c.next("error")
    assert err["code"] == code, err
    assert err.get("field") == field
    await still_works(c)


async def test_malformed_msgpack_gets_error(gateway):
    c = await Client.connect(gateway, "visitor", uid("v"), uid("t"), binary=True)
    await c.send(b"\xc1\xff\x00garbage")
    assert (await c.next("error"))["code"] == "bad_envelope"
    await c.send(b"\x93\x01\x02\x03")  # an array, not a map
    assert (await c.next("error"))["code"] == "bad_envelope"
    await still_works(c)


async def test_message_to_foreign_conversation_is_refused(gateway):
    tenant = uid("t")
    owner = await Client.connect(gateway, "visitor", uid("v"), tenant)
    conv = (await owner.request({"t": "open"}, "conv"))["conv"]
    stranger = await Client.connect(gateway, "visitor", uid("v"), tenant)
    for env in (
        {"t": "msg", "conv": conv, "id": "a", "text": "let me in"},
        {"t": "history", "conv": conv},
        {"t": "resume", "conv": conv, "after": 0},
        {"t": "typing", "conv": conv, "on": True},
    ):
        err = await stranger.request(env, "error")
        assert err["code"] == "not_participant"
    # Same conversation id from another tenant: indistinguishable from a missing one.
    other = await Client.connect(gateway, "service", uid("svc"), uid("other-tenant"))
    err = await other.request({"t": "history", "conv": conv}, "error")
    assert err["code"] == "not_participant"
    hist = await owner.request({"t": "history", "conv": conv}, "history")
    assert not [e for e in hist["msgs"] if e["t"] == "msg"]
    await still_works(stranger)


async def test_role_checks(gateway):
    tenant = uid("t")
    v = await Client.connect(gateway, "visitor", uid("v"), tenant)
    assert (await v.request({"t": "status", "status": "online"}, "error"))["code"] == "forbidden"
    a = await Client.connect(gateway, "agent", uid("a"), tenant)
    assert (await a.request({"t": "open"}, "error"))["code"] == "forbidden"


async def test_bad_tokens_get_401_before_any_websocket(gateway):
    good = gateway.token("visitor", "v1", "tenant-a")
    forged = gateway.token("visitor", "v1", "tenant-a")[:-4] + "AAAA"
    from gateway import auth

    expired = auth.mint(gateway.secret, tenant="tenant-a", user="v1", role="visitor", ttl_s=-10)
    wrong_secret = auth.mint("x" * 40, tenant="tenant-a", user="v1", role="visitor")
    cases = {
        "/ws?v=1": b"missing token",
        f"/ws?v=1&token={forged}": b"invalid token",
        f"/ws?v=1&token={expired}": b"expired",
        f"/ws?v=1&token={wrong_secret}": b"invalid token",
        f"/ws?v=1&token={good}&tenant=tenant-b": b"another tenant",
    }
    for path, reason in cases.items():
        ws, status, head = await RawWS.connect("127.0.0.1", gateway.ws_port, path)
        assert ws is None and status == 401, (path, head)
        assert reason in head, head
    ws, status, head = await RawWS.connect("127.0.0.1", gateway.ws_port, f"/ws?v=9&token={good}")
    assert status == 400 and b"version" in head
    ws, status, _ = await RawWS.connect("127.0.0.1", gateway.ws_port, f"/ws?v=1&token={good}&tenant=tenant-a")
    assert status == 101
    with pytest.raises(websockets.InvalidStatus) as e:
        await websockets.connect(f"{gateway.ws_url}?v=1&token={forged}")
    assert e.value.response.status_code == 401


async def test_oversize_frame_closes_1009(gateway):
    c = await Client.connect(gateway, "visitor", uid("v"), uid("t"))
    await c.send('{"t":"ping","pad":"' + "x" * (70 * 1024) + '"}')
    assert await asyncio.wait_for(c.closed, 10) == 1009


async def test_oversize_fragmented_message_closes_1009(gateway):
    ws = await raw(gateway)
    ws.send_frame(0x1, b"x" * 40_000, fin=False)
    ws.send_frame(0x0, b"x" * 40_000, fin=True)
    assert await asyncio.wait_for(ws.read_until_close(), 10) == 1009


async def test_invalid_utf8_closes_1007(gateway):
    ws = await raw(gateway)
    ws.send_frame(0x1, b'{"t":"ping","x":"\xff\xfe"}')
    assert await asyncio.wait_for(ws.read_until_close(), 10) == 1007


@pytest.mark.parametrize(
    "frames",
    [
        [(0x1, b'{"t":"ping"}', True, 4)],  # RSV1 without an extension
        [(0x0, b"orphan continuation", True, 0)],
        [(0x1, b'{"t":', False, 0), (0x1, b'"ping"}', True, 0)],  # new message inside a fragmented one
        [(0x3, b"reserved opcode", True, 0)],
    ],
)
async def test_protocol_violations_close_1002(gateway, frames):
    ws = await raw(gateway)
    for op, payload, fin, rsv in frames:
        ws.send_frame(op, payload, fin=fin, rsv=rsv)
    assert await asyncio.wait_for(ws.read_until_close(), 10) == 1002


async def test_fragmented_message_is_reassembled(gateway):
    ws = await raw(gateway)
    assert (await ws.read_frame())[0] == 0x1  # welcome
    ws.send_frame(0x1, b'{"t":"pi', fin=False)
    ws.send_frame(0x9, b"ping in the middle")  # control frames may interleave
    ws.send_frame(0x0, b'ng","rid":"r1"}', fin=True)
    while True:
        op, payload = await asyncio.wait_for(ws.read_frame(), 10)
        if op == 0x1 and b'"pong"' in payload:
            assert b'"r1"' in payload
            break


async def test_flood_is_rate_limited_then_closed_1008(gateway_factory):
    gw = gateway_factory(rate_per_s=5, rate_burst=5, flood_strikes=3)
    tenant = uid("t")
    neighbour = await Client.connect(gw, "visitor", uid("v"), tenant)
    flooder = await Client.connect(gw, "visitor", uid("v"), tenant)
    for i in range(50):
        try:
            await flooder.send({"t": "ping", "rid": str(i)})
        except websockets.ConnectionClosed:
            break
    err = await flooder.next("error", lambda e: e["code"] == "rate_limited")
    assert "retry" in err["message"]
    assert await asyncio.wait_for(flooder.closed, 10) == 1008
    await still_works(neighbour)


async def test_slow_reader_is_disconnected_and_neighbours_unaffected(gateway_factory):
    gw = gateway_factory(max_write_buffer=16384, rate_per_s=100000, rate_burst=100000)
    tenant = uid("t")
    agent = await Client.connect(gw, "agent", "a1", tenant)
    await agent.request({"t": "status", "status": "online"}, "status")
    token = gw.token("visitor", "sloth", tenant)
    sloth, status, _ = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={token}", rcvbuf=4096)
    assert status == 101
    sloth.send_frame(0x1, b'{"t":"open"}')
    assigned = await agent.next("assigned")
    conv = assigned["conv"]
    big = "y" * 3900
    # The visitor's socket is never read: the agent's messages pile up at the server.
    async with aiohttp.ClientSession() as s:
        async def dropped() -> bool:
            async with s.get(gw.http_url + "/metrics") as r:
                return "chatgw_slow_readers_total 1.0" in await r.text()

        sent = 0
        deadline = time.monotonic() + 30
        while not await dropped():
            assert time.monotonic() < deadline, "slow reader was never dropped"
            for _ in range(50):
                await agent.send({"t": "msg", "conv": conv, "id": f"m{sent}", "text": big})
                sent += 1
            await agent.next("ack", lambda e, n=sent - 1: e["id"] == f"m{n}")
    # Nothing was lost: every acked message is in the log for the visitor to resume.
    visitor = await Client.connect(gw, "visitor", "sloth", tenant)
    await visitor.send({"t": "resume", "conv": conv, "after": 0})
    done = await visitor.next("resumed", timeout=30)
    texts = [e for e in visitor.entries(conv) if e["t"] == "msg"]
    assert len(texts) == sent and done["seq"] == texts[-1]["seq"]
    await still_works(agent)
    assert gw.alive()


async def test_silent_peer_is_dropped_by_heartbeat_and_cleaned_up(gateway_factory):
    gw = gateway_factory(heartbeat_s=0.3, heartbeat_timeout_s=0.3)
    ws = await raw(gw)  # a raw socket never answers pings
    code = await asyncio.wait_for(ws.read_until_close(), 15)
    assert code in (1001, None)
    # A client that answers pings (websockets does, automatically) stays.
    c = await Client.connect(gw, "visitor", uid("v"), uid("t"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s:
        async def connections() -> int:
            async with s.get(gw.http_url + "/admin/stats") as r:
                return (await r.json())["hub"]["connections"]

        await wait_for(lambda: _eq(connections(), 1), what="the dropped connection to be cleaned up")
    await still_works(c)


async def _eq(coro, value) -> bool:
    return (await coro) == value


def test_production_refuses_default_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_ENV": "production", "GATEWAY_JWT_SECRET": "changeme"}
    p = subprocess.run([sys.executable, "-m", "gateway", "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2
    assert "production refuses to start" in p.stderr
    env["GATEWAY_JWT_SECRET"] = ""
    p = subprocess.run([sys.executable, "-m", "gateway", "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "jwt_secret" in p.stderr


def test_secrets_in_config_tables_are_never_printed(tmp_path):
    from gateway.config import load

    cfg = load(None, env={}, bots={"backends": {"llm": {"type": "openai", "api_key": "sk-live-123", "base_url": "http://x"}}},
               redis_url="redis://user:hunter2@127.0.0.1:6379/0")
    shown = str(cfg.describe())
    assert "sk-live-123" not in shown and "hunter2" not in shown and "http://x" in shown


def _one_write(ws, frames: list[tuple[int, bytes, int]]) -> None:
    """Several frames in one TCP write, so the node reads them as one burst (picows' last_in_buffer)."""
    parts: list[bytes] = []
    write, ws.writer.write = ws.writer.write, parts.append
    try:
        for opcode, payload, rsv in frames:
            ws.send_frame(opcode, payload, rsv=rsv)
    finally:
        ws.writer.write = write
    write(b"".join(parts))


async def _replies_then_close(ws) -> tuple[list[str], int | None]:
    rids: list[str] = []
    try:
        while True:
            op, payload = await ws.read_frame()
            if op == 0x8:
                return rids, (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
            data = orjson.loads(payload)
            rids += [e["rid"] for e in (data if isinstance(data, list) else [data]) if e.get("t") == "pong"]
    except (asyncio.IncompleteReadError, ConnectionError):
        return rids, None


async def test_replies_to_a_burst_go_out_before_the_close_that_ends_it(gateway):
    """The node flushes at the end of a read burst (its last frame); a burst whose last frame is the
    client's close still gets every earlier frame's reply, in order, before the close."""
    ws = await raw(gateway)
    _one_write(ws, [(0x1, orjson.dumps({"t": "ping", "rid": f"r{i}"}), 0) for i in range(3)]
               + [(0x8, (1000).to_bytes(2, "big"), 0)])
    rids, got = await _replies_then_close(ws)
    ws.close()
    assert rids == ["r0", "r1", "r2"] and got == 1000


async def test_a_burst_ending_in_a_protocol_error_is_closed_with_1002(gateway):
    """The connection is failed at once (RFC 6455 7.1.7): replies not yet written when the bad frame is
    read may be dropped (a `msg` among them was stored and is acked again on its retry), never reordered."""
    ws = await raw(gateway)
    _one_write(ws, [(0x1, orjson.dumps({"t": "ping", "rid": f"r{i}"}), 0) for i in range(3)]
               + [(0x1, b'{"t": "ping"}', 0b100)])  # RSV1 without an extension
    rids, got = await _replies_then_close(ws)
    ws.close()
    assert got == 1002 and rids == ["r0", "r1", "r2"][:len(rids)]


async def test_a_burst_cut_off_mid_frame_still_gets_its_replies(gateway):
    ws = await raw(gateway)
    _one_write(ws, [(0x1, orjson.dumps({"t": "ping", "rid": f"r{i}"}), 0) for i in range(3)])
    ws.writer.write(b"\x81\xfe")  # the start of a fourth frame, then nothing
    got = []
    while len(got) < 3:
        op, payload = await ws.read_frame()
        data = orjson.loads(payload)
        got += [e["rid"] for e in (data if isinstance(data, list) else [data]) if e.get("t") == "pong"]
    assert got == ["r0", "r1", "r2"]
    ws.close()


def test_a_gateway_table_keeps_the_files_other_tables_and_a_setting_in_both_places_is_refused(tmp_path):
    """A file with its settings under [gateway] and a [bots] table beside it: both count (the other
    tables were once dropped silently). The same setting inside and outside [gateway] is refused."""
    from gateway.config import ConfigError, load

    path = tmp_path / "chatgw.toml"
    path.write_text('[gateway]\nmax_text = 123\n\n[bots]\ndefault = ""\n')
    cfg = load(path, env={})
    assert cfg.max_text == 123 and cfg.bots == {"default": ""}
    path.write_text('max_text = 5\n[gateway]\nmax_text = 123\n')
    with pytest.raises(ConfigError, match="max_text set both in \\[gateway\\] and outside it"):
        load(path, env={})
    path.write_text('max_text = 5\nrate_per_s = "fast"\n')
    with pytest.raises(ConfigError, match="rate_per_s must be a number"):
        load(path, env={})

"""Running a node in production (docs/operations.md), against real nodes on real sockets:

- log lines: no per-connection INFO line, one line per refused upgrade with the peer's address,
  a client's protocol error logged as a client fault (never at ERROR), JSON lines on request;
- SIGHUP reload: limits and log level change live, a JWT key rotation accepts old and new tokens
  for the grace window, a bad file changes nothing and says why;
- the memory guard (thresholds set through a reload): upgrades refused at the soft line, the
  idlest connections closed with 1013 at the hard one, nothing acked lost;
- drain (the admin call and SIGTERM): readiness false, upgrades refused, clients told to leave
  with a jittered retry_ms, the node exits once they have.

The rolling restart of a three-node cluster is in tests/test_rolling_restart.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway import auth

from .support import Client, metric, scrape, start_gateway, uid, wait_for
from .wsraw import RawWS


def _http(gw, path: str, method: str = "GET", token: str | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(gw.http_url + path, method=method,
                                 headers={"Authorization": f"Bearer {token or gw.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, dict(r.headers), (orjson.loads(body) if body[:1] in b"{[" else {"text": body.decode()})
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, dict(e.headers), (orjson.loads(body) if body[:1] in b"{[" else {"text": body.decode()})


def _metric(gw, name: str) -> float:
    return metric(scrape(gw), name)


def _log(gw) -> str:
    return "".join(gw.output)


@pytest.fixture
def config_file():
    """A TOML file the test rewrites before each SIGHUP; the node reads it at start."""
    fd, path = tempfile.mkstemp(prefix="chatgw-", suffix=".toml")
    os.close(fd)
    yield Path(path)
    os.unlink(path)


async def _reload(gw, config: Path, text: str, outcome: str = "applied") -> dict:
    """Write `text`, SIGHUP the node, wait until its metrics count the reload's outcome."""
    name = f'chatgw_config_reloads_total{{outcome="{outcome}"}}'
    before = _metric(gw, name)
    config.write_text(text)
    gw.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: _metric(gw, name) > before, timeout=30, what=f"a reload {outcome}")
    return _http(gw, "/admin/stats")[2]["last_reload"]


# log lines


async def test_log_lines_one_per_refused_upgrade_none_per_connection_client_faults_not_errors():
    gw = start_gateway(log_level="info")
    try:
        clients = [await Client.connect(gw, "visitor", uid("v"), "t1") for _ in range(20)]
        for c in clients:
            await c.close()
        # A bad token: one line, with the peer's address (the port our socket used).
        sock = socket.create_connection(("127.0.0.1", gw.ws_port))
        port = sock.getsockname()[1]
        sock.sendall(b"GET /ws?v=1&token=nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
        sock.close()
        line = await wait_for(lambda: next((x for x in gw.output if f"127.0.0.1:{port}" in x), None),
                              what="the refused upgrade's line")
        assert "upgrade refused 401" in line and "invalid token" in line and " INFO " in line
        # A client that breaks the protocol (reserved bits set): a client fault, not a node error.
        raw, status, _ = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={gw.token('visitor', uid('v'))}")
        assert status == 101
        raw.send_frame(0x1, b"{}", rsv=4)  # RSV1, no extension negotiated
        await wait_for(lambda: "client fault (protocol)" in _log(gw), what="the client fault's line")
        await wait_for(lambda: _metric(gw, "chatgw_client_faults_total") >= 1, what="the fault counted")
        # A frame over max_frame: picows' parser refuses it; one line and one count, not two.
        big, status, _ = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={gw.token('visitor', uid('v'))}")
        big.send_frame(0x1, b"x" * 70_000)
        await wait_for(lambda: "exceeding max allowed size" in _log(gw), what="the oversize frame's line")
        # Once every connection has ended, every line about them is written: then count.
        await wait_for(lambda: _metric(gw, 'chatgw_connections{role="visitor"}') == 0, what="the connections to end")
        assert _log(gw).count("client fault") == 2 and _metric(gw, "chatgw_client_faults_total") == 2
        out = _log(gw)
        assert out.count("upgrade refused") == 1
        assert "New connection accepted" not in out and "Disconnected" not in out
        assert " ERROR " not in out, out
    finally:
        gw.stop()


async def test_json_log_lines_carry_their_fields():
    gw = start_gateway(log_level="info", log_format="json")
    try:
        sock = socket.create_connection(("127.0.0.1", gw.ws_port))
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 404")
        sock.close()
        line = await wait_for(lambda: next((x for x in gw.output if "upgrade refused" in x), None), what="the line")
        record = json.loads(line)
        assert record["level"] == "INFO" and record["logger"] == "gateway.upgrades"
        assert record["status"] == 404 and record["peer"].startswith("127.0.0.1:")
        assert "/nowhere" in record["reason"]
    finally:
        gw.stop()


# reload


async def test_reload_changes_limits_live_and_a_bad_file_changes_nothing(config_file):
    config_file.write_text("max_text = 4000\n")
    gw = start_gateway(config=config_file)
    try:
        v = await Client.connect(gw, "visitor", uid("v"))
        assert v.welcome["limits"]["max_text"] == 4000
        conv = (await v.request({"t": "open"}, "conv"))["conv"]
        assert (await v.msg(conv, "x" * 100))["seq"] > 0
        done = await _reload(gw, config_file, "max_text = 50\nrate_burst = 80\n")
        assert sorted(done["changed"]) == ["max_text", "rate_burst"] and done["restart_needed"] == []
        # The connection already open gets the new limit (the listener's Limits are shared) ...
        await v.send({"t": "msg", "conv": conv, "id": uid("m"), "text": "x" * 100, "rid": "long"})
        err = await v.next("error", lambda e: e.get("rid") == "long")
        assert err["code"] == "bad_field" and "1 to 50 characters" in err["message"], err
        # ... and a new one is told it in its welcome.
        v2 = await Client.connect(gw, "visitor", uid("v"))
        assert v2.welcome["limits"]["max_text"] == 50 and v2.welcome["limits"]["rate_burst"] == 80
        # A broken file: nothing changes, the node says why.
        done = await _reload(gw, config_file, "max_text = = 3\n", outcome="refused")
        assert done["outcome"] == "refused" and "not valid TOML" in done["error"] and str(config_file) in done["error"], done
        done = await _reload(gw, config_file, "max_text = -1\n", outcome="refused")
        assert "max_text must be positive" in done["error"]
        done = await _reload(gw, config_file, 'max_text = 50\nrate_per_s = "fast"\n', outcome="refused")
        assert "rate_per_s must be a number" in done["error"]
        assert "configuration reload refused" in _log(gw)
        v3 = await Client.connect(gw, "visitor", uid("v"))
        assert v3.welcome["limits"]["max_text"] == 50
        # A setting that needs a restart is named, not applied.
        done = await _reload(gw, config_file, "max_text = 50\nrate_burst = 80\nhistory_keep = 7\n")
        assert done["restart_needed"] == ["history_keep"]
        assert _http(gw, "/admin/stats")[2]["config"]["history_keep"] == 10_000
    finally:
        gw.stop()


async def test_reload_rotates_the_jwt_key_old_tokens_accepted_for_the_grace_window(config_file):
    old, new, newer = ("a" * 40), ("b" * 40), ("c" * 40)
    config_file.write_text(f'jwt_secret = "{old}"\njwt_rotation_grace_s = 3600\n')
    # The secret in the file, not the environment: a process's environment can't change, so only a
    # secret read from the file can rotate on a reload (docs/operations.md).
    gw = start_gateway(config=config_file, jwt_secret=old, secret_in_env=False)
    try:
        def token(secret: str, user: str) -> str:
            return auth.mint(secret, tenant="t1", user=user, role="visitor")

        async def upgrade(tok: str) -> int:
            raw, status, _ = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={tok}")
            if raw is not None:
                raw.writer.close()
            return status

        assert await upgrade(token(old, "a")) == 101
        done = await _reload(gw, config_file, f'jwt_secret = "{new}"\njwt_rotation_grace_s = 3600\n')
        assert done["changed"] == ["jwt_secret"]
        assert await upgrade(token(old, "a")) == 101  # within the grace window
        assert await upgrade(token(new, "b")) == 101
        # A token without `kid` (minted elsewhere) is tried against every accepted key.
        bare = __import__("jwt").encode({"tenant": "t1", "sub": "c", "role": "visitor", "exp": 2**31}, old,
                                        algorithm="HS256")
        assert await upgrade(bare) == 101
        # Another issuer's `kid` (not one of ours): tried against every accepted key, not refused.
        foreign = __import__("jwt").encode({"tenant": "t1", "sub": "e", "role": "visitor", "exp": 2**31}, new,
                                           algorithm="HS256", headers={"kid": "idp-key-7"})
        assert await upgrade(foreign) == 101
        # Rotating again with no grace: the key just replaced (new) is refused at once, while `old`
        # keeps the window it was given at the first rotation.
        await _reload(gw, config_file, f'jwt_secret = "{newer}"\njwt_rotation_grace_s = 0\n')
        assert await upgrade(token(new, "b")) == 401
        assert await upgrade(token(old, "a")) == 101
        assert await upgrade(token(newer, "d")) == 101
        assert _metric(gw, 'chatgw_upgrades_refused_total{status="401"}') == 1
        # A window that outlives restarts: the file lists the secret still accepted.
        await _reload(gw, config_file, f'jwt_secret = "{newer}"\njwt_previous_secrets = ["{new}"]\n')
        assert await upgrade(token(new, "b")) == 101
    finally:
        gw.stop()


# memory guard


async def test_memory_guard_refuses_upgrades_then_closes_the_idlest_and_loses_nothing(config_file):
    config_file.write_text("memory_soft_mb = 0\n")
    gw = start_gateway(config=config_file, drain_spread_s=2)
    try:
        visitors, acked = [], {}
        for i in range(12):
            v = await Client.connect(gw, "visitor", f"mg-{i}")
            conv = (await v.request({"t": "open"}, "conv"))["conv"]
            acked[f"mg-{i}"] = (conv, [(await v.msg(conv, f"m{i}-{k}"))["seq"] for k in range(3)])
            visitors.append(v)
        for i, v in enumerate(visitors[3:], 3):  # mg-0..2 are now the idlest: their last message is the oldest
            conv, seqs = acked[f"mg-{i}"]
            seqs.append((await v.msg(conv, f"m{i}-3"))["seq"])
        # Soft line below any real RSS: upgrades refused, readiness false, state in the metrics.
        await _reload(gw, config_file, "memory_soft_mb = 1\n")
        await wait_for(lambda: _metric(gw, "chatgw_memory_guard_state") == 1, what="the soft state")
        status, _, ready = _http(gw, "/readyz")
        assert status == 503 and ready["memory"]["state"] == "soft" and ready["memory"]["rss_mb"] > 1
        raw, status, head = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={gw.token('visitor', 'late')}")
        assert raw is None and status == 503 and b"Retry-After:" in head and b"low on memory" in head
        assert all(not v.closed.done() for v in visitors)  # the soft line closes nobody
        # Hard line: a quarter of the connections at most, the idlest, closed with 1013 and told when to return.
        await _reload(gw, config_file, "memory_soft_mb = 1\nmemory_hard_mb = 1\n")
        for v in visitors[:3]:
            closing = await v.next("closing", timeout=20)
            assert closing["code"] == 1013 and closing["reason"] == "overload" and 0 <= closing["retry_ms"] < 2000
            assert await v.closed == 1013
        for i, v in enumerate(visitors[3:], 3):  # the others are still served (within the guard's 5 s cooldown)
            conv, seqs = acked[f"mg-{i}"]
            seqs.append((await v.msg(conv, f"m{i}-4"))["seq"])
        assert _metric(gw, "chatgw_memory_guard_closed_total") == 3
        assert _http(gw, "/healthz")[0] == 200 and gw.alive()
        # Lines off again: everyone comes back and finds every acked message, once.
        await _reload(gw, config_file, "memory_soft_mb = 0\nmemory_hard_mb = 0\n")
        await wait_for(lambda: _http(gw, "/readyz")[0] == 200, what="ready again")
        for user, (conv, seqs) in acked.items():
            v = await Client.connect(gw, "visitor", user)
            assert [c["conv"] for c in v.welcome["convs"]] == [conv]
            hist = await v.request({"t": "history", "conv": conv, "limit": 50}, "history")
            mine = [m for m in hist["msgs"] if m.get("from") == user]
            assert [m["seq"] for m in mine] == seqs and len({m["text"] for m in mine}) == len(seqs)
            await v.close()
    finally:
        gw.stop()


# drain


async def test_drain_by_admin_call_refuses_upgrades_and_tells_clients_to_leave():
    gw = start_gateway(drain_timeout_s=60, drain_spread_s=2)
    try:
        clients = [await Client.connect(gw, "visitor", uid("d")) for _ in range(8)]
        convs = [(await c.request({"t": "open"}, "conv"))["conv"] for c in clients]
        status, _, body = _http(gw, "/admin/drain", "POST")
        assert status == 202 and body["started"] and body["connections"] == 8
        assert _http(gw, "/admin/drain", "POST")[2]["started"] is False  # one drain at a time
        for c, conv in zip(clients, convs, strict=True):
            notice = await c.next("closing")
            assert notice["code"] == 1001 and notice["reason"] == "drain" and 0 <= notice["retry_ms"] < 2000
            assert (await c.msg(conv, "still served while draining"))["seq"] > 0  # not cut off
        status, _, ready = _http(gw, "/readyz")
        assert status == 503 and ready["draining"] is True
        raw, status, head = await RawWS.connect("127.0.0.1", gw.ws_port, f"/ws?v=1&token={gw.token('visitor', 'x')}")
        assert raw is None and status == 503 and b"Retry-After:" in head and b"draining" in head
        assert _metric(gw, "chatgw_draining") == 1
        for c in clients:
            await c.close()
        await wait_for(lambda: _http(gw, "/admin/stats")[2]["hub"]["connections"] == 0, what="everyone gone")
    finally:
        gw.stop()


async def test_sigterm_drains_waits_for_clients_then_exits():
    gw = start_gateway(drain_timeout_s=60, drain_spread_s=1)
    try:
        clients = [await Client.connect(gw, "visitor", uid("d")) for _ in range(4)]
        gw.proc.send_signal(signal.SIGTERM)
        for c in clients:
            assert (await c.next("closing"))["reason"] == "drain"
        for c in clients[:3]:
            await c.close()
        await wait_for(lambda: _http(gw, "/admin/stats")[2]["hub"]["connections"] == 1, what="three gone")
        # The fourth is still connected: the node waits for it (deadline 60 s) and still serves it.
        conv = (await clients[3].request({"t": "open"}, "conv"))["conv"]
        assert (await clients[3].msg(conv, "served while the node drains"))["seq"] > 0
        await clients[3].close()
        await wait_for(lambda: not gw.alive(), timeout=20, what="the node to exit once everyone left")
        assert gw.proc.returncode == 0
        await wait_for(lambda: "drained: 0 connections left" in _log(gw), what="the drain's last line")
    finally:
        gw.stop()


async def test_drain_deadline_closes_whoever_stays_with_1001():
    gw = start_gateway(drain_timeout_s=1, drain_spread_s=0.5)
    try:
        stay = await Client.connect(gw, "visitor", uid("d"))
        gw.proc.send_signal(signal.SIGTERM)
        assert (await stay.next("closing"))["reason"] == "drain"
        closing = await stay.next("closing", timeout=20)  # the deadline's close, after the notice
        assert closing["code"] == 1001 and closing["reason"] == "shutdown"
        assert await stay.closed == 1001
        await wait_for(lambda: not gw.alive(), timeout=20, what="the node to exit")
    finally:
        gw.stop()


async def test_reload_reads_the_faq_again_and_a_broken_faq_keeps_the_old_bot(config_file, tmp_path):
    faq = tmp_path / "faq.yaml"

    def write_faq(answer: str) -> None:
        faq.write_text("entries:\n  - id: hours\n    q:\n      en: [\"When are you open?\", \"opening hours\"]\n"
                       f"    a:\n      en: \"{answer}\"\n")

    write_faq("We are open 9 to 5.")
    bots = f'[bots]\ndefault = "faq"\n[bots.backends.faq]\ntype = "faq"\npath = "{faq}"\n'
    config_file.write_text(bots)
    gw = start_gateway(config=config_file, bots_enabled="true")
    try:
        v = await Client.connect(gw, "visitor", uid("v"))
        conv = (await v.request({"t": "open"}, "conv"))["conv"]

        async def ask() -> str:
            ack = await v.msg(conv, "When are you open?")
            return (await v.next("msg", lambda e: e["role"] == "bot" and e.get("reply_to") == ack["seq"]))["text"]

        assert await ask() == "We are open 9 to 5."
        write_faq("We are open around the clock.")
        done = await _reload(gw, config_file, bots)
        assert done["outcome"] == "applied" and done["bots_restarted"] is True  # the file changed
        assert await ask() == "We are open around the clock."
        assert (await _reload(gw, config_file, bots))["bots_restarted"] is False  # nothing changed: no new worker
        # A question asked while a reload starts a new worker gets the old answer or the new one.
        write_faq("We are open from dawn to dusk.")
        gw.proc.send_signal(signal.SIGHUP)
        assert await ask() in ("We are open around the clock.", "We are open from dawn to dusk.")
        faq.write_text("entries: [this is not an entry]\n")  # refused: the running bot stays
        done = await _reload(gw, config_file, bots, outcome="refused")
        assert "bot worker" in done["error"] or "faq" in done["error"].lower(), done
        assert await ask() == "We are open around the clock."
    finally:
        gw.stop()

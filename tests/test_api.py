"""The REST API (gateway/api_http.py, docs/api.md) against a real node, with WebSocket clients beside it.

Keys from the admin API, the whole chat through the API and the widget's WebSocket together,
the errors (401, 403, 404 for another tenant, 429), and schemathesis over the OpenAPI document
the node serves.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from .support import Client, start_gateway, uid

ALL = ["conversations:read", "conversations:write", "messages:write", "agents:read", "queues:read"]


def _http(gw, method: str, path: str, body=None, key: str | None = None, admin: bool = False):
    headers = {"Content-Type": "application/json"}
    if admin:
        headers["Authorization"] = f"Bearer {gw.admin_token}"
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(f"{gw.http_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, orjson.loads(raw), dict(e.headers)
        except orjson.JSONDecodeError:
            return e.code, raw, dict(e.headers)


def _key(gw, tenant: str, scopes=ALL) -> str:
    status, body, _ = _http(gw, "POST", f"/admin/tenants/{tenant}/api-keys", {"name": "crm", "scopes": scopes}, admin=True)
    assert status == 201 and body["key"].startswith("cgk_"), body
    return body["key"]


async def test_keys_are_shown_once_listed_without_secrets_and_revoked(gateway):
    tenant = uid("t")
    status, made, _ = _http(gateway, "POST", f"/admin/tenants/{tenant}/api-keys", {"name": "crm", "scopes": ["queues:read"]},
                            admin=True)
    assert status == 201
    key = made["key"]
    status, listed, _ = _http(gateway, "GET", f"/admin/tenants/{tenant}/api-keys", admin=True)
    assert listed == {"keys": [{"id": made["id"], "tenant": tenant, "name": "crm", "scopes": ["queues:read"],
                                "created_ms": made["created_ms"]}]}
    assert key.split("_", 2)[2] not in orjson.dumps(listed).decode()
    assert _http(gateway, "GET", "/api/v1/queues/default", key=key)[0] == 200
    # Refused: an unknown scope, no key, a wrong secret, the wrong scope, then the revoked key.
    assert _http(gateway, "POST", f"/admin/tenants/{tenant}/api-keys", {"scopes": ["root"]}, admin=True)[0] == 400
    assert _http(gateway, "GET", "/api/v1/queues/default")[1]["error"]["code"] == "unauthorized"
    assert _http(gateway, "GET", "/api/v1/queues/default", key=key[:-3] + "xyz")[0] == 401
    status, body, _ = _http(gateway, "GET", "/api/v1/conversations", key=key)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert _http(gateway, "DELETE", f"/admin/tenants/{tenant}/api-keys/{made['id']}", admin=True)[0] == 200
    assert _http(gateway, "GET", "/api/v1/queues/default", key=key)[0] == 401


async def test_a_conversation_through_the_api_and_the_websocket_is_one_ordered_log(gateway):
    tenant = uid("t")
    key = _key(gateway, tenant)
    agent = await Client.connect(gateway, "agent", "ann", tenant)
    await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
    status, view, _ = _http(gateway, "POST", "/api/v1/conversations", {"visitor": "vic", "meta": {"from": "crm"}}, key=key)
    assert status == 200 and view["visitor"] == "vic" and view["state"] in ("queued", "assigned")
    conv = view["conv"]
    await agent.next("assigned", lambda e: e["conv"] == conv)
    # The same visitor's open conversation is returned, not a second one.
    assert _http(gateway, "POST", "/api/v1/conversations", {"visitor": "vic"}, key=key)[1]["conv"] == conv
    status, ack, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "m1", "text": "order #42"},
                           key=key)
    assert status == 200 and ack["dup"] is False
    got = await agent.next("msg", lambda e: e["conv"] == conv and e["id"] == "m1")
    assert got["text"] == "order #42" and got["role"] == "service" and got["seq"] == ack["seq"] and got["ch"] == "api"
    # A retry is answered with the first seq and not logged twice.
    again = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "m1", "text": "order #42"}, key=key)[1]
    assert again == {**ack, "dup": True}
    # The agent answers over the WebSocket; the visitor opens the widget and reads it all.
    await agent.msg(conv, "on its way")
    status, bot, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages",
                           {"id": "b1", "text": "tracking: XY", "as": "bot"}, key=key)
    assert status == 200
    status, as_agent, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages",
                                {"id": "a2", "text": "anything else?", "as": "agent", "agent": "ann"}, key=key)
    assert status == 200
    status, log, _ = _http(gateway, "GET", f"/api/v1/conversations/{conv}/messages?after=0&limit=100", key=key)
    msgs = [(e["role"], e["text"]) for e in log["entries"] if e["t"] == "msg"]
    assert msgs == [("service", "order #42"), ("agent", "on its way"), ("bot", "tracking: XY"), ("agent", "anything else?")]
    assert [e["seq"] for e in log["entries"]] == list(range(1, len(log["entries"]) + 1))
    v = await Client.connect(gateway, "visitor", "vic", tenant)
    history = (await v.request({"t": "history", "conv": conv, "limit": 100}, "history"))["msgs"]
    assert history == log["entries"]
    await v.request({"t": "resume", "conv": conv, "after": history[-1]["seq"]}, "resumed")  # live from here
    # Another agent can't speak as ann's colleague in this conversation.
    status, err, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages",
                           {"id": "x", "text": "hi", "as": "agent", "agent": "bob"}, key=key)
    assert status == 404 and err["error"]["code"] == "not_found"
    # Close; the state and the listing say so.
    assert _http(gateway, "POST", f"/api/v1/conversations/{conv}/close", {}, key=key)[0] == 200
    await v.next("event", lambda e: e["conv"] == conv and e["ev"] == "closed")
    assert _http(gateway, "GET", f"/api/v1/conversations/{conv}", key=key)[1]["state"] == "closed"
    listed = _http(gateway, "GET", "/api/v1/conversations?state=closed", key=key)[1]["conversations"]
    assert [c["id"] for c in listed] == [conv]
    status, err, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "late", "text": "x"}, key=key)
    assert status == 409 and err["error"]["code"] == "conflict"


async def test_another_tenants_conversation_is_not_found_and_bad_bodies_name_their_field(gateway):
    mine, theirs = uid("t"), uid("t")
    key, other = _key(gateway, mine), _key(gateway, theirs)
    conv = _http(gateway, "POST", "/api/v1/conversations", {"visitor": "v1"}, key=key)[1]["conv"]
    for method, path, body in (("GET", f"/api/v1/conversations/{conv}", None),
                               ("GET", f"/api/v1/conversations/{conv}/messages", None),
                               ("POST", f"/api/v1/conversations/{conv}/messages", {"id": "m", "text": "x"}),
                               ("POST", f"/api/v1/conversations/{conv}/close", {})):
        status, err, _ = _http(gateway, method, path, body, key=other)
        assert status == 404 and err["error"]["code"] == "not_found", (method, path, err)
    status, err, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "m", "text": ""}, key=key)
    assert status == 400 and err["error"]["field"] == "text"
    status, err, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "m", "text": "x", "x": 1},
                           key=key)
    assert status == 400 and err["error"]["code"] == "bad_field" and err["error"]["field"] == "x"
    status, err, _ = _http(gateway, "POST", f"/api/v1/conversations/{conv}/messages", {"id": "m"}, key=key)
    assert status == 400 and err["error"] == {**err["error"], "code": "missing_field", "field": "text"}
    status, err, _ = _http(gateway, "POST", "/api/v1/conversations", {}, key=key)
    assert status == 400 and err["error"]["code"] == "missing_field" and err["error"]["field"] == "visitor"
    status, err, _ = _http(gateway, "GET", "/api/v1/conversations?limit=1_0", key=key)
    assert status == 400 and err["error"]["field"] == "limit"


async def test_a_key_past_its_rate_is_told_when_to_come_back():
    gw = start_gateway(api_rate_per_s=0.5, api_rate_burst=2)
    try:
        key = _key(gw, uid("t"))
        got = [_http(gw, "GET", "/api/v1/queues/default", key=key) for _ in range(3)]
        assert [s for s, _, _ in got] == [200, 200, 429]
        assert got[2][1]["error"]["code"] == "rate_limited" and int(got[2][2]["Retry-After"]) >= 1
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def api_node():
    gw = start_gateway(api_rate_per_s=100_000, api_rate_burst=100_000)
    yield gw, _key(gw, "schemathesis")
    gw.stop()


def test_schemathesis_finds_no_failure_against_the_openapi_document(api_node, tmp_path):
    """schemathesis's own run (its examples, coverage and fuzzing phases, valid and invalid data) over every
    operation of the document the node serves: no server error, every status, content type and body as
    documented, and invalid input refused."""
    import subprocess
    import sys
    from pathlib import Path

    gw, key = api_node
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "run", f"{gw.http_url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {key}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance,negative_data_rejection",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "30", "--seed", "1", "--continue-on-failure",
         "--suppress-health-check", "all", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache (.schemathesis/) out of the checkout
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


async def test_keys_outlive_a_restart_of_the_node(tmp_path):
    data = str(tmp_path / "data")
    gw = start_gateway(data_dir=data)
    try:
        key = _key(gw, "acme", ["queues:read"])
        admin = gw.admin_token
    finally:
        gw.stop()
    gw = start_gateway(data_dir=data)
    try:
        assert _http(gw, "GET", "/api/v1/queues/default", key=key)[0] == 200
        assert admin != gw.admin_token  # a new node: only the store carried the key over
    finally:
        gw.stop()


async def test_an_oversize_body_is_refused_before_it_is_read(gateway):
    key = _key(gateway, uid("t"))
    status, _, _ = _http(gateway, "POST", "/api/v1/conversations", {"visitor": "v", "meta": {"x": "y" * 100_000}}, key=key)
    assert status == 413

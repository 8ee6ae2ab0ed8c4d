"""The supervisor page (gateway/supervisor_http.py, docs/operations.md) on real nodes.

- its JSON on one embedded node: an agent at capacity, two visitors queued behind it; the queue
  in order with growing waits, the agent's load, the counts by state; who may read it;
- the same over Redis with two nodes (standalone and Redis Cluster): both nodes listed;
- the page in Chromium (Playwright): a wrong token shows the refusal, the admin token shows the
  queue and the agent; an unreachable node is said so. Screenshots go to tmp_path and, when the
  CHATGW_SCREENSHOTS environment variable names a folder, there too.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from .support import Client, Gateway, uid, wait_for


def _get(gw: Gateway, path: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{gw.http_url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _view(gw: Gateway, tenant: str, token: str | None = None) -> dict[str, Any]:
    status, body, _ = _get(gw, f"/admin/tenants/{tenant}/supervisor", token or gw.admin_token)
    assert status == 200, body
    return orjson.loads(body)


async def _busy_tenant(agent_node: Gateway, visitor_nodes: list[Gateway]) -> tuple[str, Client, list[Client], list[str]]:
    """A tenant whose one agent (capacity 1) holds the first visitor's conversation, the next two queued
    behind it (in that order). Returns (tenant, agent, visitors, their conversation ids)."""
    tenant = uid("sup")
    agent = await Client.connect(agent_node, "agent", "ann", tenant)
    await agent.request({"t": "status", "status": "online", "capacity": 1}, "status")
    visitors, convs = [], []
    for i in range(3):
        v = await Client.connect(visitor_nodes[i % len(visitor_nodes)], "visitor", uid("v"), tenant)
        convs.append((await v.request({"t": "open"}, "conv"))["conv"])
        visitors.append(v)
        if i == 0:
            await agent.next("assigned", lambda e: e["conv"] == convs[0])
    return tenant, agent, visitors, convs


async def _close_all(clients: list[Client]) -> None:
    for c in clients:
        await c.close()


def _check_busy_view(view: dict[str, Any], tenant: str, visitors: list[Client], convs: list[str]) -> None:
    """The picture `_busy_tenant` leaves, whichever node answers."""
    assert view["tenant"] == tenant
    [queue] = view["queues"]
    assert (queue["group"], queue["length"]) == ("default", 2)
    assert [(w["conv"], w["visitor"]) for w in queue["waiting"]] == [
        (convs[1], visitors[1].welcome["user"]), (convs[2], visitors[2].welcome["user"])]
    waits = [w["waited_ms"] for w in queue["waiting"]]
    assert all(w >= 0 for w in waits) and waits == sorted(waits, reverse=True)  # the head has waited longest
    [ann] = view["agents"]
    assert {k: ann[k] for k in ("id", "status", "connected", "available", "load", "capacity")} == {
        "id": "ann", "status": "online", "connected": True, "available": True, "load": 1, "capacity": 1}
    assert view["conversations"] == {"bot": 0, "queued": 2, "assigned": 1}
    assert not view["truncated"]


async def test_the_json_shows_queue_order_waits_agent_load_and_states_and_needs_a_token(gateway):
    tenant, agent, visitors, convs = await _busy_tenant(gateway, [gateway])
    try:
        view = await wait_for(lambda: (v := _view(gateway, tenant))["queues"] and v["queues"][0]["length"] == 2 and v,
                              what="two visitors queued")
        _check_busy_view(view, tenant, visitors, convs)
        first_waits = [w["waited_ms"] for w in view["queues"][0]["waiting"]]
        assert [(n["id"], n["self"]) for n in view["nodes"]] == [(view["node"], True)]
        assert view["this_node"]["tenant_by_role"] == {"agent": 1, "visitor": 3}  # the admin token's extra
        # Waits are kept, not re-stamped per read: they grow.
        await wait_for(lambda: _view(gateway, tenant)["queues"][0]["waiting"][1]["waited_ms"] > first_waits[1],
                       what="the waits to grow")

        path = f"/admin/tenants/{tenant}/supervisor"
        assert _get(gateway, path)[0] == 401
        assert _get(gateway, path, "not-the-admin-token")[0] == 401
        assert _get(gateway, path, gateway.token("agent", "ann", tenant))[0] == 403
        assert _get(gateway, path, gateway.token("service", "svc", uid("other")))[0] == 404  # another tenant's
        own = _view(gateway, tenant, gateway.token("service", "svc", tenant))  # the tenant's own service token
        assert own["conversations"] == {"bot": 0, "queued": 2, "assigned": 1} and "this_node" not in own
    finally:
        await _close_all([agent, *visitors])


def test_the_page_is_served_without_a_token_and_without_the_demo(gateway_factory):
    gw = gateway_factory(demo="false")
    assert _get(gw, "/static/style.css")[0] == 404  # the demo's files are off...
    for path, kind in (("/admin/supervisor", "text/html"), ("/admin/supervisor/supervisor.js", "javascript"),
                       ("/admin/supervisor/style.css", "text/css")):
        status, body, headers = _get(gw, path)  # ...the supervisor's are served: the data needs the token
        assert status == 200 and kind in headers["Content-Type"] and body
        assert headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert _get(gw, "/admin/supervisor/chat.js")[0] == 404  # nothing else of static/


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_over_redis_both_nodes_are_listed_and_either_answers(request, gateway_factory, kind):
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    secret = secrets.token_urlsafe(32)
    ids = [uid("node-a"), uid("node-b")]
    a_node, b_node = (gateway_factory(jwt_secret=secret, node_id=i, coordinator="redis", redis_url=server.url,
                                      redis_cluster=str(kind == "redis-cluster").lower(), node_heartbeat_s=0.2,
                                      node_ttl_s=1.0) for i in ids)
    tenant, agent, visitors, convs = await _busy_tenant(b_node, [a_node, b_node])
    try:
        for gw, me in ((a_node, ids[0]), (b_node, ids[1])):
            view = await wait_for(lambda gw=gw: (v := _view(gw, tenant))["queues"] and v["queues"][0]["length"] == 2
                                  and set(ids) <= {n["id"] for n in v["nodes"]} and v, what="the queue and both nodes")
            _check_busy_view(view, tenant, visitors, convs)
            nodes = {n["id"]: n for n in view["nodes"]}
            assert view["node"] == me and nodes[me]["self"] and not nodes[ids[1 - ids.index(me)]]["self"]
            assert all(0 <= n["heartbeat_age_ms"] <= 1000 for n in view["nodes"])  # live: within the TTL
    finally:
        await _close_all([agent, *visitors])


# The page in a real browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


def _screenshot_copy(path) -> None:
    target = os.environ.get("CHATGW_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, path.name))


@pytest.mark.timeout(180)
async def test_the_page_in_chromium_shows_the_queue_and_the_agent(gateway, tmp_path):
    playwright = pytest.importorskip("playwright.async_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    expect = playwright.expect
    expect.set_options(timeout=TIMEOUT_MS)
    tenant, agent, visitors, convs = await _busy_tenant(gateway, [gateway])
    problems: list[str] = []
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            await page.goto(f"{gateway.http_url}/admin/supervisor")
            await expect(page.locator("#tenant")).to_have_value("demo")  # the node's default tenant (/api/config)
            await page.fill("#tenant", tenant)

            # A wrong token: refused, said so, not kept.
            await page.fill("#token", "not-the-admin-token")
            await page.click("#watch")
            await expect(page.locator("#error")).to_be_visible()
            await expect(page.locator("#error")).to_contain_text("refused (401)")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "waiting")
            assert await page.evaluate("sessionStorage.getItem('chatgw.supervisor.token')") is None
            await page.screenshot(path=str(tmp_path / "supervisor-refused.png"))
            _screenshot_copy(tmp_path / "supervisor-refused.png")

            # The admin token: the live picture.
            await page.fill("#token", gateway.admin_token)
            await page.click("#watch")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "ready")
            await expect(page.locator("#error")).to_be_hidden()
            rows = page.locator("section.queue[data-group=default] tr.waiting-row")
            await expect(rows).to_have_count(2)
            assert [await rows.nth(i).get_attribute("data-conv") for i in range(2)] == convs[1:]
            await expect(rows.nth(0).locator("td").nth(1)).to_have_text(visitors[1].welcome["user"])
            await expect(rows.nth(1).locator("td").nth(1)).to_have_text(visitors[2].welcome["user"])
            for i in range(2):
                assert re.fullmatch(r"\d+ s", await rows.nth(i).locator("td").nth(3).inner_text())
            await expect(page.locator("section.queue h3")).to_have_text("default: 2 waiting")
            ann = page.locator("tr.agent-row[data-agent=ann]")
            await expect(ann).to_have_attribute("data-status", "online")
            await expect(ann.locator(".load")).to_have_text("1 / 1")
            await expect(ann.locator(".sv-bar.full")).to_have_count(1)  # at capacity
            await expect(ann.locator(".pill.online")).to_have_text("online")
            await expect(page.locator("#count-queued")).to_have_text("2")
            await expect(page.locator("#count-assigned")).to_have_text("1")
            await expect(page.locator("#count-bot")).to_have_text("0")
            await expect(page.locator("tr.node-row")).to_have_count(1)
            await expect(page.locator("#this-node")).to_contain_text("of this tenant: 1 agent, 3 visitors.")
            assert gateway.admin_token not in page.url  # the token is in sessionStorage, never in a URL
            assert await page.evaluate("sessionStorage.getItem('chatgw.supervisor.token')") == gateway.admin_token
            shot = tmp_path / "supervisor.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            _screenshot_copy(shot)

            # The node unreachable (its answers cut off here): said so, and the page recovers.
            async def cut_off(route: Any) -> None:
                await route.abort()

            await page.route("**/admin/tenants/*/supervisor", cut_off)
            await expect(page.locator("#error")).to_contain_text("unreachable")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "waiting")
            await page.unroute("**/admin/tenants/*/supervisor")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "ready")
            await expect(page.locator("#error")).to_be_hidden()
        finally:
            await browser.close()
            await _close_all([agent, *visitors])
    assert not problems, problems

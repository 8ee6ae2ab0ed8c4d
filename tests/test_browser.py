"""End-to-end browser test of the demo pages (gateway/static/*).

Drives the system Chromium through Playwright: an agent goes online in the
agent console, a visitor writes through the chat widget, the agent sees the
message and replies, the visitor sees the reply.

Needs the `gateway` fixture (tests/conftest.py): a running node exposing
`http_url` and `ws_url`. Screenshots go to tmp_path and, when the
CHATGW_SCREENSHOTS environment variable names a folder, there too.
"""

import os
import shutil
import uuid

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _watch(page, name, problems):
    page.on("pageerror", lambda exc: problems.append(f"{name}: page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"{name}: console.{msg.type}: {msg.text}")
        if msg.type == "error"
        else None,
    )


def _screenshot(page, name, tmp_path):
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    target = os.environ.get("CHATGW_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, f"{name}.png"))
    return path


@pytest.mark.timeout(180)
def test_visitor_agent_roundtrip(gateway, browser, tmp_path):
    base = gateway.http_url.rstrip("/")
    run = uuid.uuid4().hex[:8]
    tenant = f"browser-{run}"  # the node is shared: a tenant of our own keeps other tests' agents away
    question = f"Hello, do you ship to Norway? ({run})"
    answer = f"Yes, in 3-5 working days! ({run})"
    problems = []
    expect.set_options(timeout=TIMEOUT_MS)

    agent_ctx = browser.new_context(viewport={"width": 1280, "height": 760})
    visitor_ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    agent = agent_ctx.new_page()
    visitor = visitor_ctx.new_page()
    _watch(agent, "agent", problems)
    _watch(visitor, "visitor", problems)
    try:
        # Landing page links to both demos.
        agent.goto(base + "/")
        expect(agent.locator("#link-visitor")).to_be_visible()
        expect(agent.locator("#link-agent")).to_be_visible()

        # Agent console: connect, go online.
        agent.goto(f"{base}/static/agent.html?tenant={tenant}")  # ?agent= defaults to agent-1
        expect(agent.locator("#conn")).to_have_attribute("data-state", "ready")
        expect(agent.locator("#who")).to_contain_text("agent-1")
        agent.select_option("#status", "online")
        expect(agent.locator("body")).to_have_attribute("data-status", "online")
        expect(agent.locator("#status-pill")).to_have_text("online")

        # Visitor widget: open the bubble, write.
        visitor.goto(f"{base}/static/visitor.html?tenant={tenant}")
        expect(visitor.locator("body")).to_have_attribute("data-conn", "ready")
        visitor.click("#chat-bubble")
        expect(visitor.locator("#panel")).to_be_visible()
        visitor.fill("#composer-text", question)
        visitor.click("#send")
        # Acknowledged and in the log: the message node carries its seq.
        expect(visitor.locator(".msg.mine[data-seq] .bubble", has_text=question)).to_be_visible()

        # The conversation reaches the agent, who sees the message.
        expect(agent.locator(".conv-item")).to_have_count(1)
        agent.locator(".conv-item").first.click()
        expect(agent.locator("#thread .msg.them .bubble", has_text=question)).to_be_visible()

        # Agent replies; the visitor sees it.
        agent.fill("#composer-text", answer)
        agent.click("#send")
        expect(agent.locator("#thread .msg.mine[data-seq] .bubble", has_text=answer)).to_be_visible()
        expect(visitor.locator(".msg.them .bubble", has_text=answer)).to_be_visible()

        # Each message shows up exactly once on each side.
        expect(visitor.locator(".msg .bubble", has_text=question)).to_have_count(1)
        expect(visitor.locator(".msg .bubble", has_text=answer)).to_have_count(1)
        expect(agent.locator("#thread .msg .bubble", has_text=question)).to_have_count(1)
        expect(agent.locator("#thread .msg .bubble", has_text=answer)).to_have_count(1)
    finally:
        if problems:
            print("\n".join(problems))
        for name, page in (("agent", agent), ("visitor", visitor)):
            try:
                _screenshot(page, name, tmp_path)
            except Exception as exc:  # a screenshot must not hide the real failure
                problems.append(f"{name}: screenshot failed: {exc}")
        agent_ctx.close()
        visitor_ctx.close()

    page_errors = [p for p in problems if "page error" in p]
    assert not page_errors, "\n".join(problems)

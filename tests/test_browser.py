"""End-to-end browser tests of the demo pages (gateway/static/*).

Drive the system Chromium through Playwright:

- people only (the shared `gateway` fixture, bots off): an agent goes online
  in the agent console, a visitor writes through the chat widget, the agent
  sees the message and replies, the visitor sees the reply;
- the built-in FAQ bot (`gateway_factory(bots_enabled="true")`): the bot
  answers the visitor, "Talk to a person" hands the conversation over, the
  agent sees it with the bot banner (last answer, confidence, reason) and
  replies;
- a streaming bot (an OpenAI-compatible server of the test's own that holds
  its answer half-way): the widget shows the growing "typing" bubble, then the
  final message in its place.

Screenshots go to tmp_path and, when the CHATGW_SCREENSHOTS environment
variable names a folder, there too.
"""

import asyncio
import json
import os
import re
import shutil
import threading
import time
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


def _page(browser, name, problems, width=1100, **context):
    """A page in a context of its own (its own storage: one person), its errors collected in `problems`."""
    ctx = browser.new_context(viewport={"width": width, "height": 760}, **context)
    page = ctx.new_page()
    _watch(page, name, problems)
    return ctx, page


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
        expect(agent.locator("#load")).to_contain_text("load 1 /")  # the header counts what it holds now
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


def _open_agent(agent, base, tenant):
    agent.goto(f"{base}/static/agent.html?tenant={tenant}")  # ?agent= defaults to agent-1
    expect(agent.locator("#conn")).to_have_attribute("data-state", "ready")
    agent.select_option("#status", "online")
    expect(agent.locator("body")).to_have_attribute("data-status", "online")


def _open_visitor(visitor, base, tenant):
    visitor.goto(f"{base}/static/visitor.html?tenant={tenant}")
    expect(visitor.locator("body")).to_have_attribute("data-conn", "ready")
    visitor.click("#chat-bubble")
    expect(visitor.locator("#panel")).to_be_visible()


def _ask(visitor, text):
    visitor.fill("#composer-text", text)
    visitor.click("#send")
    expect(visitor.locator(".msg.mine[data-seq] .bubble", has_text=text)).to_be_visible()


def _finish(pages, tmp_path, problems):
    if problems:
        print("\n".join(problems))
    for name, page in pages:
        try:
            _screenshot(page, name, tmp_path)
        except Exception as exc:  # a screenshot must not hide the real failure
            problems.append(f"{name}: screenshot failed: {exc}")


@pytest.mark.timeout(180)
def test_faq_bot_answers_then_hands_off_to_an_agent(gateway_factory, browser, tmp_path):
    gw = gateway_factory(bots_enabled="true")  # the built-in FAQ bot answers first
    base = gw.http_url.rstrip("/")
    run = uuid.uuid4().hex[:8]
    tenant = f"bot-{run}"
    question = "How long does shipping take?"
    reply = f"Hi, I'm agent-1: your order leaves our warehouse today. ({run})"
    problems = []
    expect.set_options(timeout=TIMEOUT_MS)

    agent_ctx = browser.new_context(viewport={"width": 1280, "height": 760}, locale="en-US")
    visitor_ctx = browser.new_context(viewport={"width": 1100, "height": 760}, locale="en-US")
    agent = agent_ctx.new_page()
    visitor = visitor_ctx.new_page()
    _watch(agent, "agent", problems)
    _watch(visitor, "visitor", problems)
    try:
        _open_agent(agent, base, tenant)
        _open_visitor(visitor, base, tenant)

        # The bot answers; it is labelled as the bot, and no person is involved yet.
        _ask(visitor, question)
        bot_answer = visitor.locator("#log .msg.bot[data-seq]:not(.streaming)")
        expect(bot_answer).to_have_count(1)
        expect(bot_answer.locator(".bubble")).to_contain_text(re.compile(r"\bship", re.I))
        expect(bot_answer.locator(".bot-tag")).to_have_text("Bot")
        expect(bot_answer.locator(".bot-avatar svg")).to_be_visible()
        expect(visitor.locator("#log .sysline[data-ev=bot]")).to_be_visible()
        expect(visitor.locator("#subtitle")).to_contain_text("Virtual assistant")
        talk = visitor.get_by_role("button", name="Talk to a person")
        expect(talk).to_be_visible()
        expect(agent.locator(".conv-item")).to_have_count(0)
        _screenshot(visitor, "bot-visitor-answered", tmp_path)

        # "Talk to a person": the bot hands over, the conversation reaches the agent.
        talk.click()
        expect(visitor.locator("#log .sysline[data-ev=handoff]")).to_have_text("Connecting you to our team\u2026")
        expect(agent.locator(".conv-item")).to_have_count(1)
        expect(agent.locator("#thread .msg.them .bubble", has_text=question)).to_be_visible()
        expect(agent.locator("#thread .msg.bot")).to_have_count(2)  # the answer and the handoff message
        banner = agent.locator("#bot-banner")
        expect(banner).to_be_visible()
        expect(banner).to_have_attribute("data-reason", "visitor_asked")
        expect(banner.locator(".bot-reason")).to_contain_text("the visitor asked for a person")
        expect(banner.locator(".bot-conf")).to_have_text(re.compile(r"^confidence \d{1,3}%$"))
        expect(banner.locator(".bot-answer-text")).to_contain_text(re.compile(r"\bship", re.I))
        expect(visitor.locator("#quick-actions")).to_be_hidden()
        _screenshot(agent, "bot-agent-banner", tmp_path)

        # People talk from now on: the agent's reply reaches the visitor.
        agent.fill("#composer-text", reply)
        agent.click("#send")
        expect(agent.locator("#thread .msg.mine[data-seq] .bubble", has_text=reply)).to_be_visible()
        expect(visitor.locator(".msg.them:not(.bot) .bubble", has_text=reply)).to_be_visible()
        expect(visitor.locator("#subtitle")).to_have_text("Chatting with agent-1")
        expect(visitor.locator(".msg .bubble", has_text=reply)).to_have_count(1)
        expect(visitor.locator("#log .msg.bot")).to_have_count(2)
    finally:
        _finish((("bot-agent", agent), ("bot-visitor", visitor)), tmp_path, problems)
        agent_ctx.close()
        visitor_ctx.close()

    page_errors = [p for p in problems if "page error" in p]
    assert not page_errors, "\n".join(problems)


class HeldLLM:
    """An OpenAI-compatible ``/v1/chat/completions`` (SSE, as tests/bot_servers/openai_server.py
    speaks it) that streams ``first``, then holds the answer until :meth:`release`, then sends
    ``rest``, ``finish_reason: "stop"`` and ``[DONE]``. Runs on its own thread and event loop."""

    def __init__(self, first: list[str], rest: list[str]):
        self.first, self.rest = first, rest
        self.requests: list[dict] = []
        self._released = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = None
        self.url = ""

    @staticmethod
    def _sse(content=None, *, role=None, finish=None) -> bytes:
        delta = {}
        if role:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        obj = {"id": "chatcmpl-browser", "object": "chat.completion.chunk", "created": int(time.time()),
               "model": "test-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def _completions(self, request):
        from aiohttp import web

        self.requests.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(self._sse("", role="assistant"))
        for piece in self.first:
            await resp.write(self._sse(piece))
        await asyncio.get_running_loop().run_in_executor(None, self._released.wait, 60)
        for piece in self.rest:
            await resp.write(self._sse(piece))
        await resp.write(self._sse(finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def start(self) -> str:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.url

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.mark.timeout(180)
def test_streamed_bot_answer_grows_then_becomes_one_message(gateway_factory, browser, tmp_path):
    pytest.importorskip("aiohttp")
    first = ["Our shop ", "ships ", "worldwide"]
    rest = [" within ", "three ", "working days."]
    llm = HeldLLM(first, rest)
    url = llm.start()
    try:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(f"""
[bots]
default = "llm"
coalesce_ms = 20
coalesce_chars = 8
total_timeout_s = 45
[bots.backends.llm]
type = "openai"
base_url = "{url}/v1"
model = "test-model"
cache = false
""")
        gw = gateway_factory(config=str(cfg), bots_enabled="true")
        base = gw.http_url.rstrip("/")
        tenant = f"stream-{uuid.uuid4().hex[:8]}"
        problems = []
        expect.set_options(timeout=TIMEOUT_MS)
        visitor_ctx = browser.new_context(viewport={"width": 1100, "height": 760}, locale="en-US")
        visitor = visitor_ctx.new_page()
        _watch(visitor, "visitor", problems)
        try:
            _open_visitor(visitor, base, tenant)
            _ask(visitor, "Do you ship abroad?")

            # While the backend holds its answer: one growing bubble, not yet a log entry.
            typing = visitor.locator("#log .msg.bot.streaming")
            expect(typing).to_have_count(1)
            expect(typing.locator(".bubble")).to_have_text("".join(first))
            expect(typing).not_to_have_attribute("data-seq", re.compile(".*"))
            expect(typing.locator(".meta")).to_have_text("typing\u2026")
            _screenshot(visitor, "stream-visitor-typing", tmp_path)

            # The rest arrives: the final `msg` (same reply_to) takes the bubble's place.
            llm.release()
            final = visitor.locator("#log .msg.bot[data-seq]")
            expect(final.locator(".bubble")).to_have_text("".join(first + rest))
            expect(visitor.locator("#log .msg.bot.streaming")).to_have_count(0)
            expect(visitor.locator("#log .msg.bot")).to_have_count(1)
            reply_to = visitor.locator("#log .msg.mine[data-seq]").first.get_attribute("data-seq")
            expect(final).to_have_attribute("data-reply-to", reply_to)
            assert llm.requests and llm.requests[-1]["stream"] is True
        finally:
            _finish((("stream-visitor", visitor),), tmp_path, problems)
            visitor_ctx.close()
        page_errors = [p for p in problems if "page error" in p]
        assert not page_errors, "\n".join(problems)
    finally:
        llm.stop()


@pytest.mark.timeout(180)
def test_demo_pages_reconnect_by_themselves_through_a_rolling_restart(redis_server, browser, tmp_path):
    """Two nodes on one Redis share their ports (SO_REUSEPORT); each is restarted in turn (SIGTERM:
    a drain). The open visitor and agent pages leave the draining node when told, reconnect by
    themselves to a live one and carry on: a message sent afterwards reaches the agent once."""
    import secrets as _secrets
    import signal as _signal

    from .redis_support import free_port
    from .support import start_gateway

    settings = dict(coordinator="redis", redis_url=redis_server.url, ws_port=free_port(), http_port=free_port(),
                    jwt_secret=_secrets.token_urlsafe(32), drain_spread_s=1, drain_timeout_s=30)
    nodes = [start_gateway(**settings) for _ in range(2)]
    base = nodes[0].http_url.rstrip("/")
    tenant = f"drain-{uuid.uuid4().hex[:8]}"
    before, after = f"before the restarts {tenant}", f"after the restarts {tenant}"
    problems = []
    expect.set_options(timeout=TIMEOUT_MS)
    agent_ctx, agent = _page(browser, "agent", problems, width=1280)
    visitor_ctx, visitor = _page(browser, "visitor", problems)
    try:
        _open_agent(agent, base, tenant)
        _open_visitor(visitor, base, tenant)
        _ask(visitor, before)
        agent.locator(".conv-item").first.click()
        expect(agent.locator("#thread .msg.them .bubble", has_text=before)).to_be_visible()
        told = 0
        for i in range(2):
            nodes[i].proc.send_signal(_signal.SIGTERM)
            nodes[i].proc.wait(60)  # it exits once its clients (if any were on it) have left
            assert nodes[i].proc.returncode == 0
            deadline = time.monotonic() + 10  # the output thread reads the exited node's last lines
            while "drained:" not in "".join(nodes[i].output) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert "drained: 0 connections left" in "".join(nodes[i].output)  # the pages left when told
            told += sum(int(n) for n in re.findall(r"draining: (\d+) connections told", "".join(nodes[i].output)))
            nodes[i] = start_gateway(**settings)
        assert told >= 2  # both pages were on a node that drained, at least once each
        expect(visitor.locator("body")).to_have_attribute("data-conn", "ready")
        expect(agent.locator("#conn")).to_have_attribute("data-state", "ready")
        _ask(visitor, after)
        expect(agent.locator("#thread .msg.them .bubble", has_text=after)).to_be_visible()
        expect(agent.locator("#thread .msg .bubble", has_text=before)).to_have_count(1)
        expect(agent.locator("#thread .msg .bubble", has_text=after)).to_have_count(1)
        expect(visitor.locator(".msg .bubble", has_text=after)).to_have_count(1)
    finally:
        _finish((("drain-agent", agent), ("drain-visitor", visitor)), tmp_path, problems)
        agent_ctx.close()
        visitor_ctx.close()
        for gw in nodes:
            gw.stop()
    assert not [p for p in problems if "page error" in p], "\n".join(problems)


@pytest.mark.timeout(180)
def test_the_demo_answers_how_long_a_tent_can_be_returned(gateway_factory, browser, tmp_path):
    """Issue 17's report: "How long do I have to return a tent?" went to the queue although the FAQ
    has a returns entry. The demo's bot answers it, with what the demo page itself promises."""
    gw = gateway_factory(bots_enabled="true")
    base = gw.http_url.rstrip("/")
    problems = []
    expect.set_options(timeout=TIMEOUT_MS)
    ctx, visitor = _page(browser, "visitor", problems, locale="en-US")
    try:
        _open_visitor(visitor, base, f"tent-{uuid.uuid4().hex[:8]}")
        expect(visitor.locator(".feature", has_text="Free returns")).to_contain_text("within 30 days of delivery")
        _ask(visitor, "How long do I have to return a tent?")
        expect(visitor.locator(".msg.them .bubble", has_text="within 30 days of delivery")).to_be_visible()
    finally:
        _finish((("tent-visitor", visitor),), tmp_path, problems)
        ctx.close()
    assert not [p for p in problems if "page error" in p], "\n".join(problems)

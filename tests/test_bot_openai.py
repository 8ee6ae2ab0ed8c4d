"""OpenAI-compatible backend against a local server speaking the documented chat-completions SSE format exactly
(tests/bot_servers/openai_server.py: chat.completion.chunk lines, [DONE], error objects, cut streams),
plus the history trimming it applies."""

from __future__ import annotations

import pytest

from bot_bridge.base import BackendError, BotContext, BotResult, Turn
from bot_bridge.history import estimate_tokens, has_entity, trim_history
from bot_bridge.openai import OpenAIBackend
from tests.bot_servers import State, serve
from tests.bot_servers.openai_server import make_app


@pytest.fixture
async def server():
    state = State()
    async with serve(make_app(state), state) as url:
        yield state, url


async def collect(backend, ctx) -> list:
    return [item async for item in backend.stream(ctx)]


def ctx(question: str = "Where is my parcel?", history: list[Turn] | None = None) -> BotContext:
    return BotContext("acme", "c1", "default", "v1", question, history or [], {"page": "/checkout"})


async def test_streams_chunks_until_done(server):
    state, url = server
    backend = OpenAIBackend("llm", {"base_url": f"{url}/v1", "model": "m", "api_key": "k", "temperature": 0})
    try:
        items = await collect(backend, ctx())
    finally:
        await backend.aclose()
    assert items == state.chunks
    req = state.requests[0]
    assert req["json"]["stream"] is True and req["json"]["model"] == "m" and req["json"]["temperature"] == 0
    assert req["headers"]["Authorization"] == "Bearer k"
    assert req["json"]["messages"][0]["role"] == "system"
    assert req["json"]["messages"][-1] == {"role": "user", "content": "Where is my parcel?"}


async def test_history_is_resent_trimmed_with_roles(server):
    state, url = server
    history = [
        Turn("visitor", "My order is ORD-2024-0042"),
        *[Turn("visitor" if i % 2 else "bot", f"filler message number {i} " + "x" * 200) for i in range(30)],
        Turn("agent", "Anything else?"),
    ]
    backend = OpenAIBackend("llm", {"base_url": f"{url}/v1", "history_tokens": 400})
    try:
        await collect(backend, ctx("and when does it arrive?", history))
    finally:
        await backend.aclose()
    sent = state.requests[0]["json"]["messages"]
    contents = [m["content"] for m in sent]
    assert "My order is ORD-2024-0042" in contents  # the oldest turn survives: it names an order
    assert contents[-2:] == ["Anything else?", "and when does it arrive?"]
    assert sent[-2]["role"] == "assistant"
    assert sum(estimate_tokens(c) + 4 for c in contents[1:-1]) <= 400
    assert len(sent) < len(history) + 2


async def test_fastgpt_flavour_sends_detail_false(server):
    state, url = server
    backend = OpenAIBackend("fg", {"base_url": f"{url}/v1", "flavor": "fastgpt"})
    try:
        await collect(backend, ctx())
    finally:
        await backend.aclose()
    assert state.requests[0]["json"]["detail"] is False


async def test_non_streaming_answer_is_accepted(server):
    state, url = server
    state.mode = "json"
    backend = OpenAIBackend("llm", {"base_url": f"{url}/v1"})
    try:
        items = await collect(backend, ctx())
    finally:
        await backend.aclose()
    assert items == [BotResult("".join(state.chunks))]


@pytest.mark.parametrize("mode", ["http_error", "stream_error", "cut", "truncated"])
async def test_failures_raise_backend_error(server, mode):
    state, url = server
    state.mode = mode
    backend = OpenAIBackend("llm", {"base_url": f"{url}/v1"})
    got: list = []
    try:
        with pytest.raises(BackendError):
            async for item in backend.stream(ctx()):
                got.append(item)
    finally:
        await backend.aclose()
    if mode in ("stream_error", "cut", "truncated"):
        assert got == state.chunks[:2]  # the chunks before the break were delivered


def test_trim_history_keeps_entities_first_then_recent():
    turns = [
        Turn("visitor", "hi"),
        Turn("visitor", "SKU-AB123 is broken"),
        Turn("bot", "sorry " * 40),
        Turn("visitor", "see #98765"),
        Turn("bot", "ok"),
        Turn("visitor", "订单号 202411220001 还没到"),
        Turn("visitor", "latest"),
    ]
    kept = trim_history(turns, budget_tokens=42)  # entities 30 tokens, then "latest" 6, "ok" 5; "hi" no longer fits
    texts = [t.text for t in kept]
    assert texts == ["SKU-AB123 is broken", "see #98765", "ok", "订单号 202411220001 还没到", "latest"]
    assert trim_history(turns, 0) == []
    assert has_entity("ORD-77AB") and has_entity("parcel RR123456789CN") and not has_entity("order soon")
    assert estimate_tokens("你好世界") == 4 and estimate_tokens("abcdefgh") == 2


async def test_faq_context_puts_the_closest_entries_in_the_system_prompt(server):
    state, url = server
    backend = OpenAIBackend("llm", {"base_url": f"{url}/v1", "model": "m", "faq_context": True,
                                    "system_prompt": "You help the shop's customers.\n{faq}"})
    try:
        await collect(backend, ctx("How long do I have to return a tent?"))
        await collect(backend, ctx("帐篷买了不合适，多少天内可以退？"))
    finally:
        await backend.aclose()
    en, zh = (r["json"]["messages"][0]["content"] for r in state.requests)
    assert en.startswith("You help the shop's customers.\nAnswer from these entries")
    assert "within 30 days of delivery" in en and "{faq}" not in en  # the returns entry, in English
    assert "30天内" in zh  # the same entry's Chinese answer for a Chinese question


async def test_a_template_per_tenant_and_group_sets_prompt_temperature_and_max_tokens(server):
    from bot_bridge import BotBridge

    state, url = server
    bridge = BotBridge.from_mapping({
        "default": "llm",
        "backends": {"llm": {"type": "openai", "base_url": f"{url}/v1", "model": "m", "temperature": 0.7}},
        "templates": {"support": {"system_prompt": "You are support.", "temperature": 0.1, "max_tokens": 80},
                      "sales": {"system_prompt": "You are sales.", "max_tokens": 200}},
        "template": "support",
        "tenants": {"acme": {"group_templates": {"sales": "sales"}}},
    })
    try:
        for group in ("default", "sales"):
            await bridge.answer(BotContext("acme", f"c-{group}", group, "v1", "hello?", [], {}), lambda _: None)
        await bridge.answer(BotContext("other", "c-o", "sales", "v1", "hello?", [], {}), lambda _: None)
    finally:
        await bridge.close()
    support, sales, other = (r["json"] for r in state.requests)
    assert support["messages"][0]["content"] == "You are support." and support["temperature"] == 0.1
    assert support["max_tokens"] == 80
    assert sales["messages"][0]["content"] == "You are sales." and sales["temperature"] == 0.7  # the backend's own
    assert sales["max_tokens"] == 200
    assert other["messages"][0]["content"] == "You are support."  # the default template


def test_an_unknown_template_is_refused():
    from bot_bridge import BotBridge
    from bot_bridge.config import ConfigError

    with pytest.raises(ConfigError, match="unknown template 'nope'"):
        BotBridge.from_mapping({"tenants": {"acme": {"template": "nope"}}})
    with pytest.raises(ConfigError, match="temperature"):
        BotBridge.from_mapping({"templates": {"t": {"temperature": 5}}})

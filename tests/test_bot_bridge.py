"""BotBridge semantics (docs/bots.md "Semantics"): coalescing, deadlines with fallback and cancel, circuit
breakers with a secondary and half-open recovery, low confidence, visitor handoff, the answer cache,
cancellation, the concurrency bound, rate limits, routing and plugin loading.

Backends are either scripted in-process fakes or the real HTTP backends against local servers that speak
the vendors' documented wire formats exactly (tests/bot_servers/). Deadlines are configured tiny (0.2 s);
nothing here sleeps to synchronise or asserts a duration.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot_bridge import BotBridge, BotContext, BotResult, BridgeConfig, ConfigError
from bot_bridge.faq import FaqBackend
from tests.bot_servers import State, coze_server, dify_server, openai_server, serve
from tests.support import wait_for

SHIPPING_EN = "Orders placed before 3 pm ship the same working day"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Scripted:
    """A fake backend: ``script(ctx)`` is an async generator; records calls and cancels."""

    def __init__(self, name: str = "fake", options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.calls: list[BotContext] = []
        self.cancel_calls = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.script: Callable[[BotContext], AsyncIterator[str | BotResult]] = self.answer_text

    async def answer_text(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        for word in f"You asked: {ctx.question}".split(" "):
            yield word + " "

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        self.calls.append(ctx)
        self.started.set()
        async for item in self.script(ctx):
            yield item

    async def cancel(self, ctx: BotContext) -> None:
        self.cancel_calls += 1
        self.cancelled.set()


class EchoBackend:
    """A plugin as a third party would write it: a class taking (name, options)."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.prefix = options.get("prefix", "echo")

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        yield f"{self.prefix}: {ctx.question}"
        yield BotResult("", confidence=0.99)

    async def cancel(self, ctx: BotContext) -> None:
        return None


FAKE = "tests.test_bot_bridge:Scripted"


def bridge_with(fakes: dict[str, Scripted], clock: Clock | None = None, **bots: Any) -> BotBridge:
    data: dict[str, Any] = {"default": next(iter(fakes)), **bots}
    backends = data.setdefault("backends", {})
    for name in fakes:
        backends.setdefault(name, {"type": FAKE})
    backends.setdefault("faq", {"type": "faq"})
    kwargs: dict[str, Any] = {"backends": fakes}
    if clock is not None:
        kwargs["clock"] = clock
    return BotBridge(BridgeConfig.from_mapping(data), **kwargs)


def ctx(question: str = "Where is my parcel?", tenant: str = "acme", group: str = "default", conv: str = "c1") -> BotContext:
    return BotContext(tenant, conv, group, "v1", question, [], {})


async def forever(ctx: BotContext) -> AsyncIterator[str | BotResult]:
    await asyncio.Event().wait()
    yield "never"


# ---- coalescing -------------------------------------------------------------------------------


async def test_chunks_are_coalesced_by_size():
    fake = Scripted()
    text = "".join(chr(ord("a") + i % 26) for i in range(200))

    async def tokens(ctx):
        for ch in text:  # 200 one-character tokens
            yield ch

    fake.script = tokens
    bridge = bridge_with({"llm": fake}, coalesce_chars=64, coalesce_ms=60_000)
    calls: list[str] = []
    result = await bridge.answer(ctx(), calls.append)
    assert result.text == text and not result.fallback
    assert "".join(calls) == text
    assert [len(c) for c in calls] == [1, 64, 64, 64, 7]  # the first token at once, then by size
    await bridge.close()


async def test_small_buffer_is_flushed_by_the_timer():
    fake = Scripted()
    gate = asyncio.Event()

    async def script(ctx):
        yield "ab"
        yield "cd"
        await gate.wait()  # only an on_chunk call (driven by the coalescing timer) opens this
        yield "ef"

    fake.script = script
    bridge = bridge_with({"llm": fake}, coalesce_chars=1000, coalesce_ms=20)
    calls: list[str] = []

    async def on_chunk(text: str) -> None:  # an async callback works as well as a plain one
        calls.append(text)
        gate.set()

    result = await bridge.answer(ctx(), on_chunk)
    assert result.text == "abcdef"
    assert "".join(calls) == "abcdef" and len(calls) >= 2
    await bridge.close()


# ---- deadlines --------------------------------------------------------------------------------


async def test_slow_first_chunk_gives_faq_answer_and_calls_dify_stop():
    state = State(mode="slow")
    async with serve(dify_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {
                "default": "dify",
                "first_chunk_timeout_s": 0.2,
                "backends": {
                    "dify": {"type": "dify", "base_url": f"{url}/v1", "api_key": dify_server.API_KEY},
                    "faq": {"type": "faq"},
                },
            }
        )
        chunks: list[str] = []
        result = await bridge.answer(ctx("How long does shipping take?"), chunks.append)
        assert result.fallback and result.reason == "first_chunk_timeout"
        assert result.backend == "faq" and result.text.startswith(SHIPPING_EN) and not result.handoff
        assert chunks == []
        await asyncio.wait_for(state.cancelled.wait(), 10)  # the bridge told Dify to stop the generation
        assert state.cancels[0]["task_id"] == state.extra["last_task_id"]
        assert bridge.stats()["backends"]["dify"]["first_chunk_timeout"] == 1
        await bridge.close()


async def test_slow_first_chunk_without_faq_match_gives_holding_message_and_calls_coze_cancel():
    state = State(mode="slow")
    async with serve(coze_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {
                "default": "coze",
                "first_chunk_timeout_s": 0.2,
                "holding_message": {"en": "One moment please.", "zh": "请稍候。"},
                "backends": {
                    "coze": {"type": "coze", "base_url": url, "api_key": coze_server.TOKEN, "bot_id": coze_server.BOT_ID},
                    "faq": {"type": "faq"},
                },
            }
        )
        result = await bridge.answer(ctx("量子计算机的原理是什么"), lambda _: None)
        assert result == BotResult("请稍候。", handoff=True, reason="first_chunk_timeout", backend="bridge", fallback=True)
        await asyncio.wait_for(state.cancelled.wait(), 10)
        conv, chat = state.extra["last_chat"]
        assert state.cancels[0]["json"] == {"conversation_id": conv, "chat_id": chat}
        await bridge.close()


async def test_hard_deadline_abandons_a_stream_that_stalls_after_starting():
    state = State(mode="slow_after_first")
    async with serve(openai_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {
                "default": "llm",
                "first_chunk_timeout_s": 5.0,
                "total_timeout_s": 0.3,
                "coalesce_ms": 0,
                "backends": {"llm": {"type": "openai", "base_url": f"{url}/v1"}, "faq": {"type": "faq"}},
            }
        )
        chunks: list[str] = []
        result = await bridge.answer(ctx("xyzzy plugh"), chunks.append)
        assert result.fallback and result.reason == "total_timeout"
        assert chunks == ["Hello"]  # what had streamed before the stall was shown
        assert bridge.stats()["counters"]["cancels"] == 1
        await bridge.close()


# ---- circuit breaker ------------------------------------------------------------------------------


async def test_dead_backend_opens_breaker_secondary_answers_and_half_open_probe_recovers():
    state = State(mode="http_error")
    clock = Clock()
    async with serve(openai_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {
                "default": "llm",
                "breaker": {"failures": 3, "cooldown_s": 30},
                "backends": {"llm": {"type": "openai", "base_url": f"{url}/v1", "secondary": "faq"}, "faq": {"type": "faq"}},
            }
        )
        bridge = BotBridge(bridge.config, clock=clock)
        questions = ["How long does shipping take?", "Is shipping free?", "Do you ship internationally?"]
        for q in questions:
            result = await bridge.answer(ctx(q), lambda _: None)
            assert result.backend == "faq" and not result.fallback and result.confidence > 0.9  # an FAQ question, asked as stored
        assert bridge.breaker_states() == {"llm": "open", "faq": "closed"}
        assert len(state.requests) == 3

        result = await bridge.answer(ctx("What is your return policy?"), lambda _: None)
        assert result.backend == "faq" and len(state.requests) == 3  # open: the dead backend is not called

        state.mode = "ok"
        clock.t += 31
        assert bridge.breaker_states()["llm"] == "half_open"
        result = await bridge.answer(ctx("Tell me a joke"), lambda _: None)
        assert result.backend == "llm" and result.text == "".join(state.chunks) and len(state.requests) == 4
        assert bridge.breaker_states()["llm"] == "closed"
        stats = bridge.stats()["backends"]["llm"]
        assert stats["backend_error"] == 3 and stats["skipped_open"] == 1 and stats["ok"] == 1 and stats["breaker_opened"] == 1
        await bridge.close()


async def test_failed_half_open_probe_opens_again():
    clock = Clock()
    fake = Scripted()

    async def boom(ctx):
        raise RuntimeError("down")
        yield ""

    fake.script = boom
    bridge = bridge_with({"llm": fake}, clock, breaker={"failures": 1, "cooldown_s": 10})
    await bridge.answer(ctx("q1"), lambda _: None)
    assert bridge.breaker_states()["llm"] == "open"
    clock.t += 11
    result = await bridge.answer(ctx("q2"), lambda _: None)  # the probe
    assert result.fallback and result.reason == "backend_error" and len(fake.calls) == 2
    assert bridge.breaker_states()["llm"] == "open"
    await bridge.answer(ctx("q3"), lambda _: None)
    assert len(fake.calls) == 2  # open again for a new cool-down
    await bridge.close()


async def test_mid_stream_error_counts_as_failure():
    state = State(mode="stream_error")
    async with serve(openai_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {
                "default": "llm",
                "coalesce_ms": 0,
                "breaker": {"failures": 2},
                "backends": {"llm": {"type": "openai", "base_url": f"{url}/v1", "secondary": "faq"}, "faq": {"type": "faq"}},
            }
        )
        for i in range(2):
            chunks: list[str] = []
            result = await bridge.answer(ctx(f"How long does shipping take? {i}"), chunks.append)
            assert chunks and "".join(chunks) == "".join(state.chunks[:2])  # it had started streaming...
            assert result.fallback and result.reason == "backend_error"  # ...so the fallback, not the secondary
            assert result.text.startswith(SHIPPING_EN)
        assert bridge.breaker_states()["llm"] == "open"
        assert bridge.stats()["backends"]["llm"]["backend_error"] == 2
        await bridge.close()


# ---- confidence, handoff ----------------------------------------------------------------------------


async def test_low_confidence_hands_off():
    fake = Scripted()

    async def unsure(ctx):
        yield "Maybe "
        yield "try turning it off?"
        yield BotResult("", confidence=0.2)

    fake.script = unsure
    bridge = bridge_with({"llm": fake}, confidence_threshold=0.5, tenants={"lenient": {"confidence_threshold": 0.1}})
    result = await bridge.answer(ctx("My blender makes a noise"), lambda _: None)
    assert result.handoff and result.reason == "low_confidence" and result.confidence == 0.2
    assert result.draft == "Maybe try turning it off?" and result.text == "I'm connecting you with a member of our team now."
    lenient = await bridge.answer(ctx("My blender makes a noise", tenant="lenient"), lambda _: None)
    assert not lenient.handoff and lenient.text == "Maybe try turning it off?"
    await bridge.close()


async def test_backend_may_ask_for_handoff():
    fake = Scripted()

    async def escalate(ctx):
        yield BotResult("A colleague will help you with the refund.", confidence=0.9, handoff=True, reason="refund_over_limit")

    fake.script = escalate
    bridge = bridge_with({"llm": fake})
    result = await bridge.answer(ctx("refund 5000 dollars"), lambda _: None)
    assert result.handoff and result.reason == "refund_over_limit" and result.text.startswith("A colleague")
    await bridge.close()


@pytest.mark.parametrize(
    ("question", "zh"),
    [
        ("I want to talk to a human", False),
        ("AGENT please", False),
        ("Can I speak to a real person?", False),
        ("ｈｕｍａｎ", False),  # full-width
        ("转人工", True),
        ("我要人工客服", True),
        ("客服在吗", True),
    ],
)
async def test_visitor_asking_for_a_human_hands_off_without_backend_call(question, zh):
    fake = Scripted()
    bridge = bridge_with({"llm": fake})
    result = await bridge.answer(ctx(question), lambda _: None)
    assert result.handoff and result.reason == "visitor_asked" and fake.calls == []
    assert result.text == ("正在为您转接人工客服，请稍候。" if zh else "I'm connecting you with a member of our team now.")
    await bridge.close()


@pytest.mark.parametrize("question", ["Which travel agency do you use?", "Is this good for humanity?", "人生的意义是什么"])
async def test_similar_words_do_not_hand_off(question):
    fake = Scripted()
    bridge = bridge_with({"llm": fake})
    result = await bridge.answer(ctx(question), lambda _: None)
    assert not result.handoff and len(fake.calls) == 1
    await bridge.close()


# ---- cache ---------------------------------------------------------------------------------------------


async def test_cache_hits_normalised_question_per_tenant_only():
    clock = Clock()
    fake = Scripted()
    bridge = bridge_with({"llm": fake}, clock, cache={"ttl_s": 60})
    first = await bridge.answer(ctx("How long does shipping take?"), lambda _: None)
    again = await bridge.answer(ctx("  how LONG does   shipping take？ ", conv="c2"), lambda _: None)
    assert len(fake.calls) == 1 and again.cached and not first.cached and again.text == first.text
    other = await bridge.answer(ctx("How long does shipping take?", tenant="globex"), lambda _: None)
    assert len(fake.calls) == 2 and not other.cached
    clock.t += 61
    await bridge.answer(ctx("How long does shipping take?"), lambda _: None)
    assert len(fake.calls) == 3  # expired
    counters = bridge.stats()["counters"]
    assert counters["cache.hit"] == 1 and counters["cache.miss"] == 3
    await bridge.close()


async def test_fallbacks_and_handoffs_are_not_cached():
    fake = Scripted()

    async def unsure(ctx):
        yield BotResult("hmm", confidence=0.1)

    fake.script = unsure
    bridge = bridge_with({"llm": fake})
    await bridge.answer(ctx("q"), lambda _: None)
    await bridge.answer(ctx("q"), lambda _: None)
    assert len(fake.calls) == 2
    await bridge.close()


# ---- cancellation ----------------------------------------------------------------------------------------


async def test_caller_cancellation_cancels_the_backend_and_propagates():
    fake = Scripted()
    shown = asyncio.Event()

    async def partial_then_hang(ctx):
        yield "Let me check"
        await asyncio.Event().wait()
        yield "never"

    fake.script = partial_then_hang
    bridge = bridge_with({"llm": fake}, coalesce_ms=0)
    task = asyncio.create_task(bridge.answer(ctx(), lambda _: shown.set()))
    await asyncio.wait_for(shown.wait(), 10)
    task.cancel()  # the visitor left / an agent took over
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.cancelled.wait(), 10)
    assert fake.cancel_calls == 1
    assert bridge.stats()["backends"]["llm"]["in_flight"] == 0 and bridge.breaker_states()["llm"] == "closed"
    await bridge.close()


async def test_caller_cancellation_calls_dify_stop():
    state = State(mode="slow")
    async with serve(dify_server.make_app(state), state) as url:
        bridge = BotBridge.from_mapping(
            {"default": "dify", "backends": {"dify": {"type": "dify", "base_url": f"{url}/v1", "api_key": dify_server.API_KEY}}}
        )
        task = asyncio.create_task(bridge.answer(ctx(), lambda _: None))
        await asyncio.wait_for(state.stalled.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(state.cancelled.wait(), 10)
        assert state.cancels[0]["task_id"] == state.extra["last_task_id"]
        await bridge.close()


# ---- limits ------------------------------------------------------------------------------------------------


async def test_concurrency_bound_queues_then_falls_back():
    fake = Scripted()
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()
        yield "done"

    fake.script = held
    bridge = bridge_with(
        {"llm": fake}, first_chunk_timeout_s=30, backends={"llm": {"type": FAKE, "max_concurrency": 1, "queue_wait_s": 0.2, "max_queue": 1}}
    )
    first = asyncio.create_task(bridge.answer(ctx("one", conv="c1"), lambda _: None))
    await asyncio.wait_for(fake.started.wait(), 10)
    second = asyncio.create_task(bridge.answer(ctx("two", conv="c2"), lambda _: None))
    await wait_for(lambda: bridge.stats()["backends"]["llm"]["queued"] == 1)
    third = await bridge.answer(ctx("three", conv="c3"), lambda _: None)  # queue full: at once
    assert third.fallback and third.reason == "busy"
    second_result = await second  # waited its queue_wait_s, then the fallback
    assert second_result.fallback and second_result.reason == "busy"
    gate.set()
    assert (await first).text == "done"
    assert len(fake.calls) == 1
    assert bridge.stats()["backends"]["llm"]["busy"] == 2 and bridge.breaker_states()["llm"] == "closed"
    await bridge.close()


async def test_queued_request_gets_the_slot_when_it_frees():
    fake = Scripted()
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()
        yield f"answer to {ctx.question}"

    fake.script = held
    bridge = bridge_with({"llm": fake}, backends={"llm": {"type": FAKE, "max_concurrency": 1, "queue_wait_s": 30}})
    first = asyncio.create_task(bridge.answer(ctx("one", conv="c1"), lambda _: None))
    await asyncio.wait_for(fake.started.wait(), 10)
    second = asyncio.create_task(bridge.answer(ctx("two", conv="c2"), lambda _: None))
    await wait_for(lambda: bridge.stats()["backends"]["llm"]["queued"] == 1)
    gate.set()
    assert (await first).text == "answer to one"
    assert (await second).text == "answer to two"
    await bridge.close()


async def test_tenant_rate_limit():
    clock = Clock()
    fake = Scripted()
    bridge = bridge_with({"llm": fake}, clock, rate={"per_s": 1, "burst": 2}, cache={"enabled": False})
    results = [await bridge.answer(ctx(f"q{i}"), lambda _: None) for i in range(3)]
    assert [r.reason for r in results] == ["", "", "rate_limited"] and results[2].fallback
    assert not (await bridge.answer(ctx("q", tenant="globex"), lambda _: None)).fallback
    clock.t += 1
    assert not (await bridge.answer(ctx("q4"), lambda _: None)).fallback
    await bridge.close()


# ---- routing, configuration, plugins ------------------------------------------------------------------------


async def test_routing_by_tenant_and_group():
    a, b, c = Scripted("a"), Scripted("b"), Scripted("c")
    bridge = bridge_with(
        {"a": a, "b": b, "c": c},
        tenants={"acme": {"backend": "b", "groups": {"sales": "c", "legal": ""}}, "quiet": {"backend": ""}},
    )
    assert bridge.backend_for("other", "default") == "a"
    assert bridge.backend_for("acme", "default") == "b"
    assert bridge.backend_for("acme", "sales") == "c"
    assert not bridge.has_bot("acme", "legal") and not bridge.has_bot("quiet", "x") and bridge.has_bot("acme", "x")
    await bridge.answer(ctx("hello there", tenant="acme", group="sales"), lambda _: None)
    assert (len(a.calls), len(b.calls), len(c.calls)) == (0, 0, 1)
    result = await bridge.answer(ctx("hello", tenant="quiet"), lambda _: None)
    assert result.handoff and result.reason == "no_bot"
    await bridge.close()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="bots.default"):
        BridgeConfig.from_mapping({"default": "nope"})
    with pytest.raises(ConfigError, match="bots.tenants.acme.groups.sales"):
        BridgeConfig.from_mapping({"tenants": {"acme": {"groups": {"sales": "ghost"}}}})
    for key, what in (("groups", "backend"), ("group_templates", "template")):
        with pytest.raises(ConfigError, match=f"bots.tenants.acme.{key}: expected a table of group = {what} name"):
            BridgeConfig.from_mapping({"tenants": {"acme": {key: {"sales": 3}}}})
    with pytest.raises(ConfigError, match="coalesce"):
        BridgeConfig.from_mapping({"coalesce_msec": 5})
    with pytest.raises(ConfigError, match="bots.breaker.failures"):
        BridgeConfig.from_mapping({"breaker": {"failures": "five"}})
    with pytest.raises(ConfigError, match="type"):
        BridgeConfig.from_mapping({"default": "x", "backends": {"x": {"url": "http://127.0.0.1:1"}}})


async def test_empty_config_is_the_demo_faq_bot():
    bridge = BotBridge.from_mapping({})
    assert bridge.has_bot("any", "default")
    result = await bridge.answer(ctx("发货要多久？"), lambda _: None)
    assert result.backend == "faq" and result.text.startswith("工作日下午3点前下单当天发货")
    result = await bridge.answer(ctx("What is the airspeed velocity of an unladen swallow?"), lambda _: None)
    assert result.handoff and result.reason == "low_confidence"
    await bridge.close()


async def test_plugin_by_import_path():
    bridge = BotBridge.from_mapping(
        {"default": "mine", "backends": {"mine": {"type": "tests.test_bot_bridge:EchoBackend", "prefix": "plugin"}}}
    )
    result = await bridge.answer(ctx("ping"), lambda _: None)
    assert result.text == "plugin: ping" and result.confidence == 0.99 and result.backend == "mine"
    await bridge.close()
    with pytest.raises(ConfigError, match="cannot import"):
        BotBridge.from_mapping({"default": "x", "backends": {"x": {"type": "no_such_module_xyz:Thing"}}})
    with pytest.raises(ConfigError, match="has no"):
        BotBridge.from_mapping({"default": "x", "backends": {"x": {"type": "tests.test_bot_bridge:Missing"}}})


async def test_plugin_by_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "chatgw_echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chatgw-echo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [chatgw.bot_backends]
            echo = tests.test_bot_bridge:EchoBackend
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in sys.path
    bridge = BotBridge.from_mapping({"default": "e", "backends": {"e": {"type": "echo"}}})
    result = await bridge.answer(ctx("hi there"), lambda _: None)
    assert result.text == "echo: hi there"
    await bridge.close()


async def test_faq_backend_instance_is_reused_for_fallback():
    bridge = BotBridge.from_mapping({})
    assert isinstance(bridge.backend("faq"), FaqBackend)
    await bridge.close()


def test_the_worker_logs_no_bm25s_progress_at_info(capsys):
    """bm25s sets its own logger to DEBUG when imported, after the worker set up its logging."""
    import logging

    from bot_bridge.worker import _configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        _configure_logging()
        import bm25s  # noqa: F401 - its import is what resets its logger's level

        logging.getLogger("bm25s").debug("Building index from tokens")
        logging.getLogger("bm25s").warning("a bm25s warning")
        logging.getLogger("chatgw.bots.worker").info("worker info")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "Building index" not in err and "a bm25s warning" in err and "worker info" in err

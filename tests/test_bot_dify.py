"""Dify backend against a local server speaking Dify's documented chat-messages streaming format exactly
(tests/bot_servers/dify_server.py: message / message_replace / message_end / error / ping events,
conversation ids, 404 for forgotten conversations, the /stop endpoint, cut streams)."""

from __future__ import annotations

import asyncio

import pytest

from bot_bridge.base import BackendError, BotContext, BotResult
from bot_bridge.dify import DifyBackend
from tests.bot_servers import State, serve
from tests.bot_servers.dify_server import API_KEY, make_app


@pytest.fixture
async def dify():
    state = State()
    async with serve(make_app(state), state) as url:
        backend = DifyBackend("dify", {"base_url": f"{url}/v1", "api_key": API_KEY, "meta_as_inputs": True})
        try:
            yield state, backend
        finally:
            await backend.aclose()


def ctx(conv: str = "c1", question: str = "What is your return policy?") -> BotContext:
    return BotContext("acme", conv, "default", "v1", question, [], {"plan": "gold"})


async def collect(backend, c) -> list:
    return [item async for item in backend.stream(c)]


async def test_streams_answer_and_keeps_conversation_id(dify):
    state, backend = dify
    items = await collect(backend, ctx())
    assert items[:-1] == state.chunks
    assert items[-1] == BotResult("".join(state.chunks))
    first = state.requests[0]["json"]
    assert first["response_mode"] == "streaming" and first["conversation_id"] == "" and first["user"] == "acme:v1"
    assert first["inputs"] == {"plan": "gold"}
    await collect(backend, ctx(question="and exchanges?"))
    second = state.requests[1]["json"]
    assert second["conversation_id"] and second["conversation_id"] in state.extra["conversations"]
    await collect(backend, ctx(conv="c2"))
    assert state.requests[2]["json"]["conversation_id"] == ""  # another gateway conversation, another Dify one


async def test_message_replace_replaces_the_text(dify):
    state, backend = dify
    state.mode = "replace"
    items = await collect(backend, ctx())
    assert items[-1] == BotResult("[content withheld by moderation]")


async def test_retrieval_scores_give_confidence_when_enabled(dify):
    state, backend = dify
    state.mode = "scored"
    backend.confidence_from_retrieval = True
    items = await collect(backend, ctx())
    assert items[-1].confidence == pytest.approx(0.31)


async def test_forgotten_conversation_starts_a_new_one(dify):
    state, backend = dify
    await collect(backend, ctx())
    state.extra["conversations"].clear()  # Dify lost it
    items = await collect(backend, ctx(question="again"))
    assert items[-1].text == "".join(state.chunks)
    assert [r["json"]["conversation_id"] == "" for r in state.requests] == [True, False, True]


@pytest.mark.parametrize("mode", ["error_event", "cut", "http_error"])
async def test_failures_raise(dify, mode):
    state, backend = dify
    state.mode = mode
    got: list = []
    with pytest.raises(BackendError):
        async for item in backend.stream(ctx()):
            got.append(item)
    if mode != "http_error":
        assert got == state.chunks[:2]


async def test_cancel_calls_stop_with_the_task_id(dify):
    state, backend = dify
    state.mode = "slow"

    async def consume():
        return await collect(backend, ctx())

    task = asyncio.create_task(consume())
    await asyncio.wait_for(state.stalled.wait(), 10)
    await backend.cancel(ctx())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state.cancels == [
        {"task_id": state.extra["last_task_id"], "json": {"user": "acme:v1"}, "headers": state.cancels[0]["headers"]}
    ]
    assert state.cancels[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"

"""Coze backend against a local server speaking Coze's documented v3 chat streaming format exactly
(tests/bot_servers/coze_server.py: event:/data: lines, message.delta, message.completed repeating the
full text, verbose/follow_up messages, chat.completed / chat.failed / error / done, /v3/chat/cancel, cut streams)."""

from __future__ import annotations

import asyncio

import pytest

from bot_bridge.base import BackendError, BotContext, BotResult
from bot_bridge.coze import CozeBackend
from tests.bot_servers import State, serve
from tests.bot_servers.coze_server import BOT_ID, TOKEN, make_app


@pytest.fixture
async def coze():
    state = State()
    async with serve(make_app(state), state) as url:
        backend = CozeBackend("coze", {"base_url": url, "api_key": TOKEN, "bot_id": BOT_ID})
        try:
            yield state, backend
        finally:
            await backend.aclose()


def ctx(conv: str = "c1", question: str = "你们支持哪些付款方式？") -> BotContext:
    return BotContext("acme", conv, "default", "v1", question, [], {})


async def collect(backend, c) -> list:
    return [item async for item in backend.stream(c)]


async def test_deltas_are_not_doubled_by_completed_and_conversation_is_kept(coze):
    state, backend = coze
    items = await collect(backend, ctx())
    assert items[:-1] == state.chunks  # message.completed repeated the text: not emitted again
    assert items[-1] == BotResult("".join(state.chunks))  # verbose and follow_up messages are not the answer
    req = state.requests[0]
    assert req["query"] == {} and req["json"]["stream"] is True and req["json"]["bot_id"] == BOT_ID
    assert req["json"]["additional_messages"] == [{"role": "user", "content": "你们支持哪些付款方式？", "content_type": "text"}]
    await collect(backend, ctx(question="还有别的吗"))
    assert state.requests[1]["query"]["conversation_id"] == state.extra["last_chat"][0]


async def test_completed_without_deltas_is_used_once(coze):
    state, backend = coze
    state.mode = "no_delta"
    items = await collect(backend, ctx())
    assert items == ["".join(state.chunks), BotResult("".join(state.chunks))]


@pytest.mark.parametrize("mode", ["failed", "error_event", "cut", "json_error"])
async def test_failures_raise(coze, mode):
    state, backend = coze
    state.mode = mode
    got: list = []
    with pytest.raises(BackendError):
        async for item in backend.stream(ctx()):
            got.append(item)
    if mode != "json_error":
        assert got == state.chunks[:2]


async def test_cancel_posts_conversation_and_chat_ids(coze):
    state, backend = coze
    state.mode = "slow"
    task = asyncio.create_task(collect(backend, ctx()))
    await asyncio.wait_for(state.stalled.wait(), 10)
    await backend.cancel(ctx())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    conv, chat = state.extra["last_chat"]
    assert [c["json"] for c in state.cancels] == [{"conversation_id": conv, "chat_id": chat}]
    assert state.cancels[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"

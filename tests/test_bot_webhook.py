"""Webhook backend against a local receiver that implements the documented contract exactly
(tests/bot_servers/webhook_server.py: it checks the HMAC-SHA256 signature over timestamp + "." + body
itself, replays answers by Idempotency-Key, answers JSON or NDJSON, and cuts streams on demand)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bot_bridge.base import BackendError, BotContext, BotResult, Turn
from bot_bridge.webhook import WebhookBackend, idempotency_key, sign, verify
from tests.bot_servers import State, serve
from tests.bot_servers.webhook_server import SECRET, make_app


@pytest.fixture
async def hook():
    state = State(mode="json")
    async with serve(make_app(state), state) as url:
        backend = WebhookBackend("hook", {"url": f"{url}/hook", "secret": SECRET, "cancel_url": f"{url}/cancel"})
        try:
            yield state, backend
        finally:
            await backend.aclose()


def ctx(seq: int | None = 7, question: str = "Do you ship to Norway?") -> BotContext:
    return BotContext("acme", "c1", "sales", "v1", question, [Turn("visitor", "hi"), Turn("bot", "hello!")], {"lang": "en"}, seq)


async def collect(backend, c) -> list:
    return [item async for item in backend.stream(c)]


async def test_signed_json_answer_and_body(hook):
    state, backend = hook
    state.extra.update(confidence=0.42, handoff=True, text="Let me get a colleague")
    items = await collect(backend, ctx())
    assert items == [BotResult("Let me get a colleague", 0.42, handoff=True)]
    req = state.requests[0]
    assert req["signature_ok"] is True
    body = json.loads(req["body"])
    assert body == {
        "tenant": "acme",
        "conv_id": "c1",
        "group": "sales",
        "visitor": "v1",
        "question": "Do you ship to Norway?",
        "history": [{"role": "visitor", "text": "hi"}, {"role": "bot", "text": "hello!"}],
        "meta": {"lang": "en"},
        "seq": 7,
    }


async def test_idempotency_key_is_stable_per_question_seq(hook):
    state, backend = hook
    first = await collect(backend, ctx(seq=7))
    again = await collect(backend, ctx(seq=7))  # a retry of the same question
    other = await collect(backend, ctx(seq=9))
    keys = [r["headers"]["Idempotency-Key"] for r in state.requests]
    assert keys[0] == keys[1] != keys[2]
    assert first == again != other  # the receiver replayed its first answer for the repeated key
    assert idempotency_key(ctx(seq=7)) == keys[0]


async def test_wrong_secret_is_refused(hook):
    state, backend = hook
    backend.secret = "not-the-secret"
    with pytest.raises(BackendError, match="401"):
        await collect(backend, ctx())
    assert state.requests[0]["signature_ok"] is False


async def test_ndjson_streaming(hook):
    state, backend = hook
    state.mode = "ndjson"
    state.extra["confidence"] = 0.75
    items = await collect(backend, ctx())
    assert items[:-1] == state.chunks
    assert items[-1] == BotResult("", 0.75)


@pytest.mark.parametrize("mode", ["ndjson_cut", "ndjson_no_done", "ndjson_error", "http_error"])
async def test_failures_raise(hook, mode):
    state, backend = hook
    state.mode = mode
    got: list = []
    with pytest.raises(BackendError):
        async for item in backend.stream(ctx()):
            got.append(item)
    if mode.startswith("ndjson"):
        assert got == state.chunks[: 2 if mode != "ndjson_no_done" else None]


async def test_cancel_is_signed_and_names_the_key(hook):
    state, backend = hook
    await backend.cancel(ctx())
    await asyncio.wait_for(state.cancelled.wait(), 5)
    assert state.cancels[0]["signature_ok"] is True
    assert state.cancels[0]["json"]["idempotency_key"] == idempotency_key(ctx())


def test_sign_and_verify():
    ts = str(int(time.time()))
    sig = sign("k", ts, b"{}")
    assert verify("k", ts, b"{}", sig)
    assert not verify("k", ts, b"{ }", sig)
    assert not verify("other", ts, b"{}", sig)
    assert not verify("k", str(int(ts) - 3600), b"{}", sign("k", str(int(ts) - 3600), b"{}"))  # replayed later

"""Coze (v3) bots: ``POST {base_url}/v3/chat?conversation_id=...`` with ``stream: true``.

The answer is SSE with ``event:`` lines: ``conversation.chat.created`` /
``in_progress`` (carry the chat id and conversation id),
``conversation.message.delta`` (chunks; only ``type: answer`` is text for the
visitor), ``conversation.message.completed`` (repeats the full message: used
only when no delta came for it, never appended), ``conversation.chat.completed``
(the answer is complete), ``conversation.chat.failed`` / ``error`` (failure;
``last_error`` / ``code``, ``msg``), ``conversation.chat.requires_action``
(a local plugin call: unsupported, a failure) and ``done``. Coze keeps the
history: the gateway remembers Coze's ``conversation_id`` per gateway
conversation (a bounded map). Cancel: ``POST {base_url}/v3/chat/cancel``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson
from cachetools import LRUCache

from .base import BackendError, BotContext, BotResult
from .http import HttpBackend, is_2xx, read_body
from .sse import check_status, iter_sse


class CozeBackend(HttpBackend):
    """Options: base_url (default https://api.coze.com; https://api.coze.cn in China), api_key
    (personal access token), bot_id, meta_as_variables (bool: visitor metadata into
    ``custom_variables``), max_conversations (default 10000)."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options, default_base_url="https://api.coze.com")
        self.bot_id = str(options.get("bot_id", ""))
        if not self.bot_id:
            raise ValueError(f"backend {name!r}: bot_id is required")
        self.meta_as_variables = bool(options.get("meta_as_variables", False))
        self.conversations: LRUCache[tuple[str, str], str] = LRUCache(int(options.get("max_conversations", 10_000)))
        self.chats: LRUCache[tuple[str, str], tuple[str, str]] = LRUCache(10_000)  # -> (conversation_id, chat_id)

    def build_body(self, ctx: BotContext) -> dict[str, Any]:
        body: dict[str, Any] = {
            "bot_id": self.bot_id,
            "user_id": f"{ctx.tenant}:{ctx.visitor}",
            "stream": True,
            "auto_save_history": True,
            "additional_messages": [{"role": "user", "content": ctx.question, "content_type": "text"}],
        }
        if self.meta_as_variables and ctx.meta:
            body["custom_variables"] = {str(k): str(v) for k, v in ctx.meta.items()}
        return body

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        key = (ctx.tenant, ctx.conv_id)
        params = {}
        conv = self.conversations.get(key)
        if conv:
            params["conversation_id"] = conv
        async with self.client.stream("POST", f"{self.base_url}/v3/chat", params=params, json=self.build_body(ctx)) as resp:
            await check_status(resp, "coze")
            if "text/event-stream" not in resp.headers.get("content-type", ""):
                data = _loads(await read_body(resp))  # Coze answers request errors as JSON {code, msg}
                raise BackendError(f"coze: error {data.get('code')}: {data.get('msg')}")
            async with aclosing(self._events(ctx, key, resp)) as items:
                async for item in items:
                    yield item

    async def _events(self, ctx: BotContext, key: tuple[str, str], resp: aiohttp.ClientResponse) -> AsyncIterator[str | BotResult]:
        streamed: dict[str, str] = {}  # message id -> text received as deltas
        order: list[str] = []
        completed = False
        async with aclosing(iter_sse(resp)) as events:
            async for ev in events:
                kind = ev.event
                if kind == "done":
                    break
                if kind == "error":
                    data = _loads(ev.data) if ev.data.strip().startswith("{") else {"msg": ev.data}
                    raise BackendError(f"coze: error {data.get('code')}: {data.get('msg')}")
                if not kind.startswith("conversation."):
                    continue
                data = _loads(ev.data)
                if data.get("conversation_id"):
                    self.conversations[key] = data["conversation_id"]
                if kind.startswith("conversation.chat."):
                    if data.get("id") and data.get("conversation_id"):
                        self.chats[key] = (data["conversation_id"], data["id"])
                    if kind == "conversation.chat.failed":
                        err = data.get("last_error") or {}
                        raise BackendError(f"coze: chat failed {err.get('code')}: {err.get('msg')}")
                    if kind == "conversation.chat.requires_action":
                        raise BackendError("coze: the bot requires a local plugin call (requires_action), unsupported")
                    if kind == "conversation.chat.completed":
                        completed = True
                    continue
                if data.get("role", "assistant") != "assistant" or data.get("type") != "answer":
                    continue  # function_call, tool_response, verbose, follow_up ...
                mid = str(data.get("id", ""))
                if mid not in streamed:
                    streamed[mid] = ""
                    order.append(mid)
                content = data.get("content") or ""
                if kind == "conversation.message.delta":
                    if content:
                        streamed[mid] += content
                        yield content
                elif kind == "conversation.message.completed":
                    if not streamed[mid] and content:  # no deltas came for it: the full text now, once
                        streamed[mid] = content
                        yield content
                    elif content:
                        streamed[mid] = content  # authoritative full text; nothing more is emitted
        self.chats.pop(key)
        if not completed:
            raise BackendError("coze: stream ended before conversation.chat.completed")
        yield BotResult("".join(streamed[m] for m in order))

    async def cancel(self, ctx: BotContext) -> None:
        """Cancel the chat in progress, if its ids are known yet."""
        ids = self.chats.pop((ctx.tenant, ctx.conv_id))
        if not ids:
            return
        conversation_id, chat_id = ids
        resp = await self.client.post(
            f"{self.base_url}/v3/chat/cancel", json={"conversation_id": conversation_id, "chat_id": chat_id}
        )
        if not is_2xx(resp):
            raise BackendError(f"coze: cancel {chat_id}: HTTP {resp.status}")


def _loads(raw: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except ValueError as exc:
        raise BackendError(f"coze: bad JSON: {raw[:200]!r}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"coze: expected a JSON object, got {raw[:200]!r}")
    return data

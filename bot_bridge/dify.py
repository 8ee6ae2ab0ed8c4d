"""Dify chat apps: ``POST {base_url}/chat-messages`` with ``response_mode: streaming``.

Events (SSE ``data: {"event": ...}`` lines): ``message`` / ``agent_message``
carry answer chunks in ``answer``; ``message_replace`` replaces the whole
answer so far (content moderation); ``message_end`` ends the answer (its
``metadata.retriever_resources[].score`` may give a confidence); ``error``
fails it; ``ping`` keeps the connection alive; workflow/node events are
ignored. Dify keeps the history itself: the gateway only remembers Dify's
``conversation_id`` per gateway conversation (a bounded map) and sends the
question. Cancel: ``POST {base_url}/chat-messages/{task_id}/stop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson
from cachetools import LRUCache

from .base import BackendError, BotContext, BotResult
from .http import HttpBackend, is_2xx
from .sse import check_status, iter_sse


class DifyBackend(HttpBackend):
    """Options: base_url (e.g. https://api.dify.ai/v1), api_key (app key), inputs (table),
    meta_as_inputs (bool: visitor metadata into ``inputs``), confidence_from_retrieval (bool),
    max_conversations (default 10000)."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.inputs: dict[str, Any] = dict(options.get("inputs", {}))
        self.meta_as_inputs = bool(options.get("meta_as_inputs", False))
        self.confidence_from_retrieval = bool(options.get("confidence_from_retrieval", False))
        self.conversations: LRUCache[tuple[str, str], str] = LRUCache(int(options.get("max_conversations", 10_000)))
        self.tasks: LRUCache[tuple[str, str], str] = LRUCache(10_000)

    @staticmethod
    def user_id(ctx: BotContext) -> str:
        return f"{ctx.tenant}:{ctx.visitor}"

    def build_body(self, ctx: BotContext) -> dict[str, Any]:
        inputs = dict(self.inputs)
        if self.meta_as_inputs:
            inputs.update({str(k): v for k, v in ctx.meta.items()})
        return {
            "inputs": inputs,
            "query": ctx.question,
            "response_mode": "streaming",
            "conversation_id": self.conversations.get((ctx.tenant, ctx.conv_id)) or "",
            "user": self.user_id(ctx),
        }

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        key = (ctx.tenant, ctx.conv_id)
        body = self.build_body(ctx)
        url = f"{self.base_url}/chat-messages"
        for attempt in (0, 1):
            async with self.client.stream("POST", url, json=body) as resp:
                if resp.status == 404 and body["conversation_id"] and attempt == 0:
                    # Dify forgot the conversation (deleted, expired): start a new one once.
                    self.conversations.pop(key)
                    body["conversation_id"] = ""
                    continue
                await check_status(resp, "dify")
                async with aclosing(self._events(ctx, resp)) as items:
                    async for item in items:
                        yield item
                return

    async def _events(self, ctx: BotContext, resp: aiohttp.ClientResponse) -> AsyncIterator[str | BotResult]:
        key = (ctx.tenant, ctx.conv_id)
        text = ""
        ended = False
        confidence: float | None = None
        async with aclosing(iter_sse(resp)) as events:
            async for ev in events:
                if ev.event == "ping" or not ev.data.strip():
                    continue
                try:
                    data = orjson.loads(ev.data)
                except ValueError as exc:
                    raise BackendError(f"dify: bad JSON in stream: {ev.data[:200]!r}") from exc
                kind = data.get("event", ev.event)
                if data.get("task_id"):
                    self.tasks[key] = data["task_id"]
                if data.get("conversation_id"):
                    self.conversations[key] = data["conversation_id"]
                if kind in ("message", "agent_message"):
                    chunk = data.get("answer") or ""
                    if chunk:
                        text += chunk
                        yield chunk
                elif kind == "message_replace":
                    text = data.get("answer") or ""
                elif kind == "message_end":
                    ended = True
                    if self.confidence_from_retrieval:
                        scores = [r.get("score") for r in (data.get("metadata") or {}).get("retriever_resources") or []]
                        scores = [float(s) for s in scores if isinstance(s, int | float)]
                        confidence = max(scores) if scores else 0.0
                    break
                elif kind == "error":
                    self.tasks.pop(key)
                    raise BackendError(f"dify: error {data.get('status')} {data.get('code')}: {data.get('message')}")
                # workflow_started, node_*, workflow_finished, agent_thought, message_file, tts_*: not text
        self.tasks.pop(key)
        if not ended:
            raise BackendError("dify: stream ended before message_end")
        yield BotResult(text, confidence)

    async def cancel(self, ctx: BotContext) -> None:
        """Stop the running generation, if its task id is known yet."""
        task_id = self.tasks.pop((ctx.tenant, ctx.conv_id))
        if not task_id:
            return
        resp = await self.client.post(f"{self.base_url}/chat-messages/{task_id}/stop", json={"user": self.user_id(ctx)})
        if not is_2xx(resp):
            raise BackendError(f"dify: stop {task_id}: HTTP {resp.status}")

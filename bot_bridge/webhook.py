"""Generic HTTP webhook: the gateway POSTs the question, your service answers.

Request: ``POST {url}`` with a JSON body
``{tenant, conv_id, group, visitor, question, history: [{role, text}], meta, seq}``
and headers

- ``X-Chatgw-Timestamp``: Unix seconds,
- ``X-Chatgw-Signature``: ``sha256=`` + hex HMAC-SHA256(secret, timestamp + "." + body bytes),
- ``Idempotency-Key``: stable for one (tenant, conversation, question seq): a retry
  of the same question carries the same key.

Response, either
- ``application/json``: ``{"text": "...", "confidence": 0.9?, "handoff": false?, "reason"?: "..."}``, or
- ``application/x-ndjson`` (streaming): lines ``{"delta": "chunk"}`` ... then one
  ``{"done": true, "text"?: full, "confidence"?, "handoff"?}``; ``{"error": "..."}``
  fails it. A stream without the ``done`` line was cut (a failure).

Cancel (optional ``cancel_url``): the same signed headers, body ``{tenant, conv_id, idempotency_key}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from .base import BackendError, BotContext, BotResult
from .http import BODY_ERRORS, HttpBackend, HTTPError, is_2xx, line_batches, read_body

SIGNATURE_HEADER = "X-Chatgw-Signature"
TIMESTAMP_HEADER = "X-Chatgw-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp + "." + body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does: constant-time compare, and reject stale timestamps (replays)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def idempotency_key(ctx: BotContext) -> str:
    """Stable per (tenant, conversation, question seq); without a seq, per (history length, question)."""
    ident = str(ctx.seq) if ctx.seq is not None else f"h{len(ctx.history)}:{ctx.question}"
    return hashlib.sha256(f"{ctx.tenant}\x1f{ctx.conv_id}\x1f{ident}".encode()).hexdigest()[:32]


class WebhookBackend(HttpBackend):
    """Options: url, secret (HMAC key; required), cancel_url, history_limit (turns sent, default 20), headers."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.url = str(options.get("url") or options.get("base_url"))  # used exactly as configured
        self.secret = str(options.get("secret", ""))
        if not self.secret:
            raise ValueError(f"backend {name!r}: secret (the HMAC key) is required")
        self.cancel_url = str(options.get("cancel_url", ""))
        self.history_limit = int(options.get("history_limit", 20))

    def _signed(self, body: bytes, key: str) -> dict[str, str]:
        ts = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            "Idempotency-Key": key,
        }

    def build_body(self, ctx: BotContext) -> bytes:
        history = ctx.history[-self.history_limit :] if self.history_limit > 0 else []
        return json.dumps(
            {
                "tenant": ctx.tenant,
                "conv_id": ctx.conv_id,
                "group": ctx.group,
                "visitor": ctx.visitor,
                "question": ctx.question,
                "history": [{"role": t.role, "text": t.text} for t in history],
                "meta": ctx.meta,
                "seq": ctx.seq,
            },
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        ).encode()

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        body = self.build_body(ctx)
        headers = self._signed(body, idempotency_key(ctx))
        headers["Accept"] = "application/x-ndjson, application/json"
        async with self.client.stream("POST", self.url, content=body, headers=headers) as resp:
            if not is_2xx(resp):
                detail = (await read_body(resp))[:300].decode("utf-8", "replace")
                raise BackendError(f"webhook: HTTP {resp.status}: {detail}")
            ctype = resp.headers.get("content-type", "")
            if "ndjson" in ctype or "jsonlines" in ctype:
                done = False
                try:
                    async with aclosing(line_batches(resp)) as batches:
                        async for batch in batches:
                            for line in batch:
                                if not line.strip():
                                    continue
                                data = _loads(line)
                                if data.get("error"):
                                    raise BackendError(f"webhook: error: {data['error']}")
                                if data.get("delta"):
                                    yield str(data["delta"])
                                if data.get("done"):
                                    done = True
                                    yield _result(data)
                                    break
                            if done:
                                break
                except (HTTPError, *BODY_ERRORS) as exc:
                    raise BackendError(f"webhook: stream broken: {exc!r}") from exc
                if not done:
                    raise BackendError("webhook: NDJSON stream ended before its done line")
            else:
                data = _loads(await read_body(resp))
                if data.get("error"):
                    raise BackendError(f"webhook: error: {data['error']}")
                if "text" not in data and not data.get("handoff"):
                    raise BackendError("webhook: the answer has no text")
                yield _result(data)

    async def cancel(self, ctx: BotContext) -> None:
        if not self.cancel_url:
            return
        key = idempotency_key(ctx)
        body = json.dumps({"tenant": ctx.tenant, "conv_id": ctx.conv_id, "idempotency_key": key}).encode()
        resp = await self.client.post(self.cancel_url, content=body, headers=self._signed(body, key))
        if not is_2xx(resp):
            raise BackendError(f"webhook: cancel: HTTP {resp.status}")


def _loads(raw: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BackendError(f"webhook: bad JSON: {raw[:200]!r}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"webhook: expected a JSON object, got {raw[:200]!r}")
    return data


def _result(data: dict[str, Any]) -> BotResult:
    conf = data.get("confidence")
    if conf is not None and not isinstance(conf, int | float):
        raise BackendError(f"webhook: confidence must be a number, got {conf!r}")
    return BotResult(
        text=str(data.get("text") or ""),
        confidence=None if conf is None else max(0.0, min(1.0, float(conf))),
        handoff=bool(data.get("handoff", False)),
        reason=str(data.get("reason") or ""),
    )

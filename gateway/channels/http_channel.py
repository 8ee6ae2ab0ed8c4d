"""A generic HTTP channel: a site's own messaging backend (an app, an SMS gateway) in and out.

Inbound: `POST /channels/<name>` with `{"user": external id, "text": ...}` and the headers of
docs/webhooks.md (`Chatgw-Event-Id`: the message's id, its client id here; `Chatgw-Timestamp`;
`Chatgw-Signature: v1=HMAC-SHA256(secret, "<id>.<timestamp>." + body)`): a bad signature or a
timestamp outside five minutes is 401.

Outbound: `POST <url>` with `{"user", "conversation", "seq", "from", "role", "text"}` (for the
close: `"closed": true`), signed the same way; a 2xx means taken.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..webhooks import signature, verify
from .base import Channel, Refused, text_of


class HttpChannel(Channel):
    kind = "http"

    def __init__(self, node: Any, settings: dict[str, Any]):
        super().__init__(node, settings)
        self.url: str = settings["url"]
        self.secret: str = settings["secret"]
        self._http: aiohttp.ClientSession | None = None

    async def inbound(self, request: web.Request) -> tuple[str, str, str] | web.Response:
        body = await request.read()
        try:
            event_id = verify(self.secret, request.headers, body)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=401)
        try:
            msg = orjson.loads(body)
            user, text = msg["user"], msg["text"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"error": 'body: {"user": str, "text": str}'}, status=400)
        if not (isinstance(user, str) and 0 < len(user) <= 128 and isinstance(text, str) and text):
            return web.json_response({"error": 'body: {"user": str, "text": str}'}, status=400)
        return user, event_id, text

    async def send(self, external_id: str, entry: dict[str, Any]) -> str | None:
        out: dict[str, Any] = {"user": external_id, "conversation": entry["conv"], "seq": entry["seq"]}
        if entry["t"] == "msg":
            out.update({"from": entry["from"], "role": entry["role"], "text": text_of(entry)})
        else:
            out["closed"] = True
        body = orjson.dumps(out)
        event_id, ts = f"{entry['conv']}:{entry['seq']}", int(time.time())
        headers = {"Content-Type": "application/json", "Chatgw-Event-Id": event_id, "Chatgw-Timestamp": str(ts),
                   "Chatgw-Signature": signature(self.secret, event_id, ts, body)}
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.post(self.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as r:
                if 400 <= r.status < 500 and r.status not in (408, 425, 429):
                    raise Refused(f"HTTP {r.status}")  # the far end says it will never take it
                return None if 200 <= r.status < 300 else f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}"

    async def stop(self) -> None:
        await super().stop()
        if self._http is not None:
            await self._http.close()

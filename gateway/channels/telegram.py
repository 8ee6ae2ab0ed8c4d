"""Telegram's Bot API as a channel (https://core.telegram.org/bots/api).

Inbound: Telegram POSTs an `Update` to the webhook set with `setWebhook(url=.../channels/<name>,
secret_token=<secret>)`; every request carries `X-Telegram-Bot-Api-Secret-Token: <secret>`. A text
message (`update.message.text`) from chat `message.chat.id` is the contact's message; its client id
is the chat and `message_id`, so Telegram's re-delivery of an update that got no 200 is stored once.
Other updates are answered 200 and ignored.

Outbound: `POST {api_base}/bot<token>/sendMessage {"chat_id", "text"}`; the answer is
`{"ok": true, "result": ...}`, or `{"ok": false, "error_code", "description", "parameters":
{"retry_after"}}` (429: wait that long).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import aiohttp
from aiohttp import web

from .base import Channel, Refused, text_of


class TelegramChannel(Channel):
    kind = "telegram"

    def __init__(self, node: Any, settings: dict[str, Any]):
        super().__init__(node, settings)
        self.token: str = settings["token"]
        self.secret: str = settings["secret"]
        self.api_base: str = settings.get("api_base", "https://api.telegram.org").rstrip("/")
        self._http: aiohttp.ClientSession | None = None

    async def inbound(self, request: web.Request) -> tuple[str, str, str] | web.Response:
        if not hmac.compare_digest(request.headers.get("X-Telegram-Bot-Api-Secret-Token", "").encode("utf-8", "replace"), self.secret.encode()):
            return web.json_response({"ok": False, "description": "bad secret token"}, status=401)
        try:
            update = await request.json()
            message = update.get("message") or {}
            chat_id, message_id, text = message.get("chat", {}).get("id"), message.get("message_id"), message.get("text")
        except (ValueError, AttributeError):
            return web.json_response({"ok": False, "description": "not an Update"}, status=400)
        if not isinstance(chat_id, int) or not isinstance(message_id, int) or not isinstance(text, str) or not text:
            return web.json_response({"ok": True, "ignored": True})  # not a text message: nothing to relay
        return str(chat_id), f"{chat_id}:{message_id}", text

    async def send(self, external_id: str, entry: dict[str, Any]) -> str | None:
        text = text_of(entry)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.post(f"{self.api_base}/bot{self.token}/sendMessage",
                                       json={"chat_id": int(external_id), "text": text},
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        if not isinstance(body, dict):
            return f"not a Bot API answer: {body!r:.100}"
        if body.get("ok"):
            return None
        if body.get("error_code") in (400, 403):  # a bad request, or the user blocked the bot: never taken
            raise Refused(f"{body.get('error_code')}: {body.get('description')}")
        retry_after = (body.get("parameters") or {}).get("retry_after")
        if isinstance(retry_after, int):
            await asyncio.sleep(min(retry_after, 60))
        return f"{body.get('error_code')}: {body.get('description')}"

    async def stop(self) -> None:
        await super().stop()
        if self._http is not None:
            await self._http.close()

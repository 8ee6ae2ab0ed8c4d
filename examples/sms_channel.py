"""A channel of your own: an SMS gateway's users as visitors, in about forty lines (docs/channels.md).

    # chatgw.toml
    [[channels]]
    kind = "sms_channel:SmsChannel"        # module:Class, importable by the node (PYTHONPATH)
    name = "sms"
    tenant = "acme"
    secret = "shared with the SMS gateway, 16+ chars"
    url = "https://sms-gateway.example/send"

The SMS gateway POSTs `{"from": "+15551234567", "id": "<its message id>", "body": "..."}` to
`/channels/sms` with `X-Sms-Secret`; we answer 200 once the message is stored. What others write
in the conversation goes out as `POST url {"to", "body"}`. Everything else (contacts, opening the
conversation, exactly once by message id, relaying in seq order with retries, the cursor across
restarts) is `Channel`'s.
"""

from __future__ import annotations

import hmac
from typing import Any

import aiohttp
from aiohttp import web

from gateway.channels import Channel


class SmsChannel(Channel):
    async def inbound(self, request: web.Request) -> tuple[str, str, str] | web.Response:
        if not hmac.compare_digest(request.headers.get("X-Sms-Secret", "").encode("utf-8", "replace"), self.settings["secret"].encode()):
            return web.json_response({"error": "bad secret"}, status=401)
        sms = await request.json()
        if not all(isinstance(sms.get(k), str) and sms.get(k) for k in ("from", "id", "body")):
            return web.json_response({"error": 'body: {"from", "id", "body"}'}, status=400)
        return sms["from"], sms["id"], sms["body"]  # (who, the message's own id, the text)

    async def send(self, external_id: str, entry: dict[str, Any]) -> str | None:
        text = entry["text"] if entry["t"] == "msg" else "(conversation closed)"
        try:
            async with aiohttp.ClientSession() as http, http.post(self.settings["url"], json={"to": external_id,
                                                                                              "body": text}) as r:
                return None if r.status < 300 else f"HTTP {r.status}"  # None: taken; else tried again later
        except aiohttp.ClientError as e:
            return str(e)

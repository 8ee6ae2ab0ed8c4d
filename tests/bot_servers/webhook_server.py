"""A customer's webhook as docs/bots.md specifies it (``POST /hook``, signed, idempotent).

Checks the signature itself (HMAC-SHA256 over ``timestamp + "." + body`` with
the shared secret, ``X-Chatgw-Signature: sha256=<hex>``, timestamp within 5
minutes) and answers 401 when it is wrong. Remembers answers by
``Idempotency-Key`` and replays the first one for a repeated key.

Modes: ``json`` (``{text, confidence, handoff}``), ``ndjson`` (``{"delta"}``
lines then ``{"done": true, ...}``), ``ndjson_cut`` (TCP dropped after two
deltas), ``ndjson_no_done`` (body ends without the done line), ``ndjson_error``
(an ``{"error"}`` line), ``http_error`` (502), ``slow`` (nothing until released).
Cancel: ``POST /cancel`` (signed the same way).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from aiohttp import web

from . import State, cut, stall

SECRET = "whsec-test"


def _valid(headers: dict[str, str], body: bytes) -> bool:
    ts = headers.get("X-Chatgw-Timestamp", "")
    sig = headers.get("X-Chatgw-Signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


def make_app(state: State) -> web.Application:
    answers: dict[str, dict] = state.extra.setdefault("answers", {})

    async def hook(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = dict(request.headers)
        ok = _valid(headers, raw)
        state.requests.append({"path": request.path, "headers": headers, "body": raw, "signature_ok": ok})
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
        key = headers.get("Idempotency-Key", "")
        if state.mode == "http_error":
            return web.json_response({"error": "upstream down"}, status=502)
        if state.mode == "slow":
            await stall(state)
            return web.json_response({"text": "too late"})
        if state.mode == "json":
            if key not in answers:
                answers[key] = {
                    "text": state.extra.get("text", f"Answer #{len(answers) + 1} to: {body['question']}"),
                    "confidence": state.extra.get("confidence", 0.9),
                    "handoff": state.extra.get("handoff", False),
                }
            return web.json_response(answers[key])
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i, piece in enumerate(state.chunks):
            if i == 2 and state.mode == "ndjson_cut":
                cut(request)
                return resp
            if i == 2 and state.mode == "ndjson_error":
                await resp.write(b'{"error": "knowledge base unavailable"}\n')
                await resp.write_eof()
                return resp
            await resp.write(json.dumps({"delta": piece}).encode() + b"\n")
        if state.mode != "ndjson_no_done":
            await resp.write(json.dumps({"done": True, "confidence": state.extra.get("confidence", 0.8)}).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def cancel(request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        state.cancels.append({"headers": headers, "json": json.loads(raw), "signature_ok": _valid(headers, raw)})
        state.cancelled.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/cancel", cancel)
    return app

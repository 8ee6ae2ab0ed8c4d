"""Coze open API v3 chat (``POST /v3/chat?conversation_id=...``, ``stream: true``) as documented.

Request: ``Authorization: Bearer {token}``, JSON ``{bot_id, user_id, stream,
auto_save_history, additional_messages: [{role, content, content_type}]}``.
Stream: ``text/event-stream`` with ``event:NAME`` and ``data:{json}`` lines (no
space after the colon, as Coze sends them) and a blank line:
``conversation.chat.created`` and ``conversation.chat.in_progress`` (chat object:
``id``, ``conversation_id``, ``bot_id``, ``status``), ``conversation.message.delta``
(message object: ``id``, ``conversation_id``, ``role: assistant``, ``type: answer``,
``content`` chunk, ``content_type``, ``chat_id``), ``conversation.message.completed``
(the same message with the FULL content; also ``type: verbose`` and
``type: follow_up`` messages), ``conversation.chat.completed`` (``usage``),
``conversation.chat.failed`` (``last_error: {code, msg}``), ``error``
(``{code, msg}``), ``done`` (``data:"[DONE]"``). Request errors are HTTP 200
with ``{"code": 4000, "msg": ...}`` JSON. Cancel: ``POST /v3/chat/cancel`` with
``{conversation_id, chat_id}``.

Modes: ``ok``, ``failed`` (chat.failed after two deltas), ``error_event``,
``cut`` (TCP dropped after two deltas), ``slow`` (created + in_progress, then
nothing until released), ``json_error``, ``no_delta`` (only completed messages).
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from . import State, cut, stall

TOKEN = "pat_test"
BOT_ID = "7380000000000000001"


def _event(name: str, obj: object) -> bytes:
    return f"event:{name}\ndata:{json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def make_app(state: State) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"code": 4100, "msg": "authentication is invalid"})
        body = await request.json()
        state.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers), "json": body})
        if state.mode == "json_error" or body.get("bot_id") != BOT_ID or not body.get("additional_messages"):
            return web.json_response({"code": 4000, "msg": "The requested bot does not exist or parameters are invalid"})
        conv = request.query.get("conversation_id") or str(uuid.uuid4().int)[:19]
        chat_id = str(uuid.uuid4().int)[:19]
        state.extra["last_chat"] = (conv, chat_id)
        chat_obj = {"id": chat_id, "conversation_id": conv, "bot_id": BOT_ID, "created_at": 1718000000, "status": "created"}
        msg_id = str(uuid.uuid4().int)[:19]
        msg = {
            "id": msg_id,
            "conversation_id": conv,
            "bot_id": BOT_ID,
            "chat_id": chat_id,
            "role": "assistant",
            "type": "answer",
            "content_type": "text",
        }
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(_event("conversation.chat.created", chat_obj))
        await resp.write(_event("conversation.chat.in_progress", {**chat_obj, "status": "in_progress"}))
        if state.mode == "slow":
            await stall(state)
            return resp
        if state.mode != "no_delta":
            for i, piece in enumerate(state.chunks):
                if i == 2 and state.mode == "failed":
                    err = {**chat_obj, "status": "failed", "last_error": {"code": 5000, "msg": "model error"}}
                    await resp.write(_event("conversation.chat.failed", err))
                    await resp.write(_event("done", "[DONE]"))
                    await resp.write_eof()
                    return resp
                if i == 2 and state.mode == "error_event":
                    await resp.write(_event("error", {"code": 4011, "msg": "insufficient balance"}))
                    await resp.write_eof()
                    return resp
                if i == 2 and state.mode == "cut":
                    cut(request)
                    return resp
                await resp.write(_event("conversation.message.delta", {**msg, "content": piece}))
        full = "".join(state.chunks)
        await resp.write(_event("conversation.message.completed", {**msg, "content": full}))
        verbose = {**msg, "id": "v1", "type": "verbose", "content": json.dumps({"msg_type": "generate_answer_finish", "data": ""})}
        await resp.write(_event("conversation.message.completed", verbose))
        await resp.write(_event("conversation.message.completed", {**msg, "id": "f1", "type": "follow_up", "content": "Anything else?"}))
        usage = {"token_count": 30, "output_count": 10, "input_count": 20}
        await resp.write(_event("conversation.chat.completed", {**chat_obj, "status": "completed", "usage": usage}))
        await resp.write(_event("done", "[DONE]"))
        await resp.write_eof()
        return resp

    async def cancel(request: web.Request) -> web.Response:
        body = await request.json()
        state.cancels.append({"json": body, "headers": dict(request.headers)})
        state.cancelled.set()
        if not body.get("conversation_id") or not body.get("chat_id"):
            return web.json_response({"code": 4000, "msg": "missing ids"})
        return web.json_response({"code": 0, "msg": "", "data": {"id": body["chat_id"], "status": "canceled"}})

    app = web.Application()
    app.router.add_post("/v3/chat", chat)
    app.router.add_post("/v3/chat/cancel", cancel)
    return app

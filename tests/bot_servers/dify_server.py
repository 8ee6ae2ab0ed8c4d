"""Dify chat app API (``POST /v1/chat-messages``, ``response_mode: streaming``) as documented.

Request: ``Authorization: Bearer {app key}``, JSON ``{inputs, query,
response_mode, conversation_id, user}``. Stream: ``text/event-stream``, each
event one ``data: {"event": ...}`` line and a blank line: ``message``
(``task_id``, ``message_id``, ``conversation_id``, ``answer`` chunk,
``created_at``), ``message_replace`` (``answer`` replaces everything so far),
``message_end`` (``metadata.usage``, ``metadata.retriever_resources``),
``error`` (``status``, ``code``, ``message``), ``ping`` (``event: ping``).
An unknown ``conversation_id`` answers HTTP 404 ``{"code": "not_found",
"message": "Conversation Not Exists.", "status": 404}``. Stop:
``POST /v1/chat-messages/{task_id}/stop`` with ``{"user"}`` -> ``{"result": "success"}``.

Modes: ``ok``, ``replace`` (message_replace after the chunks), ``error_event``
(an error event after two chunks), ``cut`` (TCP dropped after two chunks),
``slow`` (``workflow_started`` with the task id and a ping, then nothing until
released), ``http_error`` (400 JSON), ``scored`` (message_end with retriever scores).
"""

from __future__ import annotations

import json
import time
import uuid

from aiohttp import web

from . import State, cut, stall

API_KEY = "app-test-key"


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def make_app(state: State) -> web.Application:
    conversations: set[str] = state.extra.setdefault("conversations", set())

    async def chat(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"code": "unauthorized", "message": "Access token is invalid", "status": 401}, status=401)
        body = await request.json()
        state.requests.append({"path": request.path, "headers": dict(request.headers), "json": body})
        if body.get("response_mode") != "streaming" or not body.get("query") or not body.get("user"):
            return web.json_response({"code": "invalid_param", "message": "bad request", "status": 400}, status=400)
        if state.mode == "http_error":
            return web.json_response({"code": "provider_quota_exceeded", "message": "quota exceeded", "status": 400}, status=400)
        conv = body.get("conversation_id") or ""
        if conv and conv not in conversations:
            return web.json_response({"code": "not_found", "message": "Conversation Not Exists.", "status": 404}, status=404)
        if not conv:
            conv = str(uuid.uuid4())
            conversations.add(conv)
        task_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        state.extra["last_task_id"] = task_id
        base = {"task_id": task_id, "message_id": message_id, "conversation_id": conv, "created_at": int(time.time())}
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if state.mode == "slow":
            await resp.write(_event({"event": "workflow_started", "task_id": task_id, "workflow_run_id": "wr-1", "data": {}}))
            await resp.write(b"event: ping\n\n")
            await stall(state)
            return resp
        for i, piece in enumerate(state.chunks):
            if i == 2 and state.mode == "error_event":
                await resp.write(
                    _event({"event": "error", **base, "status": 400, "code": "completion_request_error", "message": "model failed"})
                )
                await resp.write_eof()
                return resp
            if i == 2 and state.mode == "cut":
                cut(request)
                return resp
            await resp.write(_event({"event": "message", **base, "id": message_id, "answer": piece}))
            if i == 0:
                await resp.write(b"event: ping\n\n")
        if state.mode == "replace":
            await resp.write(_event({"event": "message_replace", **base, "answer": "[content withheld by moderation]"}))
        metadata: dict = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        if state.mode == "scored":
            metadata["retriever_resources"] = [{"position": 1, "score": 0.31, "content": "..."}, {"position": 2, "score": 0.12}]
        await resp.write(_event({"event": "message_end", **base, "id": message_id, "metadata": metadata}))
        await resp.write_eof()
        return resp

    async def stop(request: web.Request) -> web.Response:
        body = await request.json()
        state.cancels.append({"task_id": request.match_info["task_id"], "json": body, "headers": dict(request.headers)})
        state.cancelled.set()
        if not body.get("user"):
            return web.json_response({"code": "invalid_param", "message": "user is required", "status": 400}, status=400)
        return web.json_response({"result": "success"})

    app = web.Application()
    app.router.add_post("/v1/chat-messages", chat)
    app.router.add_post("/v1/chat-messages/{task_id}/stop", stop)
    return app

"""OpenAI chat completions (``POST /v1/chat/completions``, ``stream: true``) as documented.

Stream: ``Content-Type: text/event-stream``; one ``data: {chat.completion.chunk}``
line per event followed by a blank line; the first chunk carries
``delta.role``, the next ``delta.content``, the last an empty delta with
``finish_reason: "stop"``; then ``data: [DONE]``. Errors: an HTTP status with
``{"error": {"message", "type", "code"}}``, or (vLLM, llama.cpp) such an object
as a ``data:`` line inside the stream.

Modes: ``ok``, ``http_error`` (500), ``stream_error`` (error object after two
chunks), ``cut`` (TCP dropped after two chunks), ``truncated`` (the body ends
cleanly with neither finish_reason nor ``[DONE]``), ``slow`` (headers, then
nothing until released), ``slow_after_first`` (one chunk, then nothing),
``json`` (ignores ``stream`` and answers one completion object).
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from . import State, cut, stall


def _chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    obj = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def make_app(state: State) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append({"path": request.path, "headers": dict(request.headers), "json": body})
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return web.json_response({"error": {"message": "messages is required", "type": "invalid_request_error"}}, status=400)
        if state.mode == "http_error":
            return web.json_response({"error": {"message": "model overloaded", "type": "server_error", "code": 500}}, status=500)
        if state.mode == "json" or not body.get("stream"):
            text = "".join(state.chunks)
            return web.json_response(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(_chunk(role="assistant", content=""))
        if state.mode == "slow":
            await stall(state)
            return resp
        for i, piece in enumerate(state.chunks):
            if i == 1 and state.mode == "slow_after_first":
                await stall(state)
                return resp
            if i == 2 and state.mode == "stream_error":
                err = {"error": {"message": "CUDA out of memory", "type": "internal_error", "code": 500}}
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                await resp.write_eof()
                return resp
            if i == 2 and state.mode == "cut":
                cut(request)
                return resp
            if i == 2 and state.mode == "truncated":
                await resp.write_eof()
                return resp
            await resp.write(_chunk(piece))
        await resp.write(_chunk(finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app

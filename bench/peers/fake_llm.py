"""A local stand-in for an LLM server: speaks the OpenAI chat-completions streaming wire format, is not a model.

    python -m bench.peers.fake_llm --port 0 [--tokens 20] [--delay-ms 5-10]

`POST /v1/chat/completions` with `stream: true` answers `text/event-stream`:
one `data: {chat.completion.chunk}` event with `delta.role`, then `--tokens`
events with one word of `delta.content` each, `--delay-ms` (uniform in the
range) apart, then an empty delta with `finish_reason: "stop"`, then
`data: [DONE]`; the same wire format vLLM, Ollama and llama.cpp use. The text
is canned: nothing is generated, so the bench measures the gateway's side of a
streaming backend (HTTP client, SSE parsing, coalescing, fan-out, logging), not
inference. `GET /stats` counts requests, finished streams and tokens.
Loopback only; prints `listening PORT` once ready; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

import uvloop
from aiohttp import web

from bench.loadgen.net import assert_loopback_host
from bench.peers import announce_and_wait, peer_parser

WORDS = ("Your order ships within two business days and tracking follows by e-mail; returns are free "
         "for thirty days from delivery, just keep the receipt and the original packaging please").split()


def _event(obj: dict | str) -> bytes:
    return b"data: " + (obj.encode() if isinstance(obj, str) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


def _chunk(n: int, delta: dict, finish: str | None = None) -> bytes:
    return _event({"id": f"chatcmpl-bench-{n}", "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": "bench", "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


def make_app(tokens: int, delay_ms: tuple[float, float]) -> web.Application:
    stats = {"requests": 0, "finished": 0, "tokens": 0, "in_flight": 0, "max_in_flight": 0, "bad_requests": 0}
    lo, hi = delay_ms[0] / 1000, delay_ms[1] / 1000

    async def completions(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        n = stats["requests"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("stream"):
            stats["bad_requests"] += 1
            return web.json_response({"error": {"message": "bench stand-in: streaming chat requests only",
                                                "type": "invalid_request_error"}}, status=400)
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            await resp.write(_chunk(n, {"role": "assistant", "content": ""}))
            for i in range(tokens):
                await asyncio.sleep(random.uniform(lo, hi))
                await resp.write(_chunk(n, {"content": ("" if i == 0 else " ") + WORDS[i % len(WORDS)]}))
                stats["tokens"] += 1
            await resp.write(_chunk(n, {}, "stop"))
            await resp.write(_event("[DONE]"))
            await resp.write_eof()
            stats["finished"] += 1
            return resp
        finally:
            stats["in_flight"] -= 1

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/stats", get_stats)
    return app


async def main(args: argparse.Namespace) -> None:
    assert_loopback_host(args.host)
    lo, _, hi = args.delay_ms.partition("-")
    app = make_app(args.tokens, (float(lo), float(hi or lo)))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    await announce_and_wait(runner.addresses[0][1])
    await runner.cleanup()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = peer_parser(__doc__)
    p.add_argument("--tokens", type=int, default=20, help="content chunks per answer (one word each)")
    p.add_argument("--delay-ms", default="5-10", help="delay before each token, uniform in MIN-MAX milliseconds")
    p.add_argument("--idle", action="store_true",
                   help="run at SCHED_IDLE: on a CPU shared with the load generator, never delay its timestamps")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    uvloop.run(main(args))

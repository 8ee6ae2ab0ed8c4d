"""A site's webhook receiver: check each delivery, drop repeats, act on the events.

    python examples/webhook_receiver.py --port 9000 --secret="$WEBHOOK_SECRET" [--events-out events.jsonl]

(`--secret=` with the `=`: a URL-safe secret may start with "-", which a separate argument would
have read as an option.)

and in the node's config file (docs/webhooks.md):

    [[webhooks]]
    name = "crm"
    tenant = "acme"
    url = "http://127.0.0.1:9000/chatgw"
    secret = "the same secret"

What every receiver has to get right: the signature (HMAC-SHA256 of "<id>.<timestamp>." + body
under the shared secret: `gateway.webhooks.verify`, 10 lines if you write it yourself), a
timestamp inside the replay window (5 minutes), and the same event id twice (delivery is at least
once: a receiver that took an event but whose answer was lost gets it again) acted on once.
Answer 2xx only once the event is safely yours; anything else is tried again later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

from gateway.webhooks import verify


def make_app(secret: str, out: Path | None) -> web.Application:
    seen: set[str] = set()  # a real receiver keeps these (or a unique index) in its database

    async def chatgw(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event_id = verify(secret, request.headers, body)
        except ValueError as e:
            return web.Response(status=401, text=str(e))
        if event_id in seen:
            return web.Response(status=204)  # a repeat: already done
        event = json.loads(body)
        print(f"{event['type']} {event['conversation']} seq {event['data']['seq']}", flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(event) + "\n")
        seen.add(event_id)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/chatgw", chatgw)
    return app


async def main(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args.secret, Path(args.events_out) if args.events_out else None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    print(f"listening {site._server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--secret", required=True, help='the subscription\'s secret; write --secret="$S" (it may start with "-")')
    p.add_argument("--events-out", help="append each new event here (JSON lines)")
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)

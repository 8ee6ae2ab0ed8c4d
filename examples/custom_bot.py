"""A bot backend of your own, attached without touching the gateway.

    python examples/custom_bot.py

`OrderStatusBot` answers order-status questions from a (pretend) lookup and hands
anything else to a person. It is attached by import path (`type =
"custom_bot:OrderStatusBot"`), exactly as a plugin package would be
(docs/bots.md, "Writing a backend"). The script starts a node with it, asks it two
questions as a visitor and prints the answers: the bot streams the first, and hands
the second over to the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bot_bridge import BotContext, BotResult

ORDERS = {"1001": "shipped on Monday, arriving Thursday", "1002": "being packed today"}


class OrderStatusBot:
    """A backend: `name`, an async-generator `stream(ctx)` of text pieces ending in a
    `BotResult` (confidence, handoff), and `cancel(ctx)`. Options come from its table."""

    def __init__(self, name: str, options: dict) -> None:
        self.name = name
        self.greeting = options.get("greeting", "Hi")

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        order = re.search(r"\b(\d{4})\b", ctx.question)
        if order is None or order.group(1) not in ORDERS:
            yield BotResult("", confidence=0.0, handoff=True, reason="not_an_order_question")
            return
        yield f"{self.greeting}! "
        yield f"Order {order.group(1)} is {ORDERS[order.group(1)]}."
        yield BotResult("", confidence=0.95)

    async def cancel(self, ctx: BotContext) -> None:
        pass  # nothing in flight to stop


async def main() -> None:
    import websockets

    from gateway import auth
    from gateway.config import load
    from gateway.server import Node

    # The bridge runs in a worker process: it must find this module by the same import path.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    secret = secrets.token_urlsafe(32)
    bots = {"default": "orders", "backends": {"orders": {"type": "custom_bot:OrderStatusBot", "greeting": "Hello"}}}
    data = tempfile.TemporaryDirectory(prefix="chatgw-example-")  # the node's store, thrown away at exit
    cfg = load(env={}, ws_port=0, http_port=0, jwt_secret=secret, admin_token=secrets.token_urlsafe(32),
               bots_enabled=True, bots=bots, demo=False, data_dir=data.name)
    node = Node(cfg)
    await node.start()
    token = auth.mint(secret, tenant="acme", user="carol", role="visitor")
    try:
        async with websockets.connect(f"ws://127.0.0.1:{node.ws_port}/ws?v=1&token={token}") as ws:
            async def until(pred):
                while True:
                    data = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    for env in data if isinstance(data, list) else [data]:
                        if pred(env):
                            return env

            await until(lambda e: e["t"] == "welcome")
            await ws.send(json.dumps({"t": "open", "rid": "o"}))
            conv = (await until(lambda e: e["t"] == "conv"))["conv"]
            await ws.send(json.dumps({"t": "msg", "conv": conv, "id": "q1", "text": "Where is order 1001?"}))
            answer = await until(lambda e: e["t"] == "msg" and e.get("role") == "bot")
            print(f"bot ({answer['backend']}, confidence {answer['conf']}): {answer['text']}")
            await ws.send(json.dumps({"t": "msg", "conv": conv, "id": "q2", "text": "Can I change my address?"}))
            handoff = await until(lambda e: e["t"] == "event" and e.get("ev") == "handoff")
            print(f"handed to a person: {handoff['reason']}")
    finally:
        await node.stop()


if __name__ == "__main__":
    asyncio.run(main())

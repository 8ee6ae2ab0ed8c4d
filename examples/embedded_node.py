"""A chatgw node inside your own asyncio program.

    python examples/embedded_node.py

Starts a node on free ports (embedded coordinator: no Redis, memory only), then talks
to it as any client would: an agent goes online, a visitor opens a conversation and
writes, the agent answers. Prints what each side received and stops the node. Use this
shape to run the gateway next to your own services in one process; `gateway serve` is
the same `Node` behind a CLI.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile

import websockets

from gateway import auth
from gateway.config import load
from gateway.server import Node


async def recv_until(ws, kind: str, **match) -> dict:
    """The next envelope of `kind` whose fields equal `match` (frames may be batches)."""
    while True:
        data = json.loads(await asyncio.wait_for(ws.recv(), 10))
        for env in data if isinstance(data, list) else [data]:
            if env.get("t") == kind and all(env.get(k) == v for k, v in match.items()):
                return env


async def main() -> None:
    secret = secrets.token_urlsafe(32)
    # The node keeps its state in data_dir (SQLite); a throwaway one here, so the example leaves nothing behind.
    data = tempfile.TemporaryDirectory(prefix="chatgw-example-")
    cfg = load(env={}, ws_port=0, http_port=0, jwt_secret=secret, admin_token=secrets.token_urlsafe(32),
               bots_enabled=False, demo=False, data_dir=data.name)
    node = Node(cfg)
    await node.start()
    print(f"node up: ws port {node.ws_port}, http port {node.http_port}")
    url = f"ws://127.0.0.1:{node.ws_port}/ws?v=1&token="
    try:
        agent_token = auth.mint(secret, tenant="acme", user="alice", role="agent")
        visitor_token = auth.mint(secret, tenant="acme", user="bob", role="visitor")
        async with websockets.connect(url + agent_token) as agent, websockets.connect(url + visitor_token) as visitor:
            await recv_until(agent, "welcome")
            await recv_until(visitor, "welcome")
            await agent.send(json.dumps({"t": "status", "status": "online", "rid": "s"}))
            await recv_until(agent, "status", rid="s")
            await visitor.send(json.dumps({"t": "open", "rid": "o"}))
            conv = (await recv_until(visitor, "conv", rid="o"))["conv"]
            await recv_until(agent, "assigned", conv=conv)
            await visitor.send(json.dumps({"t": "msg", "conv": conv, "id": "v-1", "text": "Where is my order?"}))
            ack = await recv_until(visitor, "ack", id="v-1")
            question = await recv_until(agent, "msg", id="v-1")
            print(f"agent got seq {question['seq']}: {question['text']!r} (visitor's ack: seq {ack['seq']})")
            await agent.send(json.dumps({"t": "msg", "conv": conv, "id": "a-1", "text": "It ships today."}))
            answer = await recv_until(visitor, "msg", id="a-1")
            print(f"visitor got seq {answer['seq']}: {answer['text']!r}")
    finally:
        await node.stop()
    print("node stopped")


if __name__ == "__main__":
    asyncio.run(main())

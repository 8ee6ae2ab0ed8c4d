"""The `Session` seam (gateway/session.py): the same chat through a WebSocket session and a
second channel, a `ChannelSession` in a few lines, against one real node.

The channel here is a real implementation of the seam (it is what a new channel file
looks like), not a stand-in: the node, its hub, log and router are the real ones, and the
visitor's side is a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
import websockets

from gateway import auth
from gateway.config import load
from gateway.server import Node
from gateway.session import Session

from .channel import QueueChannel


class WsClient:
    def __init__(self, ws):
        self.ws = ws
        self.pending: list[dict] = []  # envelopes of a batch frame not looked at yet

    async def send(self, env: dict) -> None:
        await self.ws.send(json.dumps(env))

    async def until(self, kind: str, **match) -> dict:
        while True:
            if not self.pending:
                data = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                self.pending = data if isinstance(data, list) else [data]
            env = self.pending.pop(0)
            if env.get("t") == kind and all(env.get(k) == v for k, v in match.items()):
                return env


@pytest.fixture
async def node(tmp_path):
    secret = secrets.token_urlsafe(32)
    cfg = load(env={}, ws_port=0, http_port=0, jwt_secret=secret, admin_token=secrets.token_urlsafe(32),
               bots_enabled=False, demo=False, data_dir=str(tmp_path / "data"))
    n = Node(cfg)
    await n.start()
    try:
        yield n, secret
    finally:
        await n.stop()


async def _agent(node, secret, transport: str, stack):
    token = auth.mint(secret, tenant="acme", user="alice", role="agent")
    if transport == "channel":
        s = QueueChannel(node.hub, auth.verify(token, secret), node.cfg.max_text)
        s.open()
        return s
    ws = await stack.enter_async_context(websockets.connect(f"ws://127.0.0.1:{node.ws_port}/ws?v=1&token={token}"))
    return WsClient(ws)


@pytest.mark.parametrize("transport", ["websocket", "channel"])
async def test_the_same_chat_through_either_transport(node, transport):
    """Welcome, assignment, both directions in order exactly once, a retry, a resume, an error."""
    from contextlib import AsyncExitStack

    n, secret = node
    async with AsyncExitStack() as stack:
        agent = await _agent(n, secret, transport, stack)
        visitor_token = auth.mint(secret, tenant="acme", user="bob", role="visitor")
        visitor = WsClient(await stack.enter_async_context(
            websockets.connect(f"ws://127.0.0.1:{n.ws_port}/ws?v=1&token={visitor_token}")))
        welcome = await agent.until("welcome")
        assert (welcome["user"], welcome["role"]) == ("alice", "agent")
        await visitor.until("welcome")
        await agent.send({"t": "status", "status": "online", "rid": "s"})
        assert (await agent.until("status", rid="s"))["status"] == "online"
        await visitor.send({"t": "open", "rid": "o"})
        conv = (await visitor.until("conv", rid="o"))["conv"]
        await agent.until("assigned", conv=conv)

        for i in range(5):
            await visitor.send({"t": "msg", "conv": conv, "id": f"v{i}", "text": f"q{i}"})
        got = [(await agent.until("msg", conv=conv)) for _ in range(5)]
        assert [m["id"] for m in got] == [f"v{i}" for i in range(5)]
        assert [m["seq"] for m in got] == list(range(got[0]["seq"], got[0]["seq"] + 5))

        await agent.send({"t": "msg", "conv": conv, "id": "a1", "text": "answer", "rid": 7})
        ack = await agent.until("ack", id="a1")
        assert (ack["rid"], ack["dup"]) == (7, False)
        assert (await visitor.until("msg", id="a1"))["seq"] == ack["seq"]
        await agent.send({"t": "msg", "conv": conv, "id": "a1", "text": "answer", "rid": 8})  # a retry
        retry = await agent.until("ack", id="a1", rid=8)
        assert (retry["seq"], retry["dup"]) == (ack["seq"], True)

        # A resume never repeats what this session was sent; a second session of the same agent
        # (another device) gets the entries past its cursor, once each and in order.
        await agent.send({"t": "resume", "conv": conv, "after": got[1]["seq"], "rid": "r"})
        assert (await agent.until("resumed", rid="r"))["seq"] == ack["seq"]
        second = await _agent(n, secret, transport, stack)
        assert [c["conv"] for c in (await second.until("welcome"))["convs"]] == [conv]
        await second.send({"t": "resume", "conv": conv, "after": got[1]["seq"], "rid": "r2"})
        replayed = [(await second.until("msg", conv=conv))["id"] for _ in range(4)]
        assert replayed == ["v2", "v3", "v4", "a1"]
        assert (await second.until("resumed", rid="r2"))["seq"] == ack["seq"]

        await agent.send({"t": "msg", "conv": "nope", "id": "x", "text": "?", "rid": "e"})
        assert (await agent.until("error", rid="e"))["code"] == "not_participant"
        await agent.send({"t": "msg", "conv": conv, "rid": "m"})  # no id, no text
        assert (await agent.until("error", rid="m"))["code"] == "missing_field"


async def test_a_channel_session_closes_as_a_websocket_does(node):
    """`fail` sends the `closing` envelope, ends the channel's transport, and the core lets go of it."""
    n, secret = node
    token = auth.mint(secret, tenant="acme", user="carol", role="visitor")
    s = QueueChannel(n.hub, auth.verify(token, secret), n.cfg.max_text)
    assert isinstance(s, Session)  # the protocol's attributes and methods are all there
    s.open()
    await s.until("welcome")
    assert s.cid in n.hub.conns
    s.fail(1008, "policy", "flood")
    closing = await s.until("closing")
    assert (closing["code"], closing["reason"]) == (1008, "flood")
    assert s.closed_with == (1008, "policy")
    s.send_env({"t": "pong"})  # nothing is written after the close
    assert s.frames.empty()
    s.gone()
    assert s.cid not in n.hub.conns

"""gateway/client.py against a real node: a visitor's ChatClient whose connection is cut in the
middle of sending, while the agent keeps talking; at the end every message was stored once and
the client handed out every entry once, in seq order."""

from __future__ import annotations

import asyncio

import pytest

from gateway.client import ChatClient, ChatError, Message, StateChange

from .support import Client, uid, wait_for


def _drop(client: ChatClient) -> None:
    """The network goes away: no close frame, the socket just ends."""
    client._ws._conn.transport.abort()


async def test_a_dropped_connection_loses_and_repeats_nothing(gateway):
    tenant, name = uid("t"), uid("v")
    tokens = 0

    async def token() -> str:  # a fresh token per connection, as a site's backend would mint
        nonlocal tokens
        tokens += 1
        return gateway.token("visitor", name, tenant)

    agent = await Client.connect(gateway, "agent", "ann", tenant)
    await agent.request({"t": "status", "status": "online", "capacity": 5}, "status")
    client = ChatClient(gateway.ws_url, token, backoff_s=0.05)
    await client.start()
    try:
        conv = await client.open()
        await agent.next("assigned", lambda e: e["conv"] == conv)
        first = [asyncio.ensure_future(client.send(conv, f"visitor {i}", client_id=f"v{i}")) for i in range(10)]
        await wait_for(lambda: any(f.done() for f in first), what="a first ack")
        _drop(client)
        for i in range(3):  # the agent talks while the visitor is away
            await agent.msg(conv, f"agent {i}")
        later = [asyncio.ensure_future(client.send(conv, f"visitor {i}", client_id=f"v{i}")) for i in range(10, 15)]
        acks = await asyncio.wait_for(asyncio.gather(*first, *later), 20)
        assert client.connections >= 2 and tokens >= 2
        # Stored once each: 15 distinct seqs, whatever was sent twice.
        assert len({a.seq for a in acks}) == 15
        last = max([a.seq for a in acks] + [client.last[conv]])
        seen: list = []
        async def collect():
            async for ev in client.events():
                seen.append(ev)
                if ev.seq >= last:
                    return
        await asyncio.wait_for(collect(), 20)
        await wait_for(lambda: client.last[conv] >= last, what="everything handed out")
        seqs = [e.seq for e in seen]
        assert seqs == list(range(1, len(seqs) + 1))  # once each, in order, from the start
        texts = [e.text for e in seen if isinstance(e, Message)]
        assert sorted(t for t in texts if t.startswith("visitor")) == sorted(f"visitor {i}" for i in range(15))
        assert [t for t in texts if t.startswith("agent")] == [f"agent {i}" for i in range(3)]
        assert [e.ev for e in seen if isinstance(e, StateChange)][:2] == ["queued", "assigned"]
    finally:
        await client.close()


async def test_a_refused_message_is_an_error_not_a_retry(gateway):
    client = ChatClient(gateway.ws_url, gateway.token("visitor", uid("v"), uid("t")))
    await client.start()
    try:
        with pytest.raises(ChatError) as e:
            await asyncio.wait_for(client.send("no-such-conversation", "hello"), 10)
        assert e.value.code == "not_participant"
    finally:
        await client.close()

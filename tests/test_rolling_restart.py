"""A rolling restart of a three-node cluster under continuous traffic loses and duplicates nothing.

Three nodes on one Redis share one WebSocket port (SO_REUSEPORT, as `--workers` and a deploy with
several nodes behind one address do): the kernel spreads connections over the nodes listening.
Visitors send without pause through `gateway.client.ChatClient` (each message retried with its
client id until acked); an agent online on the cluster is assigned their conversations. Each node
in turn gets SIGTERM: it drains (readiness false, upgrades refused, clients told to leave with a
jittered retry_ms), its clients reconnect to the others and resume, it exits, and a new node takes
its place on the same port before the next one goes.

Checked at the end against the log (the admin transcript): every acked message is there exactly
once, with the seq it was acked with, and the agent was handed every visitor message of its
conversations, in order, none missing.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import urllib.request

import orjson

from gateway import auth
from gateway.client import ChatClient, ChatError, Message

from .redis_support import free_port
from .support import start_gateway, uid, wait_for

VISITORS = 6


def _transcript(gw, tenant: str, conv: str) -> list[dict]:
    req = urllib.request.Request(f"{gw.http_url}/admin/tenants/{tenant}/conversations/{conv}/transcript",
                                 headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())["entries"]


async def test_rolling_restart_of_three_nodes_under_traffic_loses_and_duplicates_nothing(redis_server):
    secret = secrets.token_urlsafe(32)
    port = free_port()
    settings = dict(coordinator="redis", redis_url=redis_server.url, ws_port=port, jwt_secret=secret,
                    drain_spread_s=1, drain_timeout_s=20, node_heartbeat_s=0.2, node_ttl_s=2,
                    rate_per_s=100_000, rate_burst=100_000)  # the visitors send without pause
    nodes = [start_gateway(**settings) for _ in range(3)]
    tenant = uid("t")
    url = f"ws://127.0.0.1:{port}/ws"

    def token(role: str, user: str, **kw) -> str:
        return auth.mint(secret, tenant=tenant, user=user, role=role, **kw)

    agent = ChatClient(url, token("agent", "ag", capacity=VISITORS), backoff_s=0.05, backoff_cap_s=0.5)
    visitors = [ChatClient(url, token("visitor", f"v{i}"), backoff_s=0.05, backoff_cap_s=0.5) for i in range(VISITORS)]
    acked: dict[str, list[tuple[str, int]]] = {}  # conv -> [(text, seq)] in the order acked
    got: dict[str, list[Message]] = {}  # conv -> what the agent was handed
    stop = asyncio.Event()
    try:
        await agent.start()
        await agent.set_status("online")

        async def agent_reads() -> None:
            async for ev in agent.events():
                if isinstance(ev, Message) and ev.role == "visitor":
                    got.setdefault(ev.conv, []).append(ev)

        async def visitor_sends(v: ChatClient, name: str) -> None:
            await v.start()
            conv = await v.open()
            acked[conv] = []
            k = 0
            while not stop.is_set():
                text, cid = f"{name}-{k}", f"{name}-{k}"
                while True:
                    try:
                        ack = await v.send(conv, text, client_id=cid)
                        break
                    except ChatError as e:  # the cluster was briefly away: the same id, so never twice
                        assert e.code == "unavailable", e
                acked[conv].append((text, ack.seq))
                k += 1

        tasks = [asyncio.ensure_future(agent_reads())]
        tasks += [asyncio.ensure_future(visitor_sends(v, f"v{i}")) for i, v in enumerate(visitors)]

        def total() -> int:
            for t in tasks:  # a client task that failed fails the test now, not at a timeout
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            return sum(len(a) for a in acked.values())

        await wait_for(lambda: len(acked) == VISITORS and all(len(a) >= 5 for a in acked.values()), timeout=30,
                       what="traffic on every conversation")
        for i in range(3):
            old = nodes[i]
            acked_before = {c: list(a) for c, a in acked.items()}
            old.proc.send_signal(signal.SIGTERM)  # drain
            await wait_for(lambda o=old: not o.alive(), timeout=40, what=f"node {i} to drain and exit")
            assert old.proc.returncode == 0, "".join(old.output[-30:])
            # Everyone left when told, before the deadline (which would have closed them with 1001).
            await wait_for(lambda o=old: "drained: 0 connections left" in "".join(o.output), what="the drain's last line")
            nodes[i] = start_gateway(**settings)
            await wait_for(lambda b=acked_before: total() and all(len(a) >= 3 + len(b[c]) for c, a in acked.items()),
                           timeout=30,
                           what=f"traffic going on after node {i}'s restart on every conversation: "
                                f"{ {c: len(a) for c, a in acked.items()} }, connections "
                                f"{[v.connections for v in visitors]}, agent {agent.connections}; "
                                f"logs {[''.join(n.output[-15:]) for n in nodes]}")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks[1:]), 30)
        # The agent is handed everything up to the last acked seq of each conversation.
        await wait_for(lambda: all(len(got.get(conv, [])) >= len(a) for conv, a in acked.items()), timeout=30,
                       what="the agent to be handed every message: missing "
                            f"{ {c: sorted({q for _, q in a} - {m.seq for m in got.get(c, [])})[:10] for c, a in acked.items()} }"
                            f" agent last {agent.last} connections {agent.connections}"
                            f" logs {[''.join(n.output[10:]) for n in nodes]}")
        assert agent.connections > 1 and all(v.connections > 1 for v in visitors)  # everyone moved at least once
        for conv, sent in acked.items():
            log = [e for e in _transcript(nodes[0], tenant, conv) if e.get("t") == "msg" and e.get("role") == "visitor"]
            assert [(e["text"], e["seq"]) for e in log] == sent  # every acked one, once, at its acked seq
            assert [(m.text, m.seq) for m in got[conv]] == sent  # the agent: each once, in order
        assert total() > 6 * VISITORS
    finally:
        stop.set()
        for t in tasks if "tasks" in locals() else ():
            t.cancel()
        for c in (agent, *visitors):
            await c.close()
        for gw in nodes:
            gw.stop()

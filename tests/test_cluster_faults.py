"""Steps after an append that can fail are retried, and a request gets exactly one answer (issue 12).

The faults a three-node chaos run found, as their kinds, on one real node (in this process, so
the test can order the outage exactly) over a real redis-server with AOF:

- a catch-up that reads the log while Redis is away is tried again until it reads, so a
  connected session gets entries its node missed without having to resume (Delivery and the log
  alone: tests/test_delivery_gaps.py);
- an acked message whose delivery to another node fails gets its ack and nothing else, and is
  published to that node once shared state is back.
"""

from __future__ import annotations

import secrets
import time

import pytest

from gateway import auth
from gateway.config import load
from gateway.protocol import Outgoing
from gateway.replies import msg_entry
from gateway.server import Node

from .channel import QueueChannel
from .redis_support import RedisServer, free_port
from .support import wait_for


@pytest.fixture
async def redis_node(tmp_path):
    server = RedisServer(free_port(), tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"]).start()
    secret = secrets.token_urlsafe(32)
    cfg = load(env={}, ws_port=0, http_port=0, jwt_secret=secret, admin_token=secrets.token_urlsafe(32),
               bots_enabled=False, demo=False, coordinator="redis", redis_url=server.url, node_heartbeat_s=0.2,
               node_ttl_s=1.0)
    node = Node(cfg)
    await node.start()
    try:
        yield node, server, secret
    finally:
        await node.stop()
        server.stop()


async def _session(node, secret, user, role="visitor", **kw) -> QueueChannel:
    s = QueueChannel(node.hub, auth.verify(auth.mint(secret, tenant="t", user=user, role=role, **kw), secret),
                     node.cfg.max_text)
    s.open()
    await s.until("welcome")
    return s


async def test_an_acked_message_whose_delivery_fails_gets_no_second_answer_and_arrives(redis_node):
    node, server, secret = redis_node
    visitor = await _session(node, secret, "v2")
    visitor.receive({"t": "open", "rid": "o"})
    conv = (await visitor.until("conv", rid="o"))["conv"]
    await visitor.until("event", ev="queued")
    # The agent is held by another node: a second coordinator on the same Redis registers it there.
    from gateway.coordinator.redis import RedisCoordinator

    other = RedisCoordinator("other-node", server.url, heartbeat_s=0.2, node_ttl_s=1.0)
    await other.start()
    try:
        await other.set_present("t", "a2", True, "agent")
        conv_state = await node.coord.get_conversation("t", conv)
        conv_state.state, conv_state.agent = "assigned", "a2"
        async with node.coord.lock("t", conv):
            await node.coord.save_conversation(conv_state)
        # Redis goes away between the append (done) and the lookup of the agent's node: the
        # first `deliver_remote` of this message fails. The presence lookup is what fails here;
        # stopping Redis from inside the step is the only way to place the outage exactly.
        coord = node.coord
        real = coord.deliver_remote
        calls = []

        async def deliver_remote_after_outage(tenant, users, env, encoded=None):
            calls.append(env)
            if len(calls) == 1:
                server.stop()
                try:
                    await real(tenant, users, env, encoded)
                finally:
                    server.start()
            else:
                await real(tenant, users, env, encoded)

        coord.deliver_remote = deliver_remote_after_outage
        visitor.receive({"t": "msg", "conv": conv, "id": "x1", "text": "hello", "rid": 1})
        visitor.receive({"t": "ping", "rid": 2})  # answered after the msg: its handler has finished
        answers = []
        while True:
            env = await visitor.until_any()
            if env.get("rid") in (1, 2):
                answers.append(env)
            if env.get("rid") == 2:
                break
        assert [(a["t"], a["rid"]) for a in answers] == [("ack", 1), ("pong", 2)]
        # Tried again once Redis was back, and published (whether the other node's subscription was
        # back by then is its own affair: it catches its sessions up from the log when it is).
        await wait_for(lambda: coord.stats["delivered_items"] >= 1, what="the retried delivery published")
        assert len(calls) >= 2 and all(c["id"] == "x1" for c in calls)
    finally:
        await other.close()


async def test_a_catch_up_waiting_to_retry_ends_when_the_session_is_unsubscribed(tmp_path):
    """Unassigned while its catch-up waits for Redis: when Redis is back nothing is replayed to it
    and it is not subscribed again (the review's scenario: a cursor read afresh would be 0)."""
    from asyncio import get_running_loop

    from gateway.subscriptions import subscribe, subscribed_to, unsubscribe

    from gateway.coordinator import Conversation
    from gateway.coordinator.redis import RedisCoordinator
    from gateway.delivery import Delivery
    from gateway.tasks import TaskSet

    server = RedisServer(free_port(), tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"]).start()
    coord = RedisCoordinator("n1", server.url, heartbeat_s=0.2, node_ttl_s=1.0)
    await coord.start()
    tasks = TaskSet(get_running_loop())
    try:
        delivery = Delivery(coord, tasks.spawn)
        secret = secrets.token_urlsafe(32)
        session = QueueChannel(None, auth.verify(auth.mint(secret, tenant="t", user="a1", role="agent"), secret), 4000)
        delivery.users[("t", "a1")] = (session,)
        await coord.create_conversation(Conversation(id="c1", tenant="t", visitor="v1", group="g"))
        entries = []
        for i in range(4):
            entry = msg_entry("c1", f"m{i}", "v1", "visitor", f"text {i}", int(time.time() * 1000))
            await coord.append("t", "c1", entry, f"m{i}")
            entries.append(entry)
        subscribe(session, "c1", 1)  # it has seq 1
        server.stop()
        delivery.apply("t", "a1", Outgoing(entries[-1]))  # seq 4: ahead, a catch-up starts and fails
        await wait_for(lambda: not coord.health_state.get("ok"), what="Redis seen gone")
        unsubscribe(session, "c1")  # unassigned meanwhile
        server.start()
        await wait_for(lambda: not tasks, what="the catch-up ended")
        assert session.frames.empty() and not subscribed_to(session, "c1")
    finally:
        tasks.cancel_all()
        await coord.close()
        server.stop()


async def test_a_status_sent_before_the_welcome_is_not_lost(redis_node):
    """An agent that says `status online` the moment it connects: the welcome writes the agent's
    record from a read made before the status arrived, and used to write it back `offline` after
    the status had set it online (found by bench.instructions under valgrind). A connection's
    envelopes now wait for its welcome (docs/hub.md, step 2a)."""
    node, _, secret = redis_node
    agents = []
    for i in range(20):
        a = QueueChannel(node.hub, auth.verify(auth.mint(secret, tenant="t", user=f"a{i}", role="agent"), secret),
                         node.cfg.max_text)
        a.open()
        a.receive({"t": "status", "status": "online", "rid": "s"})  # before the welcome is even written
        agents.append(a)
    for i, a in enumerate(agents):
        first = await a.until_any()
        assert first["t"] == "welcome"
        assert (await a.until("status", rid="s"))["status"] == "online"
        assert (await node.coord.get_agent("t", f"a{i}")).status == "online"

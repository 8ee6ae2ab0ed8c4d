"""An entry ahead of a connection's cursor (docs/delivery.md, step 4a): its predecessor is
usually on its way from another node, so delivery holds it and what follows until the hole
fills, and reads the log only if it does not fill within `GAP_WAIT_S`.

Delivery and a real Redis log (redis-server on a free port), with no node around them; a
session of the test channel stands for a connection. Where a test must show that the log was
not read, Redis is stopped first: delivery that still arrives in order came from what was held.
"""

from __future__ import annotations

import secrets
import time
from asyncio import get_running_loop

import pytest
from gateway.subscriptions import cursor, subscribe

from gateway import auth
from gateway.coordinator import Conversation
from gateway.coordinator.redis import RedisCoordinator
from gateway.delivery import Delivery
from gateway.metrics import METRICS
from gateway.protocol import Outgoing
from gateway.replies import msg_entry
from gateway.tasks import TaskSet

from .channel import QueueChannel
from .redis_support import RedisServer, free_port
from .support import wait_for


@pytest.fixture
async def logged(tmp_path):
    """(delivery, session subscribed to c1 from 0, three logged entries of c1, redis server, coordinator)."""
    server = RedisServer(free_port(), tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"]).start()
    coord = RedisCoordinator("n1", server.url, heartbeat_s=0.2, node_ttl_s=1.0)
    await coord.start()
    try:
        delivery = Delivery(coord, TaskSet(get_running_loop()).spawn)
        secret = secrets.token_urlsafe(32)
        session = QueueChannel(None, auth.verify(auth.mint(secret, tenant="t", user="v1", role="visitor"), secret), 4000)
        delivery.users[("t", "v1")] = (session,)
        await coord.create_conversation(Conversation(id="c1", tenant="t", visitor="v1", group="g"))
        subscribe(session, "c1", 0)
        entries = []
        for i in range(1, 4):
            entry = msg_entry("c1", f"m{i}", "a1", "agent", f"text {i}", int(time.time() * 1000))
            await coord.append("t", "c1", entry, f"m{i}")
            entries.append(entry)
        yield delivery, session, entries, server, coord
    finally:
        await coord.close()
        server.stop()


async def _received(session, n):
    return [(e["id"], e["seq"]) for e in [await session.until("msg", conv="c1") for _ in range(n)]]


async def test_an_entry_ahead_waits_for_its_predecessor_and_the_log_is_not_read(logged):
    delivery, session, (e1, e2, e3), server, _ = logged
    catch_ups = METRICS.hot.catch_ups
    server.stop()  # any read of the log would now fail: what arrives came from what was held
    delivery.apply("t", "v1", Outgoing(e3))
    delivery.apply("t", "v1", Outgoing(e2))
    assert session.frames.empty()  # 2 and 3 are held: 1 is missing
    delivery.apply("t", "v1", Outgoing(e1))
    assert await _received(session, 3) == [("m1", 1), ("m2", 2), ("m3", 3)]
    assert cursor(session, "c1") == 3 and not delivery._gaps and session.syncing is None
    assert METRICS.hot.catch_ups == catch_ups
    delivery.apply("t", "v1", Outgoing(e2))  # a late copy is dropped, as ever
    assert session.frames.empty()


async def test_a_hole_that_does_not_fill_is_read_from_the_log(logged):
    delivery, session, (_, _, e3), _, _ = logged
    catch_ups = METRICS.hot.catch_ups
    delivery.apply("t", "v1", Outgoing(e3))  # 1 and 2 never come live (their node died, say)
    assert await _received(session, 3) == [("m1", 1), ("m2", 2), ("m3", 3)]
    assert METRICS.hot.catch_ups == catch_ups + 1
    assert cursor(session, "c1") == 3 and not delivery._gaps and session.syncing is None


async def test_a_catch_up_while_redis_is_away_is_retried_until_it_reads(logged):
    """Issue 12's chaos run: with no node around Delivery whose re-subscription would heal the
    hole by another way, the catch-up itself must not give up on its first failure."""
    delivery, session, (_, _, e3), server, coord = logged
    server.stop()
    # The session hears of the last one first (its node missed the two before: appended while
    # its subscription was down, say), and the log is away when the wait ends.
    delivery.apply("t", "v1", Outgoing(e3))
    await wait_for(lambda: not coord.health_state.get("ok"), what="Redis seen gone")
    server.start()
    assert await _received(session, 3) == [("m1", 1), ("m2", 2), ("m3", 3)]


async def test_a_resume_while_waiting_takes_what_was_held_and_sends_each_entry_once(logged):
    delivery, session, (_, _, e3), _, _ = logged
    delivery.apply("t", "v1", Outgoing(e3))
    await delivery.replay(session, "t", "c1", 0, rid="r", tell_gap=True)
    assert await _received(session, 3) == [("m1", 1), ("m2", 2), ("m3", 3)]
    resumed = await session.until("resumed", conv="c1")
    assert resumed["seq"] == 3 and not delivery._gaps and session.syncing is None
    delivery.apply("t", "v1", Outgoing(e3))
    assert session.frames.empty()


async def test_an_unsubscribed_connection_stops_waiting_and_gets_nothing_more(logged):
    from gateway.subscriptions import unsubscribe

    delivery, session, (_, e2, e3), _, _ = logged
    delivery.apply("t", "v1", Outgoing(e3))
    unsubscribe(session, "c1")  # its agent was unassigned meanwhile
    delivery.apply("t", "v1", Outgoing(e2))
    assert not delivery._gaps and session.syncing is None and session.frames.empty()


async def test_a_connection_closed_while_waiting_stops_waiting(logged):
    delivery, session, (_, e2, e3), _, _ = logged
    delivery.apply("t", "v1", Outgoing(e3))
    session.closed = True  # gone (what `gone` sets; the test's session has no hub to tell)
    delivery.apply("t", "v1", Outgoing(e2))
    assert not delivery._gaps and session.syncing is None and session.frames.empty()


async def test_a_resume_while_another_replay_runs_waits_for_it_and_gets_its_resumed(logged):
    """A resume that finds a replay of its conversation running (another resume, or the catch-up
    after a hole) used to return without a word; it now waits for it, then replays."""
    import asyncio

    delivery, session, _, _, _ = logged
    first = asyncio.ensure_future(delivery.replay(session, "t", "c1", 0, rid="a", tell_gap=True))
    await asyncio.sleep(0)  # one step: the first replay starts and waits on its read of the log
    assert (session, "c1") in delivery._replaying and not first.done()
    second = asyncio.ensure_future(delivery.replay(session, "t", "c1", 0, rid="b", tell_gap=True))
    await asyncio.gather(first, second)
    got = [await session.until_any() for _ in range(5)]
    assert [(e["t"], e.get("seq"), e.get("rid")) for e in got] == [
        ("msg", 1, None), ("msg", 2, None), ("msg", 3, None), ("resumed", 3, "a"), ("resumed", 3, "b")]
    assert not delivery._replaying and session.syncing is None

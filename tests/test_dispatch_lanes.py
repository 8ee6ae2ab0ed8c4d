"""Lanes (docs/hub.md, step 6b): over a remote log a connection's `msg`s keep their order per
conversation, not across conversations, and any other envelope waits for all of them.

The dispatcher is driven with handlers whose `msg` waits on a future the test resolves, as a
`msg` waits on Redis's answer to its append; each test resolves them in the order that would
expose a lane waiting on another, or one overtaking its own conversation's earlier message.
"""

from __future__ import annotations

import asyncio

from gateway.dispatch import Dispatcher
from gateway.envelopes import Close, Msg
from gateway.tasks import TaskSet


class _Conn:
    """What the dispatcher touches on a session: its order slots and `send_env` (for errors)."""

    tenant, user, cid = "t", "u", 1

    def __init__(self):
        self.inbox = self.worker = None
        self.sent = []

    def send_env(self, env):
        self.sent.append(env)


class _Appends:
    """A `msg` handler that waits for the test to answer each append, in the order the test picks."""

    def __init__(self):
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.started: list[str] = []
        self.done: list[str] = []
        self.closed: list[str] = []

    async def msg(self, conn, env):
        self.started.append(env.id)
        fut = self.waiting[env.id] = asyncio.get_running_loop().create_future()
        await fut
        self.done.append(env.id)

    async def close(self, conn, env):
        self.closed.append(env.conv)

    def answer(self, mid: str) -> None:
        self.waiting[mid].set_result(None)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _dispatcher(appends: _Appends) -> Dispatcher:
    tasks = TaskSet(asyncio.get_running_loop())
    return Dispatcher(tasks, {"msg": appends.msg, "close": appends.close}, eager=False)


def _msg(conv: str, mid: str) -> Msg:
    return Msg(conv=conv, id=mid, text="hi")


async def test_a_msg_to_another_conversation_does_not_wait_for_the_first_ones_append():
    appends = _Appends()
    d, conn = _dispatcher(appends), _Conn()
    d.submit(conn, _msg("ca", "a1"))
    d.submit(conn, _msg("cb", "b1"))
    await _turns()
    assert appends.started == ["a1", "b1"]  # b1 started while a1 waits on its append
    appends.answer("b1")
    await _turns()
    assert appends.done == ["b1"]
    appends.answer("a1")
    await _turns()
    assert appends.done == ["b1", "a1"]


async def test_msgs_to_one_conversation_start_one_after_the_other_in_arrival_order():
    appends = _Appends()
    d, conn = _dispatcher(appends), _Conn()
    for mid in ("a1", "a2", "a3"):
        d.submit(conn, _msg("ca", mid))
    d.submit(conn, _msg("cb", "b1"))
    await _turns()
    assert appends.started == ["a1", "b1"]  # a2 waits for a1: same conversation
    appends.answer("a1")
    await _turns()
    assert appends.started == ["a1", "b1", "a2"]
    appends.answer("a2")
    await _turns()
    appends.answer("a3")
    appends.answer("b1")
    await _turns()
    assert [m for m in appends.done if m.startswith("a")] == ["a1", "a2", "a3"]


async def test_another_kind_waits_for_every_lane_and_what_follows_it_waits_for_it():
    appends = _Appends()
    d, conn = _dispatcher(appends), _Conn()
    d.submit(conn, _msg("ca", "a1"))
    d.submit(conn, _msg("cb", "b1"))
    d.submit(conn, Close(conv="ca"))
    d.submit(conn, _msg("cc", "c1"))  # behind the close, though its conversation is idle
    await _turns()
    assert appends.started == ["a1", "b1"] and appends.closed == []
    appends.answer("a1")
    await _turns()
    assert appends.closed == [] and "c1" not in appends.started  # b1 still waits on its append
    appends.answer("b1")
    await _turns()
    assert appends.closed == ["ca"] and appends.started[-1] == "c1"
    appends.answer("c1")
    await _turns()
    assert conn.inbox is None and appends.done == ["a1", "b1", "c1"]  # the connection is idle again
    d.submit(conn, _msg("ca", "a2"))  # and a new msg starts at once, in a lane
    await _turns()
    assert appends.started[-1] == "a2"
    appends.answer("a2")
    await _turns()


async def test_a_failing_msg_is_answered_and_its_lane_goes_on():
    appends = _Appends()

    async def failing(conn, env):
        if env.id == "bad":
            raise RuntimeError("boom")
        await appends.msg(conn, env)

    d = Dispatcher(TaskSet(asyncio.get_running_loop()), {"msg": failing, "close": appends.close}, eager=False)
    conn = _Conn()
    d.submit(conn, _msg("ca", "bad"))
    d.submit(conn, _msg("ca", "a2"))
    await _turns()
    assert [e.code for e in conn.sent] == ["internal"] and appends.started == ["a2"]
    appends.answer("a2")
    await _turns()
    assert appends.done == ["a2"]

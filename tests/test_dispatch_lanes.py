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


class _Soon:
    """A `msg_soon`: takes ids starting with "s" (answered when the test calls `answer`), finishes
    "i..." inline, declines the rest (they go to the async handler), raises for "x..." before
    taking it (as a refused envelope does)."""

    def __init__(self):
        self.done: dict[str, object] = {}
        self.started: list[str] = []

    def __call__(self, conn, env, done):
        if env.id.startswith("x"):
            raise ValueError("refused")
        if env.id.startswith("i"):
            self.started.append(env.id)
            done(None)
            return True
        if env.id.startswith("s"):
            self.started.append(env.id)
            self.done[env.id] = done
            return True
        return False


def _soon_dispatcher(appends: _Appends, soon: _Soon) -> Dispatcher:
    return Dispatcher(TaskSet(asyncio.get_running_loop()), {"msg": appends.msg, "close": appends.close},
                      eager=False, soon=soon)


async def test_a_soon_msg_holds_its_lane_until_answered_and_needs_no_task():
    appends, soon = _Appends(), _Soon()
    d, conn = _soon_dispatcher(appends, soon), _Conn()
    d.submit(conn, _msg("ca", "s1"))
    d.submit(conn, _msg("ca", "s2"))
    d.submit(conn, _msg("cb", "s3"))
    assert soon.started == ["s1", "s3"]  # at once, no loop turn; s2 waits for s1 (same conversation)
    soon.done["s1"](None)
    assert soon.started == ["s1", "s3", "s2"]
    soon.done["s2"](None)
    soon.done["s3"](None)
    assert d._lanes == {}


async def test_inline_answers_refusals_and_declines_keep_the_lane_in_order():
    appends, soon = _Appends(), _Soon()
    d, conn = _soon_dispatcher(appends, soon), _Conn()
    for mid in ("s1", "i2", "x3", "a4", "i5"):
        d.submit(conn, _msg("ca", mid))
    assert soon.started == ["s1"]
    soon.done["s1"](ValueError("no"))  # its error is told; the lane goes on
    assert soon.started == ["s1", "i2"] and [e.code for e in conn.sent] == ["internal", "internal"]  # s1's, x3's
    await _turns()
    assert appends.started == ["a4"]  # declined: the async handler, in a task; i5 waits behind it
    appends.answer("a4")
    await _turns()
    assert appends.started == ["a4", "i5"] and appends.done == ["a4"]  # after a4, i5 runs in the same task
    appends.answer("i5")
    await _turns()
    assert d._lanes == {}


async def test_another_kind_waits_for_a_soon_msg():
    appends, soon = _Appends(), _Soon()
    d, conn = _soon_dispatcher(appends, soon), _Conn()
    d.submit(conn, _msg("ca", "s1"))
    d.submit(conn, Close(conv="ca"))
    await _turns()
    assert appends.closed == []
    soon.done["s1"](None)
    await _turns()
    assert appends.closed == ["ca"]

"""Per-connection order and inline starts: how an envelope reaches its handler (docs/hub.md, 1-6b).

A connection's envelopes run one after the other, in arrival order. An idle connection owns
no task: its envelope starts inline when the coordinator allows it, and only a handler that
suspends is finished by a task, behind which later envelopes queue. Over a remote log a
connection's `msg`s keep that order per conversation only: each conversation is a lane, so an
agent's message to one conversation does not wait for Redis to answer its message to another.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from routing.router import RoutingError

from .coordinator import Unavailable
from .envelopes import Envelope
from .metrics import METRICS
from .protocol import ProtocolError
from .session import Session
from .tasks import TaskSet

log = logging.getLogger("gateway.dispatch")

Handler = Callable[[Session, Any], Awaitable[None]]
InlineHandler = Callable[[Session, Any], None]


class Dispatcher:
    """Runs each validated envelope through the handler registered for its kind.

    `handlers` maps every kind to a coroutine function (conn, env). `inline` maps kinds that
    have a synchronous version to it; those run with no coroutine at all when `eager` (the
    coordinator never needs a current task: the embedded one). A handler's exception becomes
    the client's `error` (see `report`); nothing a handler raises reaches the listener.
    """

    def __init__(self, tasks: TaskSet, handlers: Mapping[str, Handler], *, eager: bool,
                 inline: Mapping[str, InlineHandler] | None = None):
        self._tasks = tasks
        self._handlers = handlers
        self._eager = eager
        self._inline = dict(inline or {}) if eager else {}
        # Remote log only: a connection's busy lanes (conversation -> its queued `msg`s), and the
        # future its drain waits on until they are all done (docs/hub.md, 6b).
        self._lanes: dict[Session, dict[str, deque[Envelope]]] = {}
        self._lanes_done: dict[Session, Any] = {}

    def submit(self, conn: Session, env: Envelope) -> None:
        """Run `env` for `conn` after the envelopes before it (per-connection order)."""
        METRICS.hot.envelopes_in += 1
        if conn.inbox is not None:
            conn.inbox.append(env)
            return
        if self._eager:
            fast = self._inline.get(env.t)
            if fast is not None:  # the hot path (`msg`): no coroutine at all
                try:
                    fast(conn, env)
                except Exception as e:
                    report(conn, env, e)
                return
            # Nothing else of this connection can run until this returns (frames are handled one
            # at a time), so the inbox is only needed once the handler suspends.
            coro = self._handle_safe(conn, env)
            try:
                fut = coro.send(None)
            except StopIteration:
                return
            conn.inbox = deque()
            task = self._tasks.spawn(self._finish_then_drain(conn, coro, fut))
        elif env.t == "msg":
            self._lane(conn, env)
            return
        else:
            conn.inbox = deque((env,))
            task = self._tasks.spawn(self._drain(conn))
        conn.worker = task

    def first(self, conn: Session, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` (a new connection's welcome) before any envelope of `conn`: those that arrive
        meanwhile queue behind it, as behind a busy handler (docs/hub.md, step 2a)."""
        conn.inbox = deque()
        conn.worker = self._tasks.spawn(self._first_then_drain(conn, coro))

    async def _first_then_drain(self, conn: Session, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        finally:
            await self._drain(conn)

    def _lane(self, conn: Session, env: Envelope) -> None:
        """Run a `msg` after the connection's earlier ones for the same conversation (remote log)."""
        lanes = self._lanes.get(conn)
        if lanes is None:
            lanes = self._lanes[conn] = {}
        conv = env.conv  # type: ignore[attr-defined]
        queue = lanes.get(conv)
        if queue is not None:
            queue.append(env)
            return
        lanes[conv] = queue = deque((env,))
        task = self._tasks.spawn(self._run_lane(conn, conv, queue, lanes))
        # A task cancelled before its first step (the node is stopping) never runs its `finally`.
        task.add_done_callback(lambda _t: lanes.get(conv) is queue and self._lane_ended(conn, conv, lanes))

    async def _run_lane(self, conn: Session, conv: str, queue: deque[Envelope], lanes: dict[str, deque[Envelope]]) -> None:
        try:
            while queue:
                await self._handle_safe(conn, queue[0])
                queue.popleft()  # only now: a `msg` for this conversation arriving meanwhile queues behind it
        finally:
            self._lane_ended(conn, conv, lanes)

    def _lane_ended(self, conn: Session, conv: str, lanes: dict[str, deque[Envelope]]) -> None:
        del lanes[conv]
        if not lanes and self._lanes.get(conn) is lanes:
            del self._lanes[conn]
            done = self._lanes_done.pop(conn, None)
            if done is not None and not done.done():
                done.set_result(None)

    async def _lanes_idle(self, conn: Session) -> None:
        """Wait until the connection's lanes have finished (an envelope other than `msg` comes after them)."""
        if conn in self._lanes:
            done = self._lanes_done.get(conn)
            if done is None:
                done = self._lanes_done[conn] = self._tasks.loop.create_future()
            await done

    async def _finish_then_drain(self, conn: Session, coro: Any, fut: Any) -> None:
        try:
            await resume(coro, fut)
        finally:
            await self._drain(conn)

    async def _drain(self, conn: Session) -> None:
        inbox = conn.inbox
        try:
            while inbox:
                env = inbox.popleft()
                if self._eager:
                    await self._handle_safe(conn, env)
                elif env.t == "msg":
                    self._lane(conn, env)
                else:
                    await self._lanes_idle(conn)
                    await self._handle_safe(conn, env)
        finally:
            conn.inbox = None
            conn.worker = None

    async def run(self, conn: Session, env: Envelope) -> None:
        """Run `env`'s handler to its end, outside any connection's order (a request-scoped session:
        the REST API); its errors are told to `conn` as for a connection."""
        await self._handle_safe(conn, env)

    async def _handle_safe(self, conn: Session, env: Envelope) -> None:
        try:
            fast = self._inline.get(env.t)
            if fast is not None:  # queued behind a busy connection's earlier envelopes: the same code
                fast(conn, env)
            else:
                await self._handlers[env.t](conn, env)
        except Exception as e:
            report(conn, env, e)


def report(conn: Session, env: Envelope, e: Exception) -> None:
    """Tell the client why its envelope failed (an `error` with its rid); log what is our fault."""
    if isinstance(e, ProtocolError):
        conn.send_env(e.envelope())
    elif isinstance(e, RoutingError):
        conn.send_env(ProtocolError(e.code, str(e), rid=env.rid).envelope())
    elif isinstance(e, Unavailable):
        conn.send_env(ProtocolError("unavailable", str(e) or "shared state unreachable", rid=env.rid).envelope())
    else:
        log.error("handling %s from %s/%s", env.t, conn.tenant, conn.user, exc_info=e,
                  extra={"tenant": conn.tenant, "user": conn.user, "cid": conn.cid, "conv": getattr(env, "conv", None)})
        conn.send_env(ProtocolError("internal", "internal error", rid=env.rid).envelope())


class _Yield:
    """Hand a future a coroutine is blocked on to the task now driving that coroutine."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any):
        self.fut = fut

    def __await__(self):
        return (yield self.fut)


async def resume(coro: Any, fut: Any) -> Any:
    """Finish, inside a task, a coroutine that was started inline and suspended on `fut`.

    The task waits on the very object the coroutine yielded (a future, or None for a bare
    yield), then steps the coroutine again; a cancellation of the task is thrown into it.
    """
    while True:
        try:
            await _Yield(fut)
        except BaseException as e:  # noqa: BLE001 - cancellation and the like belong to the coroutine
            try:
                fut = coro.throw(e)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            fut = coro.send(None)
        except StopIteration as stop:
            return stop.value

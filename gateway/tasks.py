"""The node's background tasks: held until they finish, their failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("gateway.tasks")


class TaskSet:
    """Tasks the node started and nobody awaits.

    The event loop keeps only weak references to tasks, so a task nobody holds can vanish
    mid-flight; this set holds each one until it is done, then logs its exception, if any.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task of the set; returns the task."""
        task = self.loop.create_task(coro)
        if self._stopping:  # the node is stopping: nothing new runs (cancelled before its first step)
            task.cancel()
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Hold a task created elsewhere until it finishes."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def cancel_all(self) -> None:
        """The node stops: end every task it started (retries of steps after an ack among them)."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)

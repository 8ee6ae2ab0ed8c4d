"""The dispatcher's inline handler start and its trampoline (`resume`): same results as a task would give.

Each test steps the coroutine once inline, as Dispatcher.submit does, then lets a task finish it.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.dispatch import resume as _resume


class _BareYield:
    """What `asyncio.sleep(0)` does inside a coroutine: yield None to the task once."""

    def __await__(self):
        yield


def start(coro):
    """Step `coro` inline; returns ("inline", value) or ("task", task finishing it)."""
    try:
        fut = coro.send(None)
    except StopIteration as stop:
        return "inline", stop.value
    return "task", asyncio.get_running_loop().create_task(_resume(coro, fut))


async def test_a_coroutine_that_never_suspends_finishes_inline():
    async def quick():
        return 42

    assert start(quick()) == ("inline", 42)


async def test_suspended_coroutine_gets_results_of_each_await_in_order():
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(3)]
    seen = []

    async def slow():
        for f in futs:
            seen.append(await f)
        await _BareYield()  # a bare yield is handled too
        return sum(seen)

    how, task = start(slow())
    assert how == "task" and seen == []  # suspended on the first future
    for i, f in enumerate(futs):
        f.set_result(i + 1)
    assert await task == 6 and seen == [1, 2, 3]


async def test_exception_from_an_awaited_future_reaches_the_coroutine():
    fut = asyncio.get_running_loop().create_future()

    async def handler():
        try:
            await fut
        except ValueError as e:
            return f"handled {e}"

    how, task = start(handler())
    fut.set_exception(ValueError("boom"))
    assert how == "task" and await task == "handled boom"


async def test_cancelling_the_task_cancels_inside_the_coroutine():
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    resumed = asyncio.Event()
    cleaned = asyncio.Event()

    async def handler():
        try:
            await first
            resumed.set()  # the task has taken over and is about to wait on `second`
            await second
        finally:
            cleaned.set()

    _, task = start(handler())
    first.set_result(None)
    await resumed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set() and second.cancelled()


async def test_lock_contention_is_handled():
    lock = asyncio.Lock()
    order = []

    async def holder(name):
        async with lock:
            order.append(name)

    await lock.acquire()
    how, task = start(holder("inline-started"))
    assert how == "task" and order == []  # suspended on the held lock
    lock.release()
    await task
    assert order == ["inline-started"]

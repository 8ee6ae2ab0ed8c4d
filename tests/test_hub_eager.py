"""The hub's inline handler start and its trampoline (`_resume`): same results as a task would give."""

from __future__ import annotations

import asyncio

import pytest

from gateway.hub import _resume


async def start_inline(coro):
    """What Hub.submit does: step the coroutine once inline; if it suspended, finish it in a task."""
    try:
        fut = coro.send(None)
    except StopIteration as stop:
        return "inline", stop.value
    return "task", await asyncio.get_running_loop().create_task(_resume(coro, fut))


async def test_a_coroutine_that_never_suspends_finishes_inline():
    async def quick():
        return 42

    assert await start_inline(quick()) == ("inline", 42)


async def test_suspended_coroutine_gets_results_of_each_await_in_order():
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(3)]
    seen = []

    async def slow():
        for f in futs:
            seen.append(await f)
        await asyncio.sleep(0)  # a bare yield is handled too
        return sum(seen)

    runner = asyncio.create_task(start_inline(slow()))
    for i, f in enumerate(futs):
        while not runner.done() and len(seen) < i:
            await asyncio.sleep(0)
        f.set_result(i + 1)
    assert await runner == ("task", 6) and seen == [1, 2, 3]


async def test_exception_from_an_awaited_future_reaches_the_coroutine():
    fut = asyncio.get_running_loop().create_future()

    async def handler():
        try:
            await fut
        except ValueError as e:
            return f"handled {e}"

    runner = asyncio.create_task(start_inline(handler()))
    await asyncio.sleep(0)
    fut.set_exception(ValueError("boom"))
    assert await runner == ("task", "handled boom")


async def test_cancelling_the_task_cancels_inside_the_coroutine():
    fut = asyncio.get_running_loop().create_future()
    cleaned = asyncio.Event()

    async def handler():
        try:
            await fut
        finally:
            cleaned.set()

    coro = handler()
    first = coro.send(None)
    task = asyncio.get_running_loop().create_task(_resume(coro, first))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set() and fut.cancelled()


async def test_lock_contention_is_handled(tmp_path):
    lock = asyncio.Lock()
    order = []

    async def holder(name):
        async with lock:
            order.append(name)
            await asyncio.sleep(0)

    await lock.acquire()
    runner = asyncio.create_task(start_inline(holder("inline-started")))
    await asyncio.sleep(0)
    assert order == []
    lock.release()
    assert (await runner)[0] == "task" and order == ["inline-started"]

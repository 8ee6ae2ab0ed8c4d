"""Which Redis failures mean "unavailable" (refuse the work, keep nothing) and which are bugs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..base import Unavailable

# Redis (or part of a cluster) is away, starting up or failing over: refuse the work, keep nothing.
# Script and data errors (ResponseError and the like) are bugs and stay loud.
UNREACHABLE = (
    RedisConnectionError, RedisTimeoutError, OSError, BusyLoadingError, ClusterDownError, ClusterError,
    MasterDownError, MaxConnectionsError, RedisClusterException, SlotNotCoveredError, TryAgainError,
    ReadOnlyError, MovedError,  # MOVED: the slot has moved (resharding); nothing ran
)


async def answer_waiters(waiters: Iterable[asyncio.Future[Any]], call: Awaitable[Any]) -> tuple[bool, Any]:
    """Await `call`, a Redis round trip made for the callers waiting on `waiters` (a batch).

    Returns (True, its result); if it fails, every waiter not yet answered gets the failure
    (`Unavailable` when Redis is away) and (False, None) is returned; a cancellation is passed on
    to them and then re-raised.
    """
    try:
        return True, await call
    except BaseException as e:  # noqa: BLE001 - every waiter gets the failure, cancellation included
        err = Unavailable(f"redis unreachable: {type(e).__name__}: {e}") if isinstance(e, UNREACHABLE) else e
        for fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        if isinstance(e, asyncio.CancelledError):
            raise
        return False, None


def available_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn Redis being unreachable, inside `fn`, into `Unavailable` (the client's `unavailable`)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except UNREACHABLE as e:
            raise Unavailable(f"redis unreachable: {type(e).__name__}: {e}") from None

    return wrapper

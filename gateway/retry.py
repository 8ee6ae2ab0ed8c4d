"""Steps that must still happen after a request was answered or an entry appended: retried, never reported.

An acked message is in the log and must reach every participant; a request gets exactly one
answer (docs/cluster.md, step 13). So a step after the answer or the append (delivering the
entry, catching a connection up, draining a queue after a status change) that fails because
shared state is away is not the client's error. It is tried again with exponential backoff
and jitter (`backoff`: 50 ms doubling to 2 s, tenacity) until it succeeds or
`give_up()` says there is no one left to do it for (the connection closed, the node stops).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, wait_exponential_jitter

from .coordinator.base import Unavailable
from .metrics import METRICS

log = logging.getLogger("gateway.retry")

INITIAL_S = 0.05
MAX_WAIT_S = 2.0


def backoff() -> wait_exponential_jitter:
    """50 ms, 100 ms, 200 ms, ... up to 2 s, each plus up to 50 ms of jitter (so nodes don't retry in step)."""
    return wait_exponential_jitter(multiplier=INITIAL_S, max=MAX_WAIT_S, jitter=INITIAL_S)


def _never() -> bool:
    return False


async def until_done(step: Callable[[], Awaitable[object]], what: str, give_up: Callable[[], bool] = _never) -> bool:
    """Run `step()` until it returns without `Unavailable`; True when it did, False if `give_up()` first.

    Any other exception ends the retries and is logged (a bug, not an outage): this never raises
    except CancelledError, so it can run as a background task.
    """
    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(Unavailable),
                                           wait=backoff(),
                                           stop=lambda _state: give_up(), reraise=False):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    METRICS.retried_steps.labels(what).inc()
                await step()
        return True
    except RetryError:
        log.info("%s given up: %s", what, "its connection or node is gone")
        return False
    except Exception:
        log.exception("%s failed", what)
        return False


async def answered_then(step: Callable[[], Awaitable[object]], what: str, spawn: Callable[[Awaitable[object]], object],
                        give_up: Callable[[], bool] = _never, retry: Callable[[], Awaitable[object]] | None = None) -> None:
    """The rest of a request whose answer was sent: run now; if shared state is away, keep trying in
    the background (`spawn`) `retry` (default: `step` again; pass the part that may be repeated when
    `step` must not be, e.g. a drain after a logged event). Nothing reaches the client, which has
    its one answer."""
    try:
        await step()
    except Unavailable:
        spawn(until_done(retry or step, what, give_up))
    except Exception:
        log.exception("%s failed after the request was answered", what)

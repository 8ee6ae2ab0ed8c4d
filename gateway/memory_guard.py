"""The memory guard: a node under memory pressure sheds load before the kernel's OOM killer does.

Checked every CHECK_S against the resident set size (RSS, psutil) of the node's process and its
children (the bot worker):

1. Under `memory_soft_mb`: state `ok`.
2. At or over the soft line: state `soft`. New upgrades are refused (HTTP 503 with Retry-After),
   `/readyz` answers 503, and the node sheds what it can rebuild (`shed`: caches, closed
   conversations, committed log entries kept in memory; the store and the log answer for them).
3. At or over `memory_hard_mb`: state `hard`. On top of the above, the idlest connections (whose
   last message is the oldest) are closed with 1013 "try again later" after a `closing` envelope
   with a jittered `retry_ms`. How many: the RSS over the soft line divided by the RSS per
   connection (RSS less what the node took at start, over the connections), at least one and at
   most a quarter of them; then the guard waits COOLDOWN_S for the memory to show as freed (the
   allocator returns it late: `malloc_trim` is asked to) before it closes more.
4. If a batch freed less than half of what it should have, the memory is not the connections'
   (a leak, a cache): closing more would drop everyone for nothing. The guard says so (ERROR) and
   closes no more until RSS grows another 5%.
5. Back under 95% of the line crossed: state `ok`, upgrades accepted again (the margin keeps a
   node hovering at the line from flipping its readiness every second).

Nothing acked is lost: a closed client reconnects after `retry_ms` and resumes from its last seq.
Both lines are 0 (off) by default; both can change on a reload (SIGHUP). docs/operations.md,
"Memory guard"; the test is tests/test_operations.py::test_memory_guard_*.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
from collections.abc import Callable
from typing import Any

import psutil

from .metrics import METRICS

log = logging.getLogger("gateway.memory")

CHECK_S = 1.0
COOLDOWN_S = 5.0
STEP = 0.25  # at most this share of the connections closed per step
RECOVERED = 0.95  # back to ok only under this share of the line that was crossed
STALL_GROWTH = 1.05  # after a batch freed nothing: close more only once RSS grew this much
MIN_PER_CONNECTION = 4096  # bytes: the least a connection is taken to cost (bench: 5.7 KB idle)
STATES = ("ok", "soft", "hard")
MB = 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim: freed heap goes back to the kernel now, so RSS shows what was shed."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def _line(mb: int) -> str:
    return f"{mb} MiB" if mb else "off"


class MemoryGuard:
    """The node's memory state and what it does about it; `check()` is called every CHECK_S."""

    def __init__(self, cfg: Any, shed: Callable[[], None], close_idlest: Callable[[int], int],
                 connections: Callable[[], int], loop: Any) -> None:
        """`shed()` drops what can be rebuilt; `close_idlest(n)` closes up to n of the longest-silent
        connections with 1013 and returns how many it closed; `connections()` counts them."""
        self.cfg = cfg
        self._shed = shed
        self._close_idlest = close_idlest
        self._connections = connections
        self._loop = loop
        self._process = psutil.Process()
        self._trim = _malloc_trim()
        self.state = "ok"
        self.rss = 0
        self._base = self._rss()  # what the node costs with no connection: not theirs
        self.closed = 0  # connections closed by the guard since start
        self._quiet_until = 0.0
        self._last_batch: tuple[int, int] | None = None  # (RSS when closed, bytes they should free)
        self._stalled_at = 0  # RSS when a batch freed nothing; 0: closing helps
        self._timer: Any = None

    def _rss(self) -> int:
        """The node's resident memory with its child processes' (the bot worker): what the machine
        pays for this node, and what an OOM kill would free."""
        rss = self._process.memory_info().rss
        for child in self._process.children():
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # exited meanwhile
                pass
        return rss

    def start(self) -> None:
        self._timer = self._loop.call_later(CHECK_S, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @property
    def refusing(self) -> bool:
        """True while new upgrades are refused (soft or hard)."""
        return self.state != "ok"

    def _tick(self) -> None:
        self._timer = self._loop.call_later(CHECK_S, self._tick)
        try:
            self.check()
        except Exception:  # the guard must keep watching whatever one check did
            log.exception("memory check failed")

    def check(self) -> str:
        """Read RSS, move between states, act; returns the state."""
        soft = self.cfg.memory_soft_mb * MB
        hard = self.cfg.memory_hard_mb * MB
        self.rss = self._rss()
        was = self.state
        if hard and self.rss >= hard:
            self.state = "hard"
        elif soft and self.rss >= soft:
            self.state = "soft"
        elif self.rss < (soft or hard or 1) * RECOVERED or not (soft or hard):
            self.state = "ok"  # a margin under the line: RSS hovering at it must not flip readiness
        elif was == "hard":
            self.state = "soft"
        METRICS.memory_guard_state.set(STATES.index(self.state))
        if self.state != was:
            log.warning("memory guard %s -> %s: RSS %.1f MiB (soft line %s, hard line %s)", was, self.state,
                        self.rss / MB, _line(self.cfg.memory_soft_mb), _line(self.cfg.memory_hard_mb),
                        extra={"rss": self.rss, "state": self.state})
        if self.state == "ok":
            self._stalled_at = 0
            return self.state
        if was == "ok":
            self._release()
        if self.state == "hard" and self._loop.time() >= self._quiet_until:
            self._close_some(soft or hard)
        return self.state

    def _release(self) -> None:
        self._shed()
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def _close_some(self, line: int) -> None:
        if self._last_batch is not None:  # did the last batch free what it should have?
            rss_then, expected = self._last_batch
            self._last_batch = None
            if rss_then - self.rss < expected / 2:
                self._stalled_at = self.rss
                log.error("memory guard: closing connections did not free memory (RSS %.1f MiB, %.1f MiB expected "
                          "to be freed); no more are closed until RSS grows 5%% past this: the memory is not theirs",
                          self.rss / MB, expected / MB)
        if self._stalled_at and self.rss < self._stalled_at * STALL_GROWTH:
            return
        conns = self._connections()
        if not conns:
            return
        per_conn = max(MIN_PER_CONNECTION, (self.rss - self._base) // conns)
        n = min(max(1, math.ceil((self.rss - line) / per_conn)), max(1, int(conns * STEP)))
        closed = self._close_idlest(n)
        self.closed += closed
        METRICS.memory_guard_closed.inc(closed)
        log.warning("memory guard: closed %d idlest of %d connections with 1013 (RSS %.1f MiB)", closed, conns,
                    self.rss / MB, extra={"closed": closed})
        self._last_batch = (self.rss, closed * per_conn)
        self._quiet_until = self._loop.time() + COOLDOWN_S
        self._release()

    def describe(self) -> dict[str, Any]:
        """What /readyz and /admin/stats show: {state, rss_mb, soft_mb, hard_mb, closed}."""
        return {"state": self.state, "rss_mb": round(self.rss / MB, 1), "soft_mb": self.cfg.memory_soft_mb,
                "hard_mb": self.cfg.memory_hard_mb, "closed": self.closed}

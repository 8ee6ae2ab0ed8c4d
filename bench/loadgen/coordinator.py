"""The load generator's coordinator: spawns worker processes and drives them in lock step."""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import wait
from typing import Any

from .net import nofile_hard
from .worker import worker_main

# File descriptors a worker keeps for itself (pipes, epoll, imports).
WORKER_FD_RESERVE = 200


class LoadGenError(RuntimeError):
    """A worker failed a command or missed its deadline."""


class LoadGen:
    """`workers` processes, each on its own uvloop, pinned to `cpus` (None: no pinning).

    Each worker exits by itself after `lifetime_s` or when this process goes away.
    """

    def __init__(self, workers: int, cpus: set[int] | None = None, lifetime_s: float = 3600.0) -> None:
        self.n = max(1, workers)
        self.cpus = cpus
        self._ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        for i in range(self.n):
            parent, child = self._ctx.Pipe()
            p = self._ctx.Process(target=worker_main, args=(child, i, cpus, lifetime_s), name=f"bench-loadgen-{i}", daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)
        self.all({"op": "ping"}, timeout=60)

    @staticmethod
    def per_worker_capacity() -> int:
        """Connections one worker can hold (its open-file limit)."""
        return max(1000, nofile_hard() - WORKER_FD_RESERVE)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def split(self, n: int) -> list[int]:
        """`n` spread as evenly as possible over the workers."""
        q, r = divmod(n, self.n)
        return [q + (1 if i < r else 0) for i in range(self.n)]

    def call(self, cmds: list[dict[str, Any] | None], timeout: float) -> list[dict[str, Any] | None]:
        """Send cmds[i] to worker i (None: skip it), wait for every answer, at most `timeout` s."""
        waiting = {}
        for i, cmd in enumerate(cmds):
            if cmd is not None:
                self.pipes[i].send(cmd)
                waiting[self.pipes[i]] = i
        out: list[dict[str, Any] | None] = [None] * self.n
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadGenError(f"workers {sorted(waiting.values())} missed the {timeout:.0f}s deadline")
            for conn in wait(list(waiting), left):
                i = waiting.pop(conn)
                try:
                    reply = conn.recv()
                except EOFError:
                    raise LoadGenError(f"worker {i} died") from None
                if not reply.get("ok"):
                    raise LoadGenError(f"worker {i}: {reply.get('error')}")
                out[i] = reply
        return out

    def all(self, cmd: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return [r for r in self.call([cmd] * self.n, timeout) if r is not None]

    def each(self, cmd: dict[str, Any], key: str, values: list[Any], timeout: float) -> list[dict[str, Any]]:
        """Same command to every worker with `key` set to that worker's value (0/None values skip it)."""
        cmds = [dict(cmd, **{key: v}) if v else None for v in values]
        return [r for r in self.call(cmds, timeout) if r is not None]

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send({"op": "exit"})
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2)
        for pipe in self.pipes:
            pipe.close()

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The bot bridge in a worker process, so bot traffic can't take the relay's core.

The hub talks to :class:`WorkerBridge`, which has the bridge's surface
(``has_bot``, ``backend_for``, ``answer``) and runs a :class:`BotBridge` in a
child process (``python -m bot_bridge.worker FD``) at a lower CPU priority.
Backend HTTP, SSE parsing, JSON, FAQ scoring and the coalescing timers all run
there; the node sees one message per coalesced chunk and one per answer.
The steps and the failure rules are in docs/bots.md ("The worker process").

The wire is a Unix socket pair carrying msgpack arrays, each
``[kind, id, payload]``:

    node -> worker: ["init", 0, bots_table]  ["ask", cid, ctx]  ["cancel", cid, None]  ["stats", rid, None]
    worker -> node: ["ready", pid, None]  ["fatal", 0, message]
                    ["chunk", cid, text]  ["done", cid, result]  ["fail", cid, message]  ["stats", rid, snapshot]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import BotContext, BotResult, maybe_await
from .config import BridgeConfig
from .worker_wire import Channel, ctx_from_wire, ctx_to_wire

log = logging.getLogger("chatgw.bots.worker")

START_TIMEOUT_S = 120.0  # the FAQ index is built at start; a big FAQ file takes a while
RESTART_BACKOFF_S = (0.2, 30.0)
STATS_TIMEOUT_S = 2.0
WATCHDOG_GRACE_S = 2.0  # past the bridge's own total deadline, the node stops waiting for a starved worker

def lower_priority() -> None:
    """Let the relay outrank bot work on a shared core (docs/bots.md, "The worker process").

    SCHED_IDLE: the worker runs only on CPU time no normal task wants, so a chat
    message never waits behind bot parsing. Under a saturated node the worker can
    starve; the node's watchdog then answers with the holding message.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the nicest ordinary priority
        try:
            os.nice(19)
        except OSError:
            pass


def fingerprint(table: dict[str, Any]) -> str:
    """What a bridge is built from: the ``[bots]`` table and the FAQ files it reads (the bundled one,
    and each backend's `path` or `faq_context` file). Equal fingerprints: the same bridge."""
    from .faq import DEFAULT_PATH

    digest = hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode())
    paths = {str(DEFAULT_PATH)} | {v for spec in (table.get("backends") or {}).values() if isinstance(spec, dict)
                                   for k, v in spec.items() if k in ("path", "faq_context") and isinstance(v, str)}
    for path in sorted(paths):
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"\x00missing")
    return digest.hexdigest()


class WorkerBridge:
    """The node's handle on the bridge process: same answers, none of its CPU on the relay's loop."""

    def __init__(self, config: BridgeConfig, table: dict[str, Any], env: dict[str, str] | None = None) -> None:
        """`env`: set in the worker's environment (the node's GATEWAY_LOG_LEVEL and GATEWAY_LOG_FORMAT)."""
        self.config = config
        self._table = table
        self._env = dict(env or {})
        self.fingerprint = ""  # of what the running worker was built from (`fingerprint`)
        self._chan: Channel | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._calls: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._stats: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._backoff = RESTART_BACKOFF_S[0]
        self._restarter: asyncio.Task[None] | None = None
        self._closed = False
        self._up = False
        self._idle: asyncio.Event | None = None  # set when the last call in flight ends (`retire`)
        self.pid: int | None = None
        self.restarts = 0
        self.lost_calls = 0
        specs = config.backends.values()
        longest = max([config.total_timeout_s] + [s.total_timeout_s or 0.0 for s in specs])
        queued = max([config.queue_wait_s] + [s.queue_wait_s or 0.0 for s in specs])
        self._watchdog_s = longest + queued + config.cancel_timeout_s + WATCHDOG_GRACE_S

    @classmethod
    def from_mapping(cls, table: dict[str, Any] | None, env: dict[str, str] | None = None) -> WorkerBridge:
        """Validate the ``[bots]`` table here, so a bad one stops the node before any process starts."""
        return cls(BridgeConfig.from_mapping(table), dict(table or {}), env)

    def backend_for(self, tenant: str, group: str) -> str:
        return self.config.backend_for(tenant, group)

    def has_bot(self, tenant: str, group: str) -> bool:
        return bool(self.config.backend_for(tenant, group))

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Start the worker and wait until its bridge is built; raises if it can't be (bad backend, FAQ file)."""
        loop = asyncio.get_running_loop()
        self.fingerprint = fingerprint(self._table)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot_bridge.worker", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **self._env},
            )
        finally:
            theirs.close()
        self._ready = loop.create_future()
        _, chan = await loop.create_unix_connection(lambda: Channel(self._on_message, self._on_lost), sock=ours)
        self._chan = chan
        chan.send("init", 0, self._table)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.shield(self._ready)
        except BaseException:
            chan.close()
            await self._reap()
            raise
        self.pid = self._proc.pid
        self._up = True
        self._backoff = RESTART_BACKOFF_S[0]
        log.info("bot worker running, pid %d", self.pid)

    def _on_message(self, kind: str, ident: int, payload: Any) -> None:
        if kind in ("chunk", "done", "fail"):
            q = self._calls.get(ident)
            if q is not None:  # else: a call the node already gave up (cancelled)
                q.put_nowait((kind, payload))
        elif kind == "stats":
            fut = self._stats.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif kind == "fatal":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"bot worker failed to start: {payload}"))

    def _on_lost(self, exc: BaseException | None) -> None:
        self._chan = None
        was_up, self._up = self._up, False
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError("bot worker exited during start-up (see its log above)"))
        for q in self._calls.values():
            q.put_nowait(("fail", "bot worker lost"))
        for fut in self._stats.values():
            if not fut.done():
                fut.set_exception(ConnectionError("bot worker lost"))
        self._stats.clear()
        if was_up and not self._closed and self._restarter is None:
            log.error("bot worker (pid %s) is gone; open bot calls get the fallback; restarting", self.pid)
            self._restarter = asyncio.get_running_loop().create_task(self._restart())

    async def _reap(self) -> None:
        if self._proc is None:
            return
        try:
            async with asyncio.timeout(self.config.cancel_timeout_s + 2):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()

    async def _restart(self) -> None:
        try:
            await self._reap()
            while not self._closed:
                await asyncio.sleep(self._backoff)  # not synchronisation: a crash loop must not spin
                self._backoff = min(self._backoff * 2, RESTART_BACKOFF_S[1])
                try:
                    await self.start()
                except Exception as exc:
                    log.error("bot worker restart failed: %s", exc)
                    continue
                self.restarts += 1
                return
        finally:
            self._restarter = None

    async def answer(self, ctx: BotContext, on_chunk: Callable[[str], Any]) -> BotResult:
        """As :meth:`BotBridge.answer`; while the worker is down (or dies mid-call) the holding message."""
        chan = self._chan
        if chan is None or not self._up:
            self.lost_calls += 1
            return self.config.holding_result(ctx, "bot_worker_down")
        self._next += 1
        cid = self._next
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._calls[cid] = q
        finished = False
        try:
            chan.send("ask", cid, ctx_to_wire(ctx))
            deadline = asyncio.get_running_loop().time() + self._watchdog_s
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        kind, payload = await q.get()
                except TimeoutError:
                    self.lost_calls += 1
                    log.warning("bot worker gave no answer for %s/%s in %.0f s", ctx.tenant, ctx.conv_id, self._watchdog_s)
                    return self.config.holding_result(ctx, "bot_worker_stalled")
                if kind == "chunk":
                    await maybe_await(on_chunk(payload))
                    continue
                finished = True
                if kind == "done":
                    return BotResult(**payload)
                self.lost_calls += 1
                log.warning("bot call for %s/%s failed in the worker: %s", ctx.tenant, ctx.conv_id, payload)
                return self.config.holding_result(ctx, "bot_worker_error")
        finally:
            del self._calls[cid]
            if not finished and self._chan is chan:
                chan.send("cancel", cid)  # the caller was cancelled or on_chunk raised
            if not self._calls and self._idle is not None:
                self._idle.set()

    async def snapshot(self) -> dict[str, Any]:
        """Breaker states and counters from the worker, plus the worker's own state."""
        own = {"pid": self.pid, "up": self.up, "restarts": self.restarts, "lost_calls": self.lost_calls,
               "in_flight": len(self._calls)}
        chan = self._chan
        if chan is None or not self._up:
            return {"worker": own, "breakers": {}, "stats": {}}
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stats[self._next] = fut
        chan.send("stats", self._next)
        try:
            async with asyncio.timeout(STATS_TIMEOUT_S):
                got = await fut
        except (TimeoutError, ConnectionError):
            self._stats.pop(self._next, None)
            return {"worker": own, "breakers": {}, "stats": {}}
        return {"worker": own, **got}

    async def retire(self) -> None:
        """Stop once the calls already asked have their answers (a reload's old bridge: nobody asks it
        anything new), or after the longest a call may take."""
        if self._calls:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._watchdog_s)
        await self.close()

    async def close(self) -> None:
        """Stop the worker: it cancels its calls (telling backends), closes its clients and exits."""
        self._closed = True
        if self._restarter is not None:
            self._restarter.cancel()
        if self._chan is not None:
            self._chan.close()
        await self._reap()


# ---- the worker's side --------------------------------------------------------------------


class _Serve:
    def __init__(self) -> None:
        self.bridge: Any = None
        self.chan: Channel | None = None
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.gone = asyncio.get_running_loop().create_future()

    def on_message(self, kind: str, ident: int, payload: Any) -> None:
        if kind == "ask":
            self.tasks[ident] = asyncio.get_running_loop().create_task(self._answer(ident, payload))
        elif kind == "cancel":
            task = self.tasks.pop(ident, None)
            if task is not None:
                task.cancel()
        elif kind == "stats":
            self.chan.send("stats", ident, {"breakers": self.bridge.breaker_states(), "stats": self.bridge.stats()})
        elif kind == "init":
            from .bridge import BotBridge

            try:
                self.bridge = BotBridge.from_mapping(payload)
            except Exception as exc:
                log.exception("bot bridge failed to start")
                self.chan.send("fatal", 0, f"{type(exc).__name__}: {exc}")
                self.chan.close()
                return
            self.chan.send("ready", os.getpid())

    async def _answer(self, cid: int, wire: dict[str, Any]) -> None:
        chan = self.chan
        try:
            result = await self.bridge.answer(ctx_from_wire(wire), lambda text: chan.send("chunk", cid, text))
            chan.send("done", cid, dataclasses.asdict(result))
        except asyncio.CancelledError:
            pass  # the node asked: it no longer waits for this call
        except Exception as exc:
            log.exception("bot call %d failed", cid)
            chan.send("fail", cid, f"{type(exc).__name__}: {exc}")
        finally:
            self.tasks.pop(cid, None)

    def on_lost(self, exc: BaseException | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    async def run(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        def channel() -> Channel:  # set before any message can arrive
            self.chan = Channel(self.on_message, self.on_lost)
            return self.chan

        await asyncio.get_running_loop().create_unix_connection(channel, sock=sock)
        await self.gone  # the node closed its end or died
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.bridge is not None:
            await self.bridge.close()


async def _main(fd: int) -> None:
    await _Serve().run(fd)


def _configure_logging() -> None:
    """As the node's (it sets GATEWAY_LOG_LEVEL and GATEWAY_LOG_FORMAT for its children): text or JSON
    lines at its level. Libraries that log their own progress at DEBUG (bm25s) stay at WARNING."""
    handler = logging.StreamHandler()
    if os.environ.get("GATEWAY_LOG_FORMAT") == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"},
                                           static_fields={"process": "bot-worker"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s bot-worker %(name)s: %(message)s"))
    # A filter on the handler, not the loggers' levels: bm25s sets its own logger to DEBUG when it
    # is imported, which happens later (the first FAQ index is built after this).
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.split(".", 1)[0] not in ("bm25s", "jieba"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.exit("usage: python -m bot_bridge.worker FD  (started by the gateway, not by hand)")
    _configure_logging()
    lower_priority()
    import uvloop

    try:
        uvloop.run(_main(int(args[0])))
    except KeyboardInterrupt:  # Ctrl-C reaches the node's whole process group: the node stops us too
        pass


if __name__ == "__main__":
    main()

"""BotBridge: picks a backend per (tenant, group) and turns its stream into one answer, safely.

The steps of :meth:`BotBridge.answer` are listed in docs/bots.md ("Semantics").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .base import BotBackend, BotContext, BotResult, maybe_await
from .cache import AnswerCache, cache_key
from .config import BridgeConfig, ConfigError
from .intent import HandoffDetector
from .limits import Busy, CircuitBreaker, Clock, ConcurrencyLimiter, TenantBuckets
from .registry import create_backend

log = logging.getLogger("chatgw.bots")

OnChunk = Callable[[str], Awaitable[None] | None]

_END = object()


@dataclass
class _Failure:
    exc: BaseException


@dataclass
class _Outcome:
    status: str  # "ok" | "first_chunk_timeout" | "total_timeout" | "backend_error"
    final: BotResult | None = None
    parts: list[str] = field(default_factory=list)
    emitted: bool = False  # on_chunk was called at least once
    error: BaseException | None = None


class BotBridge:
    """The gateway's entry point to bots. One per node; safe to share between conversations."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        backends: dict[str, BotBackend] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """Create the configured backends (``backends`` replaces some by ready instances, e.g. in tests)."""
        config.validate()
        self.config = config
        self._clock = clock
        given = dict(backends or {})
        self._backends: dict[str, BotBackend] = {}
        for name, spec in config.backends.items():
            self._backends[name] = given.pop(name) if name in given else create_backend(name, spec.type, spec.options)
        if given:
            raise ConfigError(f"backends given for unconfigured names: {', '.join(sorted(given))}")
        self._breakers = {
            name: CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s, config.breaker_half_open_probes, clock)
            for name in config.backends
        }
        self._limiters = {
            name: ConcurrencyLimiter(
                spec.max_concurrency or config.max_concurrency,
                spec.queue_wait_s if spec.queue_wait_s is not None else config.queue_wait_s,
                spec.max_queue if spec.max_queue is not None else config.max_queue,
            )
            for name, spec in config.backends.items()
        }
        self._cache = AnswerCache(config.cache_max_entries, config.cache_ttl_s, clock)
        self._buckets = TenantBuckets(config.rate_per_s, config.rate_burst, clock)
        self._detector = HandoffDetector(config.handoff_phrases, replace_defaults=config.handoff_phrases_replace)
        faq_name = config.fallback_faq
        if faq_name is None:
            faq_name = next((n for n, s in config.backends.items() if s.type == "faq"), "")
        self._faq_name = faq_name
        self._bg: set[asyncio.Task[Any]] = set()
        self._counters: collections.Counter[str] = collections.Counter()
        self._per_backend: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in config.backends}
        self._closed = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> BotBridge:
        """From the gateway configuration's ``[bots]`` table (see docs/bots.md); ``{}`` gives the demo FAQ bot."""
        return cls(BridgeConfig.from_mapping(data))

    # ---- routing -----------------------------------------------------------------

    def backend_for(self, tenant: str, group: str) -> str:
        """The backend name configured for (tenant, group); "" when that pair has no bot."""
        return self.config.backend_for(tenant, group)

    def has_bot(self, tenant: str, group: str) -> bool:
        """Does a bot answer conversations of this tenant and group first?"""
        return bool(self.config.backend_for(tenant, group))

    def backend(self, name: str) -> BotBackend:
        return self._backends[name]

    def _chain(self, name: str) -> list[str]:
        chain: list[str] = []
        while name and name not in chain:
            chain.append(name)
            name = self.config.backends[name].secondary
        return chain

    # ---- answering -----------------------------------------------------------------

    def _fallback(self, ctx: BotContext, reason: str) -> BotResult:
        """The FAQ answer when it has one above ``fallback_faq_threshold``, else the holding message."""
        self._counters[f"fallback.{reason}"] += 1
        faq = self._backends.get(self._faq_name) if self._faq_name else None
        lookup = getattr(faq, "lookup", None)
        if lookup is not None:
            try:
                hit = lookup(ctx.question)
            except Exception:  # the fallback must not fail
                log.exception("FAQ fallback lookup failed")
                hit = None
            if hit is not None and hit.confidence >= self.config.fallback_faq_threshold:
                self._counters["fallback.faq_answer"] += 1
                return BotResult(hit.answer, hit.confidence, reason=reason, backend=self._faq_name, fallback=True)
        self._counters["fallback.holding_message"] += 1
        return self.config.holding_result(ctx, reason)

    async def answer(self, ctx: BotContext, on_chunk: OnChunk) -> BotResult:
        """Answer the visitor's question; see docs/bots.md for the exact steps.

        ``on_chunk`` receives coalesced text of the backend's stream as it comes
        (a preview: typing indicator, live text); the returned result's ``text``
        is the message to log. Cancelling the calling task cancels the backend
        call (``backend.cancel(ctx)`` runs in the background) and re-raises.
        """
        self._counters["requests"] += 1
        primary = self.backend_for(ctx.tenant, ctx.group)
        if not primary:
            self._counters["no_bot"] += 1
            return BotResult("", handoff=True, reason="no_bot", backend="bridge")
        if self._detector.asks_for_human(ctx.question):
            self._counters["handoff.visitor_asked"] += 1
            return BotResult(self.config.handoff_text(ctx.tenant, ctx.question), handoff=True, reason="visitor_asked", backend="bridge")
        if not self._buckets.take(ctx.tenant):
            self._counters["rate_limited"] += 1
            return self._fallback(ctx, "rate_limited")

        template = self.config.template_for(ctx.tenant, ctx.group)
        if template is not None:
            ctx = dataclasses.replace(ctx, template=template)
        spec = self.config.backends[primary]
        key = None
        if self.config.cache_enabled and spec.cache:  # another template, another answer: not shared
            key = cache_key(ctx.tenant, f"{primary}/{template.name}" if template else primary, ctx.question)
            hit = self._cache.get(key)
            if hit is not None:
                self._counters["cache.hit"] += 1
                return hit
            self._counters["cache.miss"] += 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        reason = "backend_error"
        for name in self._chain(primary):
            spec = self.config.backends[name]
            first_s = spec.first_chunk_timeout_s or self.config.first_chunk_timeout_s
            total_s = spec.total_timeout_s or self.config.total_timeout_s
            breaker = self._breakers[name]
            counters = self._per_backend[name]
            if not breaker.allow():
                counters["skipped_open"] += 1
                reason = "breaker_open"
                continue
            limiter = self._limiters[name]
            try:
                await limiter.acquire()
            except Busy:
                breaker.abandon()
                counters["busy"] += 1
                return self._fallback(ctx, "busy")
            except BaseException:
                breaker.abandon()
                raise
            counters["calls"] += 1
            try:
                outcome = await self._run(name, ctx, on_chunk, start, start + first_s, start + total_s)
            except BaseException:  # cancelled, or on_chunk raised: no verdict on the backend
                breaker.abandon()
                counters["abandoned"] += 1
                raise
            finally:
                limiter.release()

            if outcome.status != "ok":
                breaker.failure()
                counters[outcome.status] += 1
                if outcome.error is not None:
                    log.warning("bot backend %s failed for %s/%s: %r", name, ctx.tenant, ctx.conv_id, outcome.error)
                if outcome.status == "backend_error" and not outcome.emitted and loop.time() < start + total_s:
                    reason = "backend_error"
                    continue  # nothing shown yet: the secondary may still answer
                return self._fallback(ctx, outcome.status)

            result = self._finish(name, ctx, outcome)
            if result is None:  # an empty answer is a failure of the backend
                breaker.failure()
                counters["empty_answer"] += 1
                if not outcome.emitted:
                    reason = "empty_answer"
                    continue
                return self._fallback(ctx, "empty_answer")
            breaker.success()
            counters["ok"] += 1
            if key is not None and name == primary and not result.handoff:
                self._cache.put(key, result)
            return result
        return self._fallback(ctx, reason)

    def _finish(self, name: str, ctx: BotContext, outcome: _Outcome) -> BotResult | None:
        final = outcome.final
        text = final.text if final is not None and final.text else "".join(outcome.parts)
        confidence = final.confidence if final is not None else None
        if final is not None and final.handoff:
            self._counters["handoff.backend"] += 1
            return BotResult(
                text.strip() or self.config.handoff_text(ctx.tenant, ctx.question),
                confidence,
                handoff=True,
                reason=final.reason or "backend_handoff",
                backend=name,
            )
        threshold = self.config.threshold(ctx.tenant)
        if confidence is not None and confidence < threshold:
            self._counters["handoff.low_confidence"] += 1
            return BotResult(self.config.handoff_text(ctx.tenant, ctx.question), confidence, handoff=True, reason="low_confidence", backend=name, draft=text)
        if not text.strip():
            return None
        self._counters["answered"] += 1
        return BotResult(text, confidence, backend=name)

    async def _run(
        self, name: str, ctx: BotContext, on_chunk: OnChunk, start: float, first_deadline: float, total_deadline: float
    ) -> _Outcome:
        """Consume one backend stream under the deadlines, coalescing chunks into ``on_chunk``."""
        backend = self._backends[name]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for item in backend.stream(ctx):
                    queue.put_nowait(item)
                queue.put_nowait(_END)
            except Exception as exc:
                queue.put_nowait(_Failure(exc))

        task = loop.create_task(produce(), name=f"bot:{name}:{ctx.conv_id}")
        coalesce_s = self.config.coalesce_ms / 1000.0
        max_chars = self.config.coalesce_chars
        out = _Outcome("ok")
        buf: list[str] = []
        buf_len = 0
        last_flush = start
        got_first = False
        finished = False

        async def flush() -> None:
            nonlocal buf, buf_len, last_flush
            if buf:
                text = "".join(buf)
                buf, buf_len = [], 0
                last_flush = loop.time()
                out.emitted = True
                await maybe_await(on_chunk(text))

        try:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    wake = total_deadline if got_first else min(first_deadline, total_deadline)
                    if buf:
                        wake = min(wake, last_flush + coalesce_s)
                    timeout = wake - loop.time()
                    try:
                        if timeout <= 0:
                            raise TimeoutError
                        # asyncio.timeout, not wait_for: wait_for makes a task per chunk (3.11).
                        async with asyncio.timeout(timeout):
                            item = await queue.get()
                    except TimeoutError:
                        now = loop.time()
                        if not got_first and now >= first_deadline:
                            out.status = "first_chunk_timeout"
                            return out
                        if now >= total_deadline:
                            out.status = "total_timeout"
                            return out
                        await flush()  # the coalescing interval passed
                        continue
                if item is _END:
                    finished = True
                    break
                if isinstance(item, _Failure):
                    finished = True
                    out.status, out.error = "backend_error", item.exc
                    return out
                got_first = True
                if isinstance(item, BotResult):
                    out.final = item
                    continue
                if not isinstance(item, str):
                    finished = True
                    out.status, out.error = "backend_error", TypeError(f"backend yielded {type(item).__name__}")
                    return out
                if not item:
                    continue
                out.parts.append(item)
                buf.append(item)
                buf_len += len(item)
                # The first piece goes out at once (time to first visible text); later ones coalesce.
                if not out.emitted or buf_len >= max_chars or loop.time() - last_flush >= coalesce_s:
                    await flush()
            await flush()
            return out
        finally:
            if not finished and not task.done():
                # Abandoned (deadline, caller cancelled, on_chunk raised): tell the backend to stop,
                # then stop reading. The cancel task is created first so it sees the backend's
                # per-call state (e.g. Dify's task id) before the stream's own clean-up runs.
                self._counters["cancels"] += 1
                self._spawn(self._cancel_backend(backend, ctx, task))
                task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _cancel_backend(self, backend: BotBackend, ctx: BotContext, stream_task: asyncio.Task[Any]) -> None:
        try:
            async with asyncio.timeout(self.config.cancel_timeout_s):
                await backend.cancel(ctx)
        except Exception as exc:
            self._counters["cancel_errors"] += 1
            log.warning("bot backend %s: cancel failed: %r", getattr(backend, "name", "?"), exc)
        await asyncio.gather(stream_task, return_exceptions=True)

    # ---- introspection -------------------------------------------------------------

    def breaker_states(self) -> dict[str, str]:
        """Backend name -> "closed" | "open" | "half_open"."""
        return {name: b.state for name, b in self._breakers.items()}

    def stats(self) -> dict[str, Any]:
        """Counters (requests, cache, handoffs, fallbacks by reason) and, per backend, calls/outcomes/state."""
        backends = {}
        for name, counters in self._per_backend.items():
            limiter = self._limiters[name]
            backends[name] = {
                **dict(counters),
                "breaker": self._breakers[name].state,
                "breaker_opened": self._breakers[name].opened_count,
                "in_flight": limiter.active,
                "queued": limiter.queued,
            }
        return {"counters": dict(self._counters), "backends": backends, "cache_entries": len(self._cache)}

    async def close(self) -> None:
        """Wait briefly for background cancels, then close backends' HTTP clients."""
        if self._closed:
            return
        self._closed = True
        if self._bg:
            await asyncio.wait(set(self._bg), timeout=self.config.cancel_timeout_s)
        for backend in self._backends.values():
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                try:
                    await maybe_await(aclose())
                except Exception:
                    log.exception("closing bot backend %s", getattr(backend, "name", "?"))

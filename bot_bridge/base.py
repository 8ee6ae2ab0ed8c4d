"""The contract between the gateway and bot backends: contexts, results, the backend protocol.

A backend is anything with a ``name`` and two methods: ``stream(ctx)``, an async
iterator of text chunks that may end with a :class:`BotResult` (carrying
confidence / handoff, its text may be empty: then the joined chunks are the
text), and ``cancel(ctx)``, which asks the remote side to stop where its API
allows. Backends may also have ``async aclose()``; the bridge calls it on close.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Turn:
    """One history entry."""

    role: str  # "visitor" | "bot" | "agent"
    text: str


@dataclass
class BotContext:
    """What a backend gets for one question."""

    tenant: str
    conv_id: str
    group: str
    visitor: str
    question: str  # the visitor's latest message
    history: list[Turn] = field(default_factory=list)  # oldest first, excluding `question`
    meta: dict[str, Any] = field(default_factory=dict)  # visitor metadata from the conversation
    seq: int | None = None  # log seq of `question` when known (webhook Idempotency-Key)
    template: Any = None  # the prompt template for (tenant, group), config.Template; set by the bridge


@dataclass
class BotResult:
    """A finished answer: becomes one ordinary message in the conversation log."""

    text: str
    confidence: float | None = None  # 0..1
    handoff: bool = False  # backend (or the bridge) asks for a human
    reason: str = ""  # why handoff / fallback
    backend: str = ""  # which backend produced it
    fallback: bool = False  # produced by a fallback path (FAQ answer or holding message)
    cached: bool = False
    draft: str = ""  # a low-confidence answer that was replaced by the handoff message


@runtime_checkable
class BotBackend(Protocol):
    """What a backend plugin implements."""

    name: str

    def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]: ...

    async def cancel(self, ctx: BotContext) -> None: ...


class BackendError(Exception):
    """A backend failed: HTTP error, error event, malformed or truncated stream."""


BackendFactory = Callable[[str, dict[str, Any]], BotBackend]

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def cjk_count(text: str) -> int:
    """How many CJK (Chinese, Japanese kana, Hangul) characters ``text`` holds."""
    return len(_CJK.findall(text))


def is_cjk(text: str) -> bool:
    """True when the text is mostly written in CJK characters (used to pick zh vs en strings)."""
    n = cjk_count(text)
    if n == 0:
        return False
    latin = len(re.findall(r"[A-Za-z]", text))
    return n * 2 >= latin


async def maybe_await(value: Awaitable[None] | None) -> None:
    """Await ``value`` when the callback returned an awaitable."""
    if inspect.isawaitable(value):
        await value

"""Server-sent events over a streaming HTTP response (the subset vendors use)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .base import BackendError
from .http import HTTPError, Response


@dataclass
class SSEEvent:
    event: str  # "message" when the stream names none
    data: str
    id: str = ""


async def iter_sse(response: Response) -> AsyncIterator[SSEEvent]:
    """Yield the events of an ``text/event-stream`` body.

    Per the SSE rules: ``field: value`` lines (one optional space after the
    colon), ``data`` lines joined with newlines, an event dispatched at a blank
    line, comment lines (``:``) ignored. An event still open when the body ends
    is dispatched too (some servers omit the last blank line); a cut stream is
    detected by the caller from the missing terminal event.
    """
    event, data, ev_id = "", [], ""
    try:
        async for line in response.aiter_lines():
            if line == "":
                if data or event:
                    yield SSEEvent(event or "message", "\n".join(data), ev_id)
                event, data = "", []
                continue
            if line.startswith(":"):
                continue
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                ev_id = value
            # "retry" and unknown fields are ignored
    except HTTPError as exc:  # connection reset, incomplete chunked body
        raise BackendError(f"stream broken: {exc!r}") from exc
    if data or event:
        yield SSEEvent(event or "message", "\n".join(data), ev_id)


async def check_status(response: Response, vendor: str) -> None:
    """Raise BackendError for a non-2xx answer, with a short excerpt of its body."""
    if response.is_success:
        return
    try:
        body = (await response.aread())[:300].decode("utf-8", "replace")
    except HTTPError:
        body = ""
    raise BackendError(f"{vendor}: HTTP {response.status_code}: {body}")

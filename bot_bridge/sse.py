"""Server-sent events over a streaming HTTP response (the subset vendors use)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import aiohttp

from .base import BackendError
from .http import BODY_ERRORS, HTTPError, is_2xx, line_batches, read_body


@dataclass
class SSEEvent:
    event: str  # "message" when the stream names none
    data: str
    id: str = ""


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """Yield the events of an ``text/event-stream`` body.

    Per the SSE rules: ``field: value`` lines (one optional space after the
    colon), ``data`` lines joined with newlines, an event dispatched at a blank
    line, comment lines (``:``) ignored. An event still open when the body ends
    is dispatched too (some servers omit the last blank line); a cut stream is
    detected by the caller from the missing terminal event. Raises BackendError
    ("stream broken: ...") if the body breaks off with a transport error.
    """
    event, data, ev_id = "", [], ""
    try:
        async with aclosing(line_batches(response)) as body:
            async for batch in body:
                for line in batch:
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
    except (HTTPError, *BODY_ERRORS) as exc:  # connection reset, incomplete chunked body, read timeout
        raise BackendError(f"stream broken: {exc!r}") from exc
    if data or event:
        yield SSEEvent(event or "message", "\n".join(data), ev_id)


async def check_status(response: aiohttp.ClientResponse, vendor: str) -> None:
    """Raise BackendError ("<vendor>: HTTP <status>: <body excerpt>") for a non-2xx answer."""
    if is_2xx(response):
        return
    try:
        body = (await read_body(response))[:300].decode("utf-8", "replace")
    except HTTPError:
        body = ""
    raise BackendError(f"{vendor}: HTTP {response.status}: {body}")

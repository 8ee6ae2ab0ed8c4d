"""Shared plumbing for HTTP backends: one pooled aiohttp session per backend.

Backends get aiohttp's own ``ClientResponse`` from ``Client.stream`` and use its
API for status and headers; its body goes through ``read_body`` / ``line_batches`` so
that transport failures reach them as ``HTTPError`` and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

_OPEN_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
BODY_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)


class HTTPError(Exception):
    """Any transport failure talking to a backend: refused, reset, cut body, timeout."""


def is_2xx(resp: aiohttp.ClientResponse) -> bool:
    """Whether the status is 2xx (``resp.ok`` would also accept 1xx and 3xx)."""
    return 200 <= resp.status < 300


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body. Raises HTTPError if it cannot be read to its end (reset, cut, read timeout)."""
    try:
        return await resp.read()
    except BODY_ERRORS as exc:
        raise HTTPError(repr(exc)) from exc


async def line_batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[str]]:
    """The body's lines without their line endings (LF or CRLF), decoded as UTF-8 (bad bytes
    replaced), a list per network read: one await per read, not per line (an SSE token is two or
    three lines). Raises what the body's reader raises (BODY_ERRORS: reset, cut, read timeout)."""
    rest = b""
    async for chunk in resp.content.iter_any():
        if b"\n" not in chunk:
            rest += chunk
            continue
        *complete, rest = (rest + chunk).split(b"\n")
        yield [raw.decode("utf-8", "replace").rstrip("\r") for raw in complete]
    if rest:
        yield [rest.decode("utf-8", "replace").rstrip("\r")]


class Client:
    """A pooled aiohttp session: ``stream`` for requests whose body the caller reads, ``post`` for short calls.

    aiohttp rather than httpx: under bot load the httpx/httpcore/anyio stack took
    about half of a node's CPU (bench bot scenario), on the same core as the chat.
    """

    def __init__(self, headers: dict[str, str], read_s: float, connect_s: float, max_connections: int) -> None:
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # created on first use, inside the loop
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
            )
        return self._session

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, json: Any = None, content: bytes | None = None,
                     params: dict[str, str] | None = None,
                     headers: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send the request and yield the response once its status and headers are in, whatever the status.

        Read the body with ``read_body`` or ``line_batches``. Raises HTTPError if the request fails before
        the response head (refused, reset, connect or read timeout); the connection is released on exit.
        """
        try:
            ctx = self._s().request(method, url, json=json, data=content, params=params, headers=headers)
            resp = await ctx.__aenter__()
        except _OPEN_ERRORS as exc:
            raise HTTPError(repr(exc)) from exc
        try:
            yield resp
        finally:
            await ctx.__aexit__(None, None, None)

    async def post(self, url: str, *, json: Any = None, content: bytes | None = None,
                   headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """POST and read the whole answer; the returned response is released, its body already read.

        Raises HTTPError on a transport failure; any status is returned, not raised.
        """
        async with self.stream("POST", url, json=json, content=content, headers=headers) as resp:
            await read_body(resp)
            return resp

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpBackend:
    """Base for backends that talk HTTP: options ``base_url``, ``api_key``, ``headers``, ``timeout_s``, ``connect_timeout_s``."""

    name: str

    def __init__(self, name: str, options: dict[str, Any], *, default_base_url: str = "") -> None:
        self.name = name
        self.options = options
        self.base_url = str(options.get("base_url") or options.get("url") or default_base_url).rstrip("/")
        if not self.base_url:
            raise ValueError(f"backend {name!r}: base_url is required")
        self.api_key = str(options.get("api_key", ""))
        headers = {str(k): str(v) for k, v in dict(options.get("headers", {})).items()}
        if self.api_key:
            headers.setdefault("Authorization", f"Bearer {self.api_key}")
        self.client = Client(headers, float(options.get("timeout_s", 120.0)), float(options.get("connect_timeout_s", 5.0)),
                             int(options.get("max_connections", 100)))

    async def aclose(self) -> None:
        await self.client.aclose()

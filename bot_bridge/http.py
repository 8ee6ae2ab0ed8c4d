"""Shared plumbing for HTTP backends: one pooled aiohttp session per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp


class HTTPError(Exception):
    """Any transport failure talking to a backend: refused, reset, cut body, timeout."""


class Response:
    """The part of a streaming HTTP response the backends use (status, headers, body, lines)."""

    __slots__ = ("_r",)

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self._r = r

    @property
    def status_code(self) -> int:
        return self._r.status

    @property
    def is_success(self) -> bool:
        return 200 <= self._r.status < 300

    @property
    def headers(self) -> Any:
        return self._r.headers

    async def aread(self) -> bytes:
        try:
            return await self._r.read()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise HTTPError(repr(exc)) from exc

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Lines of the body without their line endings (LF or CRLF), decoded as UTF-8."""
        try:
            async for raw in self._r.content:
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise HTTPError(repr(exc)) from exc


class Client:
    """A pooled aiohttp session behind the small API the backends use.

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
                     params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> AsyncIterator[Response]:
        try:
            ctx = self._s().request(method, url, json=json, data=content, params=params, headers=headers)
            resp = await ctx.__aenter__()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise HTTPError(repr(exc)) from exc
        try:
            yield Response(resp)
        finally:
            await ctx.__aexit__(None, None, None)

    async def post(self, url: str, *, json: Any = None, content: bytes | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        async with self.stream("POST", url, json=json, content=content, headers=headers) as resp:
            await resp.aread()
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

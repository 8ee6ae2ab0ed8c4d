"""Shared plumbing for HTTP backends: one pooled httpx.AsyncClient per backend, bounded maps."""

from __future__ import annotations

import collections
from typing import Any, Generic, TypeVar

import httpx

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A dict that forgets its least recently used keys past ``capacity``."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = max(1, capacity)
        self._d: collections.OrderedDict[K, V] = collections.OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return default

    def __setitem__(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._d.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)


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
        read = float(options.get("timeout_s", 120.0))
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(read, connect=float(options.get("connect_timeout_s", 5.0))),
            limits=httpx.Limits(max_connections=int(options.get("max_connections", 100)), max_keepalive_connections=20),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

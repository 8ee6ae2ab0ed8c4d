"""ApiKeys in one process: a dictionary, written ahead to the store where there is one (store_api_keys.py)."""

from __future__ import annotations

from typing import Any

from ..ports import ApiKeys
from .store import Store


class MemoryApiKeys(ApiKeys):
    _store: Store | None

    def _init_api_keys(self) -> None:
        self._api_keys: dict[str, Any] = {}

    def _restore_api_keys(self) -> None:
        """At start: the keys the store has."""
        if self._store is not None:
            self._api_keys = {k.id: k for k in self._store.load_api_keys()}

    async def save_api_key(self, key: Any) -> None:
        if self._store is not None:
            self._store.save_api_key(key)
        self._api_keys[key.id] = key

    async def api_key(self, key_id: str) -> Any | None:
        return self._api_keys.get(key_id)

    async def api_keys(self, tenant: str) -> list[Any]:
        return sorted((k for k in self._api_keys.values() if k.tenant == tenant), key=lambda k: (k.created_ms, k.id))

    async def delete_api_key(self, tenant: str, key_id: str) -> bool:
        key = self._api_keys.get(key_id)
        if key is None or key.tenant != tenant:
            return False
        if self._store is not None:
            self._store.delete_api_key(key_id)
        del self._api_keys[key_id]
        return True

"""The store's table of REST API keys (store.py's `Store` mixes this in; gateway/api_keys.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

SCHEMA = "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, doc BLOB NOT NULL) WITHOUT ROWID;"


class StoreApiKeys:
    _db: sqlite3.Connection | None

    def _write_ahead(self, sql: str, params: tuple[Any, ...]) -> int: ...  # store.py

    def save_api_key(self, key: Any) -> None:
        self._write_ahead("INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?)", (key.id, key.tenant, orjson.dumps(key.to_dict())))

    def delete_api_key(self, key_id: str) -> None:
        self._write_ahead("DELETE FROM api_keys WHERE id = ?", (key_id,))

    def load_api_keys(self) -> list[Any]:
        from ...api_keys import ApiKey  # the record's class lives with the API

        assert self._db is not None
        return [ApiKey.from_dict(orjson.loads(doc)) for (doc,) in self._db.execute("SELECT doc FROM api_keys")]

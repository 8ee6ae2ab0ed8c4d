"""The store's tables of REST API keys (gateway/api_keys.py) and channel contacts (gateway/channels);
store.py's `Store` mixes this in."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, doc BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (tenant TEXT NOT NULL, channel TEXT NOT NULL, external_id TEXT NOT NULL,
    doc BLOB NOT NULL, PRIMARY KEY (tenant, channel, external_id)) WITHOUT ROWID;
"""


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

    def save_contact(self, tenant: str, channel: str, external_id: str, doc: bytes) -> None:
        self._write_ahead("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?)", (tenant, channel, external_id, doc))

    def load_contacts(self) -> list[tuple[str, str, str, bytes]]:
        assert self._db is not None
        return list(self._db.execute("SELECT tenant, channel, external_id, doc FROM contacts"))

"""The store's webhook outbox (store.py's `Store` mixes this in; gateway/webhooks.py, docs/webhooks.md).

An entry that a webhook subscription wants becomes an outbox row in the same transaction as
the entry itself (the turn's group commit): an event is in the outbox exactly when its entry is
in the log, so a node that dies after the ack loses no event, and one whose commit failed sends
none. The sender (webhooks.py) reads due rows, deletes a row once its receiver answered 2xx,
reschedules it after a failure, and moves it to `dead` past its maximum age.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ..base import Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY, id TEXT NOT NULL, sub TEXT NOT NULL,
    tenant TEXT NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL, body BLOB NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sub, n);
CREATE TABLE IF NOT EXISTS dead (id TEXT PRIMARY KEY, sub TEXT NOT NULL, tenant TEXT NOT NULL, conv TEXT NOT NULL,
    seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL,
    body BLOB NOT NULL, kind TEXT NOT NULL) WITHOUT ROWID;
"""

_COLUMNS = "id, sub, tenant, conv, seq, created_ms, next_ms, attempts, body, kind"
_INSERT = f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class StoreOutbox:
    _db: sqlite3.Connection | None
    # (tenant, entry's JSON) -> (subscription, event type) for each event of it wanted; set by webhooks.py
    subscribers: Callable[[str, bytes], list[tuple[str, str]]] | None = None

    def _init_outbox(self) -> None:
        self._outbox_rows: list[tuple[Any, ...]] = []

    def _outbox_add(self, tenant: str, conv_id: str, seq: int, body: bytes) -> None:
        """Called for each entry added this turn: a row per subscription that wants it."""
        for _, params in self._outbox_rows_for(tenant, conv_id, seq, body):
            self._outbox_rows.append(params)

    def _outbox_rows_for(self, tenant: str, conv_id: str, seq: int, body: bytes) -> list[tuple[str, tuple[Any, ...]]]:
        """The INSERTs of `body`'s event for each subscription that wants it (none: no subscription)."""
        subs = self.subscribers(tenant, body) if self.subscribers is not None else ()
        now = int(time.time() * 1000)
        return [(_INSERT, (f"evt_{secrets.token_hex(12)}", sub, tenant, conv_id, seq, now, now, 0, body, kind))
                for sub, kind in subs]

    def _outbox_write(self, db: sqlite3.Connection) -> None:
        """Inside the turn's transaction."""
        if self._outbox_rows:
            rows, self._outbox_rows = self._outbox_rows, []
            db.executemany(_INSERT, rows)

    def _outbox_drop(self) -> None:
        """The turn's commit failed: its entries were not stored, so neither are their events."""
        self._outbox_rows = []

    def _db_or_unavailable(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable("the node's store is closed (the node is stopping)")
        return self._db

    def outbox_due(self, sub: str, now_ms: int, limit: int) -> list[dict[str, Any]]:
        """The subscription's oldest rows, in the order they were committed (`n`, not the wall clock, which
        may step back), up to the first one not due yet: a receiver gets its events in order."""
        rows = self._db_or_unavailable().execute(
            f"SELECT n, {_COLUMNS} FROM outbox WHERE sub = ? ORDER BY n LIMIT ?", (sub, limit)).fetchall()
        out = []
        for r in rows:
            row = dict(zip(("n", *_COLUMNS.split(", ")), r, strict=True))
            if row["next_ms"] > now_ms:
                break
            out.append(row)
        return out

    def outbox_done(self, row: dict[str, Any]) -> None:
        self._write(("DELETE FROM outbox WHERE n = ?", (row["n"],)))

    def outbox_retry(self, row: dict[str, Any], next_ms: int) -> None:
        self._write(("UPDATE outbox SET attempts = attempts + 1, next_ms = ? WHERE n = ?", (next_ms, row["n"])))

    def outbox_bury(self, row: dict[str, Any], error: str) -> None:
        """Past its age: to the dead letters, out of the way of the events after it."""
        self._write(("INSERT OR REPLACE INTO dead VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (row["id"], row["sub"], row["tenant"], row["conv"], row["seq"], row["created_ms"], row["attempts"] + 1,
                      error[:500], row["body"], row["kind"])), ("DELETE FROM outbox WHERE n = ?", (row["n"],)))

    def dead_letters(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("id", "sub", "tenant", "conv", "seq", "created_ms", "attempts", "error")
        rows = self._db_or_unavailable().execute(
            f"SELECT {', '.join(cols)} FROM dead WHERE tenant = ? ORDER BY created_ms, seq LIMIT ?", (tenant, limit))
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def replay_dead(self, tenant: str, event_id: str) -> bool:
        """A dead letter goes back to the outbox (tried again at once, its age counted from now)."""
        db = self._db_or_unavailable()
        row = db.execute("SELECT id, sub, tenant, conv, seq, body, kind FROM dead WHERE id = ? AND tenant = ?",
                         (event_id, tenant)).fetchone()
        if row is None:
            return False
        now = int(time.time() * 1000)
        self._write((_INSERT, (*row[:5], now, now, 0, row[5], row[6])), ("DELETE FROM dead WHERE id = ?", (event_id,)))
        return True

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        db = self._db_or_unavailable()
        try:
            db.execute("BEGIN")
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise Unavailable(f"the store can't write: {e}") from None

"""The store's queries for transcripts, erasure and retention (store.py's `Store` mixes this in; docs/store.md, step 11)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from routing.model import Conversation

from ..base import Unavailable


class StoreTranscripts:
    _db: sqlite3.Connection | None
    _keys: dict[tuple[str, str], int]

    def commit(self) -> None: ...  # store.py

    def list_conversations(self, tenant: str, since_ms: int | None, until_ms: int | None, state: str | None,
                           agent: str | None, limit: int, after: tuple[int, str] | None) -> list[Conversation]:
        """A tenant's conversations by (created_ms, id), from past `after`; filtered; at most `limit`."""
        db = self._db
        if db is None:
            raise Unavailable("the node's store is closed (the node is stopping)")
        where, params = ["tenant = ?"], [tenant]
        for clause, value in (("created_ms >= ?", since_ms), ("created_ms < ?", until_ms), ("state = ?", state),
                              ("agent = ?", agent)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if after is not None:
            where.append("(created_ms, id) > (?, ?)")
            params += list(after)
        out = []
        for version, doc in db.execute(f"SELECT version, doc FROM conversations WHERE {' AND '.join(where)} "
                                       "ORDER BY created_ms, id LIMIT ?", (*params, limit)):
            c = Conversation.from_dict(orjson.loads(doc))
            c.version = version
            out.append(c)
        return out

    def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        """Delete every conversation of `visitor` with its entries, and its sticky agent; the ids erased.

        Deleted rows are overwritten (`secure_delete`, set at open) and the WAL is checkpointed and
        truncated, so nothing of them stays in the files.
        """
        return self._delete(tenant, "visitor = ?", (visitor,),
                            [("DELETE FROM sticky WHERE tenant = ? AND visitor = ?", (tenant, visitor)),
                             # the channels' contacts that were this visitor (gateway/channels)
                             ("DELETE FROM contacts WHERE tenant = ? AND json_extract(doc, '$.visitor') = ?",
                              (tenant, visitor))])

    def expire(self, tenant: str, before_ms: int) -> list[str]:
        """Delete `tenant`'s closed conversations opened before `before_ms`, as `erase_visitor` does; the ids."""
        return self._delete(tenant, "state = 'closed' AND created_ms < ?", (before_ms,), [])

    @staticmethod
    def _truncate_wal(db: sqlite3.Connection) -> None:
        """Copy the WAL into the database and empty it, so deleted rows leave no copy there. The store's
        checkpoint thread may hold the checkpoint lock a moment: SQLite then answers busy, and this tries again."""
        for _ in range(50):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.01)
        raise sqlite3.OperationalError("the WAL stayed busy: the erasure is done but its copy in the WAL is not cleared yet")

    def tenants(self) -> set[str]:
        db = self._db
        return set() if db is None else {t for (t,) in db.execute("SELECT DISTINCT tenant FROM conversations")}

    def _delete(self, tenant: str, where: str, params: tuple[Any, ...],
                also: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
        db = self._db
        if db is None:
            raise Unavailable("the node's store is closed (the node is stopping)")
        self.commit()  # entries queued this turn go in first, so they are deleted with the rest
        rows = db.execute(f"SELECT key, id FROM conversations WHERE tenant = ? AND {where}", (tenant, *params)).fetchall()
        if not rows and not also:
            return []
        try:
            db.execute("BEGIN")
            db.executemany("DELETE FROM entries WHERE conv = ?", [(k,) for k, _ in rows])
            db.executemany("DELETE FROM conversations WHERE key = ?", [(k,) for k, _ in rows])
            # Webhook events of them not sent yet, or dead, go too (store_outbox.py).
            db.executemany("DELETE FROM outbox WHERE tenant = ? AND conv = ?", [(tenant, c) for _, c in rows])
            db.executemany("DELETE FROM dead WHERE tenant = ? AND conv = ?", [(tenant, c) for _, c in rows])
            for sql, p in also:
                db.execute(sql, p)
            db.execute("COMMIT")
            self._truncate_wal(db)
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise Unavailable(f"the node's store can't delete ({type(e).__name__}: {e})") from None
        for _, conv_id in rows:
            self._keys.pop((tenant, conv_id), None)
        return [conv_id for _, conv_id in rows]

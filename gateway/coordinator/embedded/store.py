"""The embedded coordinator's state on local disk: one SQLite database in WAL mode (docs/store.md).

The coordinator's dictionaries stay what the node serves from; this module writes every
change to them into `data_dir/chatgw.sqlite3` and reads them back at start:

- State changes (a conversation saved, a sticky agent, an agent, a queue change) are written
  ahead, each in a transaction of its own: the row, its commit, then the dictionary. A failed
  write raises `Unavailable` with the dictionaries untouched.
- Log entries go into the dictionary at once (`append_now` stays synchronous) and are queued;
  at the end of the loop turn they are inserted (`executemany`) and committed in one
  transaction (group commit). Whoever waits on an entry (the sender's ack, its delivery, a bot
  turn) waits for that commit (`when_durable`). A commit that fails is rolled back, its
  entries are taken out of the dictionaries again (newest first: each is its log's last) and
  every waiter is told (the clients get `unavailable` and send again).

The database is on the loop thread: with `synchronous=NORMAL` a WAL commit writes the pages
without waiting for the disk (tens of microseconds), so an acked entry survives the process
dying (SIGKILL, OOM) but not the machine losing power; `synchronous=FULL`
(`store_fsync = true`) waits for the disk at every commit (docs/store.md says what it costs).

`data_dir/LOCK` is held (`flock`) while the node runs: a second node on the same directory
refuses to start.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from routing.model import Agent, Conversation

from ..base import Unavailable
from .store_api_keys import SCHEMA as API_KEYS_SCHEMA
from .store_api_keys import StoreApiKeys
from .store_checkpoint import Checkpointer
from .store_outbox import SCHEMA as OUTBOX_SCHEMA
from .store_outbox import StoreOutbox
from .store_transcripts import StoreTranscripts

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    key INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, doc BLOB NOT NULL,
    -- copied out of the doc for the transcript listing and erasure
    visitor TEXT NOT NULL, state TEXT NOT NULL, agent TEXT, created_ms INTEGER NOT NULL,
    UNIQUE (tenant, id));
CREATE INDEX IF NOT EXISTS conversations_by_time ON conversations (tenant, created_ms, id);
CREATE INDEX IF NOT EXISTS conversations_by_visitor ON conversations (tenant, visitor);
-- Rows in append order (the rowid): a turn's inserts land on the table's last pages, and the only
-- index is two integers, so a commit writes few pages (`python -m bench.store_schema`: 28 us of CPU
-- per entry with a (tenant, conv, seq) text key and a client-id index, 7 with this layout).
CREATE TABLE IF NOT EXISTS entries (
    conv INTEGER NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, client_id TEXT, body BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_seq ON entries (conv, seq);
CREATE TABLE IF NOT EXISTS sticky (tenant TEXT NOT NULL, visitor TEXT NOT NULL, agent TEXT NOT NULL,
    PRIMARY KEY (tenant, visitor)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (tenant TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (tenant TEXT NOT NULL, grp TEXT NOT NULL, conv TEXT NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (tenant, grp, conv)) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The data directory can't be used (locked by another node, unreadable, corrupt): the node must not start."""


@dataclass
class Snapshot:
    """What the database held at start, for the coordinator's dictionaries."""

    conversations: list[Conversation] = field(default_factory=list)
    # (tenant, conv) -> [(seq, sender, client id or None, body)], the newest `keep` of each open one, oldest first
    entries: dict[tuple[str, str], list[tuple[int, str, str | None, bytes]]] = field(default_factory=dict)
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    sticky: dict[tuple[str, str], str] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    queues: dict[tuple[str, str], list[str]] = field(default_factory=dict)


class PendingEntry(Protocol):
    """An entry the dictionaries hold until its commit: `settled()` once written, `undo()` if not."""

    def settled(self) -> None: ...

    def undo(self) -> None: ...


# Who waits for a commit: called with its args once written, `failed(error)` if not.
_Waiter = tuple[Callable[..., None], tuple[Any, ...], Callable[[Exception], None]]


class Store(StoreTranscripts, StoreApiKeys, StoreOutbox):
    """The SQLite database of one embedded node. `open()` locks the directory and loads it; `close()` releases it."""

    def __init__(self, data_dir: str | os.PathLike[str], *, fsync: bool = False, max_bytes: int = 0):
        """`max_bytes`: the most the database may grow to (0: as much as the disk holds); past it
        writes fail as on a full disk."""
        self.dir = Path(data_dir)
        self.path = self.dir / "chatgw.sqlite3"
        self._fsync = fsync
        self._max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._lock_fd: int | None = None
        # (tenant, conversation) -> its integer key in the database, for the conversations in memory
        # (a conversation that left memory is looked up: `_key`)
        self._keys: dict[tuple[str, str], int] = {}
        self._rows: list[tuple[int, int, str, str | None, bytes]] = []  # this turn's entries, oldest first
        self._pending: list[PendingEntry] = []  # and each entry as the dictionaries hold it
        self._waiters: list[_Waiter] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = {"commits": 0, "committed_entries": 0, "failed_commits": 0}
        self._init_outbox()

    # start and stop
    def open(self, keep: int) -> Snapshot:
        """Lock the directory, open (or create) the database, check it and read it back.

        Raises StoreError if another node holds the directory or the file is not a usable database.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"data directory {self.dir} is not usable: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"data directory {self.dir} is in use by another node (its LOCK is held); "
                             "give each node its own --data-dir") from None
        self._lock_fd = fd
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db = db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            db.execute("PRAGMA secure_delete = ON")  # erased rows are overwritten, not left in free pages
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run on their own thread (store_checkpoint.py)
            if self._max_bytes:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {max(self._max_bytes // page, 1)}")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(_SCHEMA + API_KEYS_SCHEMA + OUTBOX_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema {row[0]}, this gateway reads {SCHEMA_VERSION}")
            snap = self._load(keep)
            self._checkpointer = Checkpointer(self.path)
            return snap
        except sqlite3.Error as e:
            self.close()
            raise StoreError(f"{self.path} can't be read ({type(e).__name__}: {e}); "
                             "restore it from a backup or move it away to start empty") from None
        except StoreError:
            self.close()
            raise

    def _load(self, keep: int) -> Snapshot:
        db = self._db
        assert db is not None
        snap = Snapshot()
        last = dict(db.execute("SELECT conv, MAX(seq) FROM entries GROUP BY conv"))  # the (conv, seq) index alone
        for key, tenant, conv_id, version, doc in db.execute("SELECT key, tenant, id, version, doc FROM conversations"):
            c = Conversation.from_dict(orjson.loads(doc))
            c.version = version
            snap.conversations.append(c)
            snap.last_seq[(tenant, conv_id)] = last.get(key, 0)
            if c.state != "closed":  # a closed conversation's log is read from here when asked for
                self._keys[(tenant, conv_id)] = key
                rows = db.execute("SELECT seq, sender, client_id, body FROM entries WHERE conv = ? "
                                  "ORDER BY seq DESC LIMIT ?", (key, keep)).fetchall()
                snap.entries[(tenant, conv_id)] = rows[::-1]
        snap.sticky = {(t, v): a for t, v, a in db.execute("SELECT tenant, visitor, agent FROM sticky")}
        snap.agents = [Agent(**{**orjson.loads(doc), "groups": tuple(orjson.loads(doc)["groups"])})
                       for (doc,) in db.execute("SELECT doc FROM agents")]
        for tenant, grp, conv in db.execute("SELECT tenant, grp, conv FROM queue ORDER BY tenant, grp, pos"):
            snap.queues.setdefault((tenant, grp), []).append(conv)
        return snap

    def close(self) -> None:
        """Commit what is pending and release the directory."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            try:
                self.commit()
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # state changes: written ahead, committed at once
    def _write_ahead(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one statement in a transaction of its own and commit it; its lastrowid. Unavailable if it failed
        (rolled back; the entries waiting for the turn's commit are not in it and not touched)."""
        db = self._db
        if db is None:
            raise Unavailable("the node's store is closed (the node is stopping)")
        try:
            db.execute("BEGIN")
            rowid = db.execute(sql, params).lastrowid
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._failed(e) from None
        return rowid or 0

    def _failed(self, e: sqlite3.Error) -> Unavailable:
        """A write failed: roll back what is open; the error to answer with."""
        self.stats["failed_commits"] += 1
        try:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return Unavailable(f"the node's store can't write ({type(e).__name__}: {e})")

    def save_conversation(self, conv: Conversation, version: int) -> None:
        doc = orjson.dumps(conv.to_dict())
        key = self._key(conv.tenant, conv.id)
        if key is None:
            self._keys[(conv.tenant, conv.id)] = self._write_ahead(
                "INSERT INTO conversations (tenant, id, version, doc, visitor, state, agent, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conv.tenant, conv.id, version, doc, conv.visitor, conv.state, conv.agent, conv.created_ms))
        else:
            self._write_ahead("UPDATE conversations SET version = ?, doc = ?, state = ?, agent = ? WHERE key = ?",
                              (version, doc, conv.state, conv.agent, key))

    def save_sticky(self, tenant: str, visitor: str, agent: str) -> None:
        self._write_ahead("INSERT OR REPLACE INTO sticky VALUES (?, ?, ?)", (tenant, visitor, agent))

    def save_agent(self, agent: Agent, event: bytes | None = None) -> None:
        """The agent, and `event` (its `agent.status` webhook event, when its status changed) for the
        subscriptions that want it, in one transaction (store_outbox.py)."""
        doc = asdict(agent)
        doc.pop("load", None)  # the load is the agent's assigned conversations, counted at start
        save = ("INSERT OR REPLACE INTO agents VALUES (?, ?, ?)", (agent.tenant, agent.id, orjson.dumps(doc)))
        rows = self._outbox_rows_for(agent.tenant, "", 0, event) if event is not None else []
        if not rows:
            self._write_ahead(*save)
        else:
            self._write(save, *rows)

    def enqueue(self, tenant: str, group: str, conv_id: str, front: bool) -> None:
        # Position: before the first or after the last of the queue.
        pick = "MIN(pos) - 1" if front else "MAX(pos) + 1"
        self._write_ahead(f"INSERT OR IGNORE INTO queue SELECT ?, ?, ?, COALESCE((SELECT {pick} FROM queue "
                          "WHERE tenant = ? AND grp = ?), 0)", (tenant, group, conv_id, tenant, group))

    def dequeue(self, tenant: str, group: str, conv_id: str) -> None:
        self._write_ahead("DELETE FROM queue WHERE tenant = ? AND grp = ? AND conv = ?", (tenant, group, conv_id))

    # log entries: one commit per loop turn
    def add_entry(self, tenant: str, conv_id: str, seq: int, sender: str, client_id: str | None, body: bytes,
                  entry: PendingEntry) -> None:
        """An entry the dictionaries have just taken, written with this loop turn's others; `entry` is told
        which way it went (`settled`, or `undo`: it leaves the dictionaries again)."""
        if self._db is None:
            entry.undo()
            raise Unavailable("the node's store is closed (the node is stopping)")
        key = self._keys.get((tenant, conv_id)) or self._key(tenant, conv_id)
        if key is None:
            entry.undo()
            raise KeyError(conv_id)
        self._rows.append((key, seq, sender, client_id, body))
        self._pending.append(entry)
        self._outbox_add(tenant, conv_id, seq, body)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop.call_soon(self.commit)

    def when_durable(self, fn: Callable[..., None], args: tuple[Any, ...], failed: Callable[[Exception], None]) -> None:
        """Call `fn(*args)` once what was written so far is committed, or `failed(error)` if it can't be."""
        if self._rows:
            self._waiters.append((fn, args, failed))
        else:
            fn(*args)

    def commit(self) -> None:
        """Write and commit this turn's entries; answer their waiters (ok, or failed after the entries were taken back)."""
        self._scheduled = False
        db = self._db
        if not self._rows or db is None:
            return
        rows, self._rows = self._rows, []
        entries, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", rows)
            self._outbox_write(db)  # the events of these entries, in the same transaction
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._outbox_drop()
            err = self._failed(e)
            for entry in reversed(entries):  # the newest first: each is its log's last entry
                entry.undo()
            for _, _, failed in waiters:
                try:
                    failed(err)
                except Exception:  # one waiter's bug must not leave the others unanswered
                    log.exception("telling a waiter its entry was not stored failed")
            return
        self.stats["commits"] += 1
        self.stats["committed_entries"] += len(rows)
        if self._checkpointer is not None:
            self._checkpointer.note(len(rows))
        for entry in entries:  # readable now, before anyone is told (the waiters may read)
            entry.settled()
        for fn, args, _ in waiters:
            try:
                fn(*args)
            except Exception:  # one waiter's bug must not leave the others unanswered
                log.exception("answering a committed entry's waiter failed")

    # reads past what the dictionaries keep
    def conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        """A conversation as stored (with its version); None if there is none."""
        db = self._db
        if db is None:
            return None
        row = db.execute("SELECT version, doc FROM conversations WHERE tenant = ? AND id = ?", (tenant, conv_id)).fetchone()
        if row is None:
            return None
        c = Conversation.from_dict(orjson.loads(row[1]))
        c.version = row[0]
        return c

    def _key(self, tenant: str, conv_id: str) -> int | None:
        key = self._keys.get((tenant, conv_id))
        if key is None and self._db is not None:
            row = self._db.execute("SELECT key FROM conversations WHERE tenant = ? AND id = ?", (tenant, conv_id)).fetchone()
            key = row[0] if row else None
        return key

    def forget(self, tenant: str, conv_id: str) -> None:
        """The conversation left memory: its key is looked up from now on."""
        self._keys.pop((tenant, conv_id), None)

    def has(self, tenant: str, conv_id: str) -> bool:
        return self._key(tenant, conv_id) is not None

    def last_seq(self, tenant: str, conv_id: str) -> int:
        db = self._db
        key = self._key(tenant, conv_id)
        if db is None or key is None:
            return 0
        return db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries WHERE conv = ?", (key,)).fetchone()[0]

    def read(self, tenant: str, conv_id: str, after: int | None, before: int | None, limit: int,
             newest: bool) -> list[bytes]:
        """Entry bodies of `conv_id` with after < seq < before, oldest first; the newest `limit` if `newest`."""
        db = self._db
        key = self._key(tenant, conv_id)
        if db is None or key is None:
            return []
        order = "DESC" if newest else "ASC"
        rows = db.execute(f"SELECT body FROM entries WHERE conv = ? AND seq > ? AND seq < ? ORDER BY seq {order} LIMIT ?",
                          (key, -1 if after is None else after, 1 << 62 if before is None else before, limit)).fetchall()
        bodies = [r[0] for r in rows]
        return bodies[::-1] if newest else bodies

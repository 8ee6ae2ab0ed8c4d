"""Checkpoints of the store's WAL on a thread of their own (docs/store.md, step 4).

SQLite's automatic checkpoint runs inside the commit that crosses `wal_autocheckpoint` pages: it
copies the WAL into the database and syncs it, on the event loop's thread, which stalls every
connection of the node (the relay bench's p99 at a quarter of its peak was 10 ms with the store,
1.4 ms without). So the node's connection has automatic checkpoints off, and this thread, with its
own connection, runs a PASSIVE checkpoint (it never waits for or blocks the writer) once enough
entries were committed or a second has passed with some. sqlite3 releases the GIL while it works.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("gateway.store")

EVERY_ENTRIES = 2000  # about 1,000 WAL pages (SQLite's own default point) for small entries
EVERY_S = 1.0


class Checkpointer:
    """`note(n)` after each commit of `n` entries; `stop()` ends the thread (the node's close)."""

    def __init__(self, path: Path):
        self._path = path
        self._due = 0  # entries committed since the last checkpoint (written by the loop, read here)
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chatgw-store-checkpoint", daemon=True)
        self.checkpoints = 0
        self._thread.start()

    def note(self, entries: int) -> None:
        self._due += entries
        if self._due >= EVERY_ENTRIES:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(10)

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping:
                self._wake.wait(EVERY_S)
                self._wake.clear()
                if self._due and not self._stopping:
                    self._due = 0
                    try:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        self.checkpoints += 1
                    except sqlite3.Error as e:  # a full disk, say: the WAL keeps the data, tried again later
                        log.warning("store checkpoint failed (the WAL keeps everything; tried again): %s", e)
        finally:
            db.close()

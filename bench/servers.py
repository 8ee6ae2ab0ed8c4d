"""The servers under test: the gateway (`python -m gateway serve`) and the peers in bench/peers/.

Each runs as its own process under `bench.pinned` (open-file limit raised to the
hard limit, pinned to the server CPU), announces its port on stdout, and is
stopped with SIGTERM. Only loopback addresses are ever used.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen.net import assert_loopback_url
from gateway.server import banner_ports

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "peers" / "node"
HOST = "127.0.0.1"
START_DEADLINE_S = 60.0


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    protocol: str  # "gateway" (docs/protocol.md) or "echo"
    argv: Callable[[dict[str, Any]], list[str]]
    env: Callable[[dict[str, Any]], dict[str, str]] = lambda o: {}
    path: str = "/"
    note: str = ""


def _py(module: str, *extra: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda o: [sys.executable, "-m", module, "--host", HOST, "--port", "0", "--heartbeat", str(o["heartbeat_s"]), *extra]


def _gateway_env(o: dict[str, Any]) -> dict[str, str]:
    hb = o["heartbeat_s"]
    return {
        "GATEWAY_HOST": HOST,
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_WS_PORT": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_DRAIN_TIMEOUT_S": "0",  # the bench stops a node whose load has ended: no drain to wait for
        "GATEWAY_HEARTBEAT_S": str(hb),
        "GATEWAY_HEARTBEAT_TIMEOUT_S": str(max(hb, 10.0)),
        # The bench drives each connection far above a person's typing speed: no throttling.
        "GATEWAY_RATE_PER_S": "1000000000",
        "GATEWAY_RATE_BURST": "1000000000",
        "GATEWAY_AGENT_CAPACITY": "1000",
        # Humans only: conversations go straight to the queue (the bot scenario will measure bots).
        "GATEWAY_BOTS_ENABLED": "false",
    }


SERVERS: dict[str, ServerSpec] = {
    s.name: s
    for s in [
        ServerSpec("gateway", "gateway (chatgw)", "gateway", lambda o: [sys.executable, "-m", "gateway", "serve"], _gateway_env,
                   "/ws", "python -m gateway serve, embedded coordinator with its SQLite store (a fresh data dir), JSON envelopes"),
        ServerSpec("gateway_memory", "gateway (chatgw), --data-dir none", "gateway",
                   lambda o: [sys.executable, "-m", "gateway", "serve", "--data-dir", "none"], _gateway_env,
                   "/ws", "the embedded coordinator without its store (memory only): what the store costs"),
        ServerSpec("gateway_workers", "gateway (chatgw), serve --workers N over Redis", "gateway",
                   lambda o: [sys.executable, "-m", "gateway", "serve", "--workers", str(o["workers"])], _gateway_env, "/ws",
                   "N worker processes on the same ports (SO_REUSEPORT), Redis coordinator: the storm scenario"),
        ServerSpec("gateway_echo", "gateway /echo endpoint", "echo",
                   lambda o: [sys.executable, "-m", "gateway", "serve", "--echo", "--data-dir", "none"], _gateway_env, "/echo", "the gateway's own listener (Cython Connection on picows) without the hub: "
                   "separates the cost of the connection layer from the chat logic"),
        ServerSpec("picows", "picows echo (default 16 KiB read buffer)", "echo", _py("bench.peers.picows_echo"),
                   note="bare picows 2.3.1 on uvloop (aiofastnet transports, picows' default when installed), read_buffer_init_size=16 KiB"),
        ServerSpec("picows_1k", "picows echo (1 KiB read buffer)", "echo", _py("bench.peers.picows_echo", "--read-buffer", "1024"),
                   note="bare picows with the gateway's read buffer (1 KiB)"),
        ServerSpec("picows_uv", "picows echo (1 KiB, uvloop transport)", "echo",
                   _py("bench.peers.picows_echo", "--read-buffer", "1024", "--uvloop-transport"),
                   note="bare picows, 1 KiB read buffer, on uvloop's own TCP transport instead of aiofastnet's"),
        ServerSpec("websockets", "websockets echo", "echo", _py("bench.peers.websockets_echo"),
                   note="websockets asyncio server on uvloop"),
        ServerSpec("aiohttp", "aiohttp echo", "echo", _py("bench.peers.aiohttp_echo"),
                   note="aiohttp web.WebSocketResponse on uvloop"),
        ServerSpec("node", "Node ws echo", "echo", lambda o: ["node", str(NODE_DIR / "server.js")],
                   lambda o: {"PORT": "0", "HOST": HOST, "HEARTBEAT_S": str(o["heartbeat_s"])},
                   note="Node.js + ws (npm ci from bench/peers/node/package-lock.json)"),
    ]
}
DEFAULT_SERVERS = ["gateway", "gateway_memory", "gateway_echo", "picows", "picows_1k", "picows_uv", "websockets", "aiohttp", "node"]


def node_ready() -> str | None:
    """None when the Node peer can run (installing its locked deps if needed), else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed"
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        try:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True,
                           timeout=180, capture_output=True, text=True)
        except (subprocess.SubprocessError, OSError) as e:
            return f"npm ci failed: {e}"
    return None


def unavailable(name: str) -> str | None:
    if name not in SERVERS:
        return f"unknown server (known: {', '.join(SERVERS)})"
    if name == "node":
        return node_ready()
    return None


@dataclass
class Running:
    spec: ServerSpec
    proc: subprocess.Popen
    port: int
    http_port: int = 0
    secret: str = ""
    admin_token: str = ""
    output: list[str] = field(default_factory=list)
    data_dir: str | None = None  # made by `start` for an embedded node's store, removed by `stop`

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return assert_loopback_url(f"ws://{HOST}:{self.port}{self.spec.path}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def admin_stats(self) -> dict[str, Any] | None:
        """The gateway's /admin/stats (None for peers or when it does not answer)."""
        return self.admin("stats")

    def admin(self, path: str) -> dict[str, Any] | None:
        """GET /admin/<path> on the gateway with the admin token (None for peers or on failure)."""
        if not self.http_port:
            return None
        import json

        req = urllib.request.Request(f"http://{HOST}:{self.http_port}/admin/{path}",
                                     headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            if os.environ.get("CHATGW_PYSPY") and self.spec.protocol == "gateway":
                # py-spy writes its profile on SIGINT; the gateway in its group stops on it too.
                os.killpg(self.proc.pid, signal.SIGINT)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode


def start(name: str, opts: dict[str, Any], cpus: set[int] | None, env_extra: dict[str, str] | None = None) -> Running:
    """Start server `name`; return once it printed its port.

    `env_extra` wins over everything else (the bot and cluster scenarios: a config file, Redis, a shared secret).
    """
    spec = SERVERS[name]
    env = _env()
    env.update(spec.env(opts))
    secret = admin = ""
    if spec.protocol == "gateway":
        env.update(GATEWAY_JWT_SECRET=secrets.token_urlsafe(32), GATEWAY_ADMIN_TOKEN=secrets.token_urlsafe(32))
    env.update(env_extra or {})
    data_dir = None
    if spec.protocol == "gateway":
        secret, admin = env["GATEWAY_JWT_SECRET"], env["GATEWAY_ADMIN_TOKEN"]
        if "GATEWAY_DATA_DIR" not in env:  # an embedded node's store: fresh for each start, removed at stop
            data_dir = env["GATEWAY_DATA_DIR"] = tempfile.mkdtemp(prefix="chatgw-bench-")
    launcher = [sys.executable, "-m", "bench.pinned", "--cpus", ",".join(map(str, sorted(cpus or ()))), "--"]
    if spec.protocol == "gateway" and os.environ.get("CHATGW_PYSPY"):
        # Sample the gateway under the very load being measured: collapsed stacks for bench/profile_summary.py.
        out = Path(os.environ["CHATGW_PYSPY"]) / f"{name}-{time.strftime('%H%M%S')}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        launcher += ["py-spy", "record", "--native", "--rate", "250", "--format", "raw", "-o", str(out), "--"]
    proc = subprocess.Popen(launcher + spec.argv(opts), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    port = http_port = 0
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"^listening (\d+)", line):
            port = int(m.group(1))
        announced = banner_ports(line)
        port = announced.get("websocket", port)
        http_port = announced.get("http", http_port)
        if port and (spec.protocol != "gateway" or http_port):
            break
    if not port:
        proc.kill()
        proc.wait(5)
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"{name} did not start:\n" + "".join(lines[-20:]))
    run = Running(spec, proc, port, http_port, secret, admin, lines, data_dir=data_dir)
    # Keep draining its output so a chatty server never blocks on a full pipe (last 200 lines kept).

    def drain() -> None:
        for out in proc.stdout:
            run.output.append(out)
            del run.output[:-200]

    threading.Thread(target=drain, daemon=True).start()
    return run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class Aux:
    """A helper process of a scenario (the stand-in LLM server, redis-server): not a server under test."""

    name: str
    proc: subprocess.Popen
    port: int
    output: list[str] = field(default_factory=list)
    data_dir: str | None = None  # made by `start` for an embedded node's store, removed by `stop`

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_aux(name: str, argv: list[str], cpus: set[int] | None, ready: str, port: int = 0,
              deadline_s: float = 30.0) -> Aux:
    """Start a helper under bench.pinned (pinned, dies with the bench); wait for a line matching `ready`.

    A `(\\d+)` group in `ready` is the port it listens on (else `port`).
    """
    launcher = [sys.executable, "-m", "bench.pinned", "--cpus", ",".join(map(str, sorted(cpus or ()))), "--"]
    proc = subprocess.Popen(launcher + argv, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + deadline_s
    found = False
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(ready, line):
            found = True
            if m.groups():
                port = int(m.group(1))
            break
    if not found or not port:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"{name} did not start:\n" + "".join(lines[-20:]))
    aux = Aux(name, proc, port, lines)

    def drain() -> None:
        for out in proc.stdout:
            aux.output.append(out)
            del aux.output[:-200]

    threading.Thread(target=drain, daemon=True).start()
    return aux


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers that can't be told to pick one)."""
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]

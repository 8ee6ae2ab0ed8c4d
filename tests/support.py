"""Test harness: real gateway processes, real sockets, a small protocol client.

Nothing here stands in for a component of ours: the gateway runs as its own
process (`python -m gateway serve`) exactly as the README starts it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import orjson
import websockets

from gateway import auth
from gateway.server import banner_ports

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 10.0


@dataclass
class Gateway:
    proc: subprocess.Popen
    secret: str
    admin_token: str
    ws_port: int
    http_port: int
    env: dict[str, str]
    output: list[str] = field(default_factory=list)
    own_data_dir: str | None = None  # made for this node by start_gateway, removed by stop

    @property
    def data_dir(self) -> str:
        return self.env.get("GATEWAY_DATA_DIR", "")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def token(self, role: str, sub: str, tenant: str = "t1", **kw: Any) -> str:
        return auth.mint(self.secret, tenant=tenant, user=sub, role=role, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_data_dir:
            shutil.rmtree(self.own_data_dir, ignore_errors=True)


def start_gateway(**settings: Any) -> Gateway:
    """Start `python -m gateway serve` on free ports with the given GATEWAY_* settings."""
    secret = str(settings.pop("jwt_secret", None) or secrets.token_urlsafe(32))
    admin = secrets.token_urlsafe(32)
    env = dict(os.environ)
    if settings.pop("secret_in_env", True):  # False: the config file gives it (and a reload may rotate it)
        env["GATEWAY_JWT_SECRET"] = secret
    env.update(
        GATEWAY_ADMIN_TOKEN=admin,
        GATEWAY_HTTP_PORT="0",
        GATEWAY_WS_PORT="0",
        GATEWAY_LOG_LEVEL="warning",
        # A test's node stops (SIGTERM) with its clients still connected: closed at once, not after
        # a drain's deadline. The drain's own tests set it (tests/test_operations.py).
        GATEWAY_DRAIN_TIMEOUT_S="0",
        PYTHONUNBUFFERED="1",
    )
    # Bots answer first by default; most tests are about people, so they opt in (bots_enabled=true).
    env["GATEWAY_BOTS_ENABLED"] = "false"
    # Each node its own data directory (the embedded default keeps its state on disk), unless given.
    own = None
    if "data_dir" not in settings:
        own = env["GATEWAY_DATA_DIR"] = tempfile.mkdtemp(prefix="chatgw-data-")
    for k, v in settings.items():
        env["GATEWAY_CONFIG" if k == "config" else "PYTHONPATH" if k == "pythonpath" else f"GATEWAY_{k.upper()}"] = str(v)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        cwd="/",  # the compiled modules must import from anywhere
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(ports) < 2:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        ports.update(banner_ports(line))
    ws_port, http_port = ports.get("websocket", 0), ports.get("http", 0)
    if not (ws_port and http_port):
        proc.kill()
        if own:
            shutil.rmtree(own, ignore_errors=True)
        raise RuntimeError("gateway did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))
    gw = Gateway(proc, secret, admin, ws_port, http_port, env, lines, own)
    # Keep draining its output so a chatty node never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [gw.output.append(x) for x in proc.stdout], daemon=True).start()
    return gw


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Client:
    """A protocol client on the `websockets` library (an independent RFC 6455 implementation)."""

    def __init__(self, ws: Any, binary: bool):
        self.ws = ws
        self.binary = binary
        self.seen: list[dict[str, Any]] = []
        self._cursor = 0
        self._new = asyncio.Event()
        self.closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, gw: Gateway, role: str, sub: str, tenant: str = "t1", binary: bool = False,
                      welcome: bool = True, **claims: Any) -> Client:
        token = gw.token(role, sub, tenant, **claims)
        ws = await websockets.connect(f"{gw.ws_url}?v=1&token={token}", max_size=None, ping_interval=None)
        c = cls(ws, binary)
        if welcome:
            c.welcome = await c.next("welcome")
        return c

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                data = msgpack.unpackb(frame) if isinstance(frame, bytes) else orjson.loads(frame)
                for env in data if isinstance(data, list) else [data]:
                    self.seen.append(env)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result(rcvd.code if rcvd else None)
            self._new.set()

    async def send(self, env: dict[str, Any] | bytes | str) -> None:
        if isinstance(env, (bytes, str)):
            await self.ws.send(env)
        elif self.binary:
            await self.ws.send(msgpack.packb(env))
        else:
            await self.ws.send(orjson.dumps(env).decode())

    async def next(self, t: str | None = None, pred: Callable[[dict[str, Any]], bool] | None = None,
                   timeout: float = DEADLINE_S) -> dict[str, Any]:
        """The next unread envelope of kind `t` matching `pred`; earlier non-matching ones stay readable via `seen`."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._cursor, len(self.seen)):
                env = self.seen[i]
                if (t is None or env.get("t") == t) and (pred is None or pred(env)):
                    self._cursor = i + 1
                    return env
            if self.closed.done():
                raise AssertionError(f"connection closed ({self.closed.result()}) waiting for {t}; seen {self.seen[-5:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {t} envelope within {timeout}s; last seen: {self.seen[-8:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    def rewind(self) -> None:
        self._cursor = 0

    async def request(self, env: dict[str, Any], t: str | None = None) -> dict[str, Any]:
        rid = uuid.uuid4().hex[:8]
        await self.send({**env, "rid": rid})
        return await self.next(t, lambda e: e.get("rid") == rid)

    async def msg(self, conv: str, text: str, cid: str | None = None) -> dict[str, Any]:
        cid = cid or uuid.uuid4().hex
        await self.send({"t": "msg", "conv": conv, "id": cid, "text": text})
        return await self.next("ack", lambda e: e.get("id") == cid)

    def entries(self, conv: str) -> list[dict[str, Any]]:
        """Log entries (msg and event) received for `conv`, in arrival order."""
        return [e for e in self.seen if e.get("t") in ("msg", "event") and e.get("conv") == conv]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def scrape(gw: Gateway) -> str:
    """The node's /metrics text."""
    import urllib.request

    with urllib.request.urlopen(f"{gw.http_url}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, series: str) -> float:
    """The sum of every sample in `text` (/metrics) whose name and labels start with `series`
    ('x_total', 'x{role="agent"'...)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if not line.startswith("#") and line.startswith(series))


async def wait_for(pred: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition") -> Any:
    """Poll `pred` until it is truthy or the deadline passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)

"""The node: picows WebSocket server, HTTP side, hub and coordinator on one uvloop reactor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import re
import signal
from typing import Any
from urllib.parse import parse_qs

from picows import WSAutoPingStrategy, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSProtocol

from . import auth
from .config import Config
from .coordinator import make_coordinator
from .handshake import HandshakeError, check_upgrade
from .hub import Hub
from .listener import Connection, Limits
from .logs import PicowsLog, peer_of, refused_upgrade
from .logs import configure as configure_logs
from .memory_guard import MemoryGuard
from .metrics import METRICS
from .protocol import SUPPORTED_VERSIONS
from .reload import reload

log = logging.getLogger("gateway")


def _refuse(status: int, message: str, peer: str, extra: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
    """An upgrade answered with `status`: logged (one line), counted, and told why in the body."""
    refused_upgrade(status, message, peer)
    body = message.encode()
    headers = {"Content-Type": "text/plain; charset=utf-8", **(extra or {})}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="chatgw"'
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body, headers), None)


def _peer(proto: Any, request: WSUpgradeRequest) -> str:
    """Where an upgrade came from: the socket's peer, and X-Forwarded-For when a proxy set it (as
    the client sent it, so cut short and quoted: a log line must not carry what a client invents)."""
    peer = peer_of(proto.transport if proto is not None else None)
    forwarded = request.headers.get("X-Forwarded-For")
    return f"{peer} (forwarded for {forwarded[:100]!r})" if forwarded else peer


class Node:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.coord = make_coordinator(cfg)
        self.hub: Hub | None = None
        self.webhooks: Any = None  # webhooks.Sender, when the config has [[webhooks]]
        self.channels: Any = None  # channels.Channels, when the config has [[channels]]
        self.limits = Limits(cfg.max_frame, cfg.max_text, cfg.rate_per_s, cfg.rate_burst, cfg.flood_strikes, cfg.max_write_buffer)
        self.ws_server: asyncio.base_events.Server | None = None
        self.http_runner: Any = None
        self.ws_port = 0
        self.http_port = 0
        self.stopped = asyncio.Event()
        self.guard: MemoryGuard | None = None
        self.draining = False
        self.drained = asyncio.Event()  # set when a drain has finished (clients gone or deadline passed)
        self.last_reload: dict[str, Any] = {}  # what the last SIGHUP did (gateway/reload.py)

    def listener_factory(self, request: WSUpgradeRequest, proto: Any = None) -> Any:
        """Answer an upgrade request: handshake (400/426), path (404), draining or memory (503),
        protocol version (400), token (401). Every refusal is logged with the peer's address."""
        try:
            check_upgrade(request.headers)
        except HandshakeError as e:
            return _refuse(e.status, str(e), _peer(proto, request), e.headers)
        path, _, query = request.path.decode("latin-1").partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if path == "/echo" and self.cfg.echo_endpoint:
            return Connection(self.hub, self.limits, None, True)
        if path != "/ws":
            refused_upgrade(404, f"no endpoint {path[:200]!r}", _peer(proto, request))
            return None  # picows answers 404
        if self.draining or (self.guard is not None and self.guard.refusing):
            why = "node draining" if self.draining else "node low on memory"
            retry = str(1 + int(random.random() * max(1.0, self.cfg.drain_spread_s)))
            return _refuse(503, f"{why}: try again later (another node may take you)", _peer(proto, request),
                           {"Retry-After": retry})
        version = params.get("v", "1")
        if not version.isdigit() or int(version) not in SUPPORTED_VERSIONS:
            return _refuse(400, f"unsupported protocol version {version!r}; this node speaks {list(SUPPORTED_VERSIONS)}",
                           _peer(proto, request))
        token = params.get("token", "")
        header = request.headers.get("Authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        try:
            ident = auth.verify(token, self.cfg.keys, issuer=self.cfg.jwt_issuer, tenant=params.get("tenant"))
        except auth.AuthError as e:
            METRICS.auth_failures.inc()
            return _refuse(401, str(e), _peer(proto, request))
        return Connection(self.hub, self.limits, ident, False)

    def _protocol(self) -> Any:
        """picows' protocol for one accepted socket, as `ws_create_server` builds it (picows 2.3.1,
        pinned), but with a listener factory that also gets the protocol: a refused upgrade's log
        line names the peer's address, which picows does not hand the factory."""
        cfg = self.cfg
        proto: Any = None

        def factory(request: WSUpgradeRequest) -> Any:
            return self.listener_factory(request, proto)

        proto = WSProtocol(
            None, None, False, factory, self.picows_log,
            True,  # disconnect_on_exception
            5,  # websocket_handshake_timeout, s
            False, 10.0, 10.0, WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto ping: heartbeats run on the hub's wheel
            False,  # no auto pong: the listener answers pings, and none after a close (RFC 6455 5.5.1)
            cfg.max_frame, None, cfg.read_buffer,
        )
        return proto

    async def start(self) -> None:
        from .http import start_http  # aiohttp import is slow; keep it off the module import path

        await self.coord.start()
        self.hub = Hub(self.cfg, self.coord)
        await self.hub.start()
        if self.cfg.channels:
            from .channels import Channels

            self.channels = Channels(self, self.cfg.channels)
            await self.channels.start()
        if self.cfg.webhooks:
            from .webhooks import Sender, subscriptions

            subs = subscriptions(self.cfg.webhooks)
            if self.cfg.coordinator == "redis":  # the log is the outbox (webhooks_cluster.py)
                from .webhooks_cluster import CursorSender

                self.webhooks = CursorSender(self.coord, subs, self.cfg.webhook_sweep_s)
            else:
                self.webhooks = Sender(self.coord._store, subs)
            self.webhooks.start()
        self.picows_log = PicowsLog(self.cfg.log_connections)
        # uvloop's own transport (not aiofastnet's, which picows prefers when installed: ~5 KB more per
        # idle connection, bench/README.md idle scenario; chat is not bulk throughput).
        self.ws_server = await asyncio.get_running_loop().create_server(
            self._protocol, self.cfg.host, self.cfg.ws_port,
            # Shared ports only where nodes share state (workers over Redis): two embedded nodes on
            # one port would each serve part of the visitors from separate states.
            reuse_port=self.cfg.coordinator == "redis",
            backlog=4096,
        )
        self.ws_port = self.ws_server.sockets[0].getsockname()[1]
        self.http_runner, self.http_port = await start_http(self)

        hub = self.hub
        self.guard = MemoryGuard(self.cfg, hub.shed_memory, hub.lifecycle.close_idlest, lambda: len(hub.conns),
                                 asyncio.get_running_loop())
        self.guard.start()

    async def drain(self) -> None:
        """Leave without dropping anyone (docs/operations.md, "Drain"): readiness goes false and new
        upgrades get 503; every client is told to reconnect within `drain_spread_s` (a jittered
        `retry_ms` each); the node waits until they have gone or `drain_timeout_s` has passed.
        `stop` then closes whoever is left with 1001. Calling it again waits for the same drain."""
        if self.draining:
            await self.drained.wait()
            return
        self.draining = True
        METRICS.draining.set(1)
        told = self.hub.lifecycle.drain(self.cfg.drain_spread_s) if self.hub else 0
        log.warning("draining: %d connections told to reconnect within %.0f s; closing the rest after %.0f s",
                    told, self.cfg.drain_spread_s, self.cfg.drain_timeout_s)
        if self.ws_server is not None and self.cfg.coordinator == "redis":
            # Nodes share the port (SO_REUSEPORT): leave the group, so the kernel hands reconnects to
            # the others instead of to us for a 503. Open connections stay.
            self.ws_server.close()
        lifecycle = self.hub.lifecycle if self.hub else None
        if lifecycle is not None and lifecycle.sockets:
            lifecycle.emptied = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lifecycle.emptied.wait(), self.cfg.drain_timeout_s)
        log.warning("drained: %d connections left", lifecycle.sockets if lifecycle else 0)
        self.drained.set()

    def spawn_drain(self) -> None:
        """Start `drain` in the background (the admin call answers at once)."""
        spawn(self.drain())

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.channels is not None:
            await self.channels.stop()
        if self.hub:
            await self.hub.stop()
        if self.ws_server:
            self.ws_server.close()
        if self.http_runner:
            await self.http_runner.cleanup()
        await self.coord.close()
        self.stopped.set()

    def banner(self) -> str:
        cfg = self.cfg
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        lines = [
            f"chatgw node {cfg.node_id} ({cfg.env}, coordinator={cfg.coordinator})",
            f"  websocket  ws://{host}:{self.ws_port}/ws?v=1&token=...",
            f"  http       http://{host}:{self.http_port}/  (health /healthz, ready /readyz, metrics /metrics, admin /admin)",
        ]
        if cfg.demo:
            lines += [
                f"  demo       visitor http://{host}:{self.http_port}/visitor   agent http://{host}:{self.http_port}/agent",
                f"  dev token  curl 'http://{host}:{self.http_port}/api/dev/token?role=visitor&sub=alice'",
            ]
        if cfg.echo_endpoint:
            lines.append(f"  echo       ws://{host}:{self.ws_port}/echo (diagnostic, same listener path)")
        if "jwt_secret" in cfg.generated:
            lines.append("  jwt secret generated for this run (development only); set GATEWAY_JWT_SECRET to keep tokens valid")
        if "admin_token" in cfg.generated:
            lines.append(f"  admin token {cfg.admin_token}")
        if cfg.demo:
            for role, user in (("agent", "agent-1"), ("visitor", "visitor-1")):
                tok = auth.mint(cfg.jwt_secret, tenant=cfg.default_tenant, user=user, role=role, issuer=cfg.jwt_issuer)
                lines.append(f"  {role} token ({user}) {tok}")
        shown = {k: v for k, v in cfg.describe().items() if k not in ("host", "http_port", "ws_port", "node_id", "env")}
        lines.append("  settings   " + " ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


async def serve(cfg: Config, ready: Any = None) -> None:
    configure_logs(cfg.log_level, cfg.log_format)
    node = Node(cfg)
    await node.start()
    # Everything built so far (modules, FAQ index, config) lives as long as the process: move it out
    # of the collector's sight so full collections only scan what traffic creates.
    gc.collect()
    gc.freeze()
    print(node.banner(), flush=True)
    if ready is not None:
        ready(node)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    terms = 0

    def on_term() -> None:  # drain first; a second SIGTERM stops at once
        nonlocal terms
        terms += 1
        if terms > 1:
            stop.set()
        else:
            spawn(node.drain(), then=stop.set)

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload(node)))
    await stop.wait()
    await node.stop()


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Any, then: Any = None) -> None:
    """Run a signal's work as a task kept alive until done; `then()` after it, even if it failed."""
    task = asyncio.ensure_future(coro)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("%s failed", coro.__qualname__, exc_info=t.exception())
        if then is not None:
            then()

    task.add_done_callback(done)


_BANNER_PORT = re.compile(r"^\s+(websocket|http)\s+\w+://[^:/]+:(\d+)/")


def banner_ports(line: str) -> dict[str, int]:
    """The port a banner line announces, as {"websocket": N} or {"http": N}; {} for other lines.

    For programs that start a node and need its ports (tests, bench) when it was given port 0.
    """
    m = _BANNER_PORT.match(line)
    return {m.group(1): int(m.group(2))} if m else {}

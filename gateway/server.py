"""The node: picows WebSocket server, HTTP side, hub and coordinator on one uvloop reactor."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
from typing import Any
from urllib.parse import parse_qs

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

from . import auth
from .config import Config
from .coordinator import make_coordinator
from .handshake import HandshakeError, check_upgrade
from .hub import Hub
from .listener import Connection, Limits
from .metrics import METRICS
from .protocol import SUPPORTED_VERSIONS

log = logging.getLogger("gateway")


def _refuse(status: int, message: str, extra: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
    body = message.encode()
    headers = {"Content-Type": "text/plain; charset=utf-8", **(extra or {})}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="chatgw"'
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body, headers), None)


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

    def listener_factory(self, request: WSUpgradeRequest) -> Any:
        """Answer an upgrade request: handshake (400/426), path (404), protocol version (400), token (401)."""
        try:
            check_upgrade(request.headers)
        except HandshakeError as e:
            return _refuse(e.status, str(e), e.headers)
        path, _, query = request.path.decode("latin-1").partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if path == "/echo" and self.cfg.echo_endpoint:
            return Connection(self.hub, self.limits, None, True)
        if path != "/ws":
            return None  # picows answers 404
        version = params.get("v", "1")
        if not version.isdigit() or int(version) not in SUPPORTED_VERSIONS:
            return _refuse(400, f"unsupported protocol version {version!r}; this node speaks {list(SUPPORTED_VERSIONS)}")
        token = params.get("token", "")
        header = request.headers.get("Authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        try:
            ident = auth.verify(token, self.cfg.jwt_secret, issuer=self.cfg.jwt_issuer, tenant=params.get("tenant"))
        except auth.AuthError as e:
            METRICS.auth_failures.inc()
            return _refuse(401, str(e))
        return Connection(self.hub, self.limits, ident, False)

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
        self.ws_server = await ws_create_server(
            self.listener_factory,
            self.cfg.host,
            self.cfg.ws_port,
            max_frame_size=self.cfg.max_frame,
            read_buffer_init_size=self.cfg.read_buffer,
            websocket_handshake_timeout=5,
            enable_auto_ping=False,  # heartbeats run on the hub's timing wheel: no task per connection
            enable_auto_pong=False,  # the listener answers pings, and none after a close (RFC 6455 5.5.1)
            disconnect_on_exception=True,
            # Shared ports only where nodes share state (workers over Redis): two embedded nodes on
            # one port would each serve part of the visitors from separate states.
            reuse_port=self.cfg.coordinator == "redis",
            backlog=4096,
            # uvloop's own transport: aiofastnet's (picows' default when installed) costs ~5 KB more
            # per idle connection (bench/README.md, idle scenario), and chat is not bulk throughput.
            use_aiofastnet=False,
            # A LoggerAdapter, not a Logger: for a Logger picows builds a child Logger per
            # connection (about 500 bytes, idle connections included); an adapter is shared.
            logger_name=logging.LoggerAdapter(logging.getLogger("picows.server"), {}),
        )
        self.ws_port = self.ws_server.sockets[0].getsockname()[1]
        self.http_runner, self.http_port = await start_http(self)

    async def stop(self) -> None:
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()


_BANNER_PORT = re.compile(r"^\s+(websocket|http)\s+\w+://[^:/]+:(\d+)/")


def banner_ports(line: str) -> dict[str, int]:
    """The port a banner line announces, as {"websocket": N} or {"http": N}; {} for other lines.

    For programs that start a node and need its ports (tests, bench) when it was given port 0.
    """
    m = _BANNER_PORT.match(line)
    return {m.group(1): int(m.group(2))} if m else {}

"""The node's log lines: text or JSON, quiet per connection, client faults told apart from ours.

- `configure(level, fmt)`: text lines, or one JSON object per line (python-json-logger) carrying
  the `extra` fields a call gives (tenant, conv, user, cid, peer...).
- `PicowsLog`: the logger picows is given. picows logs two INFO lines per connection (accepted,
  disconnected) and a client's bad frame at ERROR; here the first go to DEBUG and the second to
  `gateway.clients` as a client fault, rate limited. Its other lines pass unchanged.
- `refused_upgrade`: one line per refused upgrade (status, reason, address), rate limited.
- `client_fault`: a connection closed for breaking the protocol, as a client fault.

Rate limits are a token bucket per logger (`RateLimit`): a flood of bad clients can't fill the
disk, and the first line after a quiet spell says how many were left out. Every fault is counted
in metrics whether or not its line is written.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from .metrics import METRICS

CLIENTS = logging.getLogger("gateway.clients")
UPGRADES = logging.getLogger("gateway.upgrades")

# What picows says per connection, by the start of its format string.
_PER_CONNECTION = ("New connection accepted", "Disconnected", "Protocol writing pause", "Protocol writing resume")
# What picows says when a client broke the protocol or the handshake (not a fault of the node).
_CLIENT_FAULTS = {
    "WS parser error": "protocol",
    "on_ws_frame raised WSProtocolError": "protocol",
    "Handshake timeout": "handshake_timeout",
    "Disconnect because HTTP request violated max_size": "oversize_request",
}


class RateLimit(logging.Filter):
    """Let through at most `burst` lines, refilled at `per_s` lines per second; count the rest.

    The first line let through after some were dropped gets ` (N similar lines left out)` appended.
    """

    def __init__(self, per_s: float = 5.0, burst: float = 50.0) -> None:
        super().__init__()
        self.per_s, self.burst = per_s, burst
        self._tokens = burst
        self._at = time.monotonic()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens < 1.0:
            self.dropped += 1
            return False
        self._tokens -= 1.0
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} similar lines left out)"
            self.dropped = 0
        return True


CLIENTS.addFilter(RateLimit())
UPGRADES.addFilter(RateLimit())


class PicowsLog(logging.LoggerAdapter):
    """The logger handed to picows (`logger_name=`): one object for all connections.

    A LoggerAdapter, not a Logger: for a Logger picows builds a child Logger per connection
    (about 500 bytes each, idle connections included).
    """

    def __init__(self, log_connections: bool = False) -> None:
        super().__init__(logging.getLogger("picows.server"), {})
        self.log_connections = log_connections

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        text = msg if isinstance(msg, str) else ""
        if level in (logging.INFO, logging.WARNING) and text.startswith(_PER_CONNECTION):
            self.logger.log(logging.INFO if self.log_connections else logging.DEBUG, msg, *args, **kwargs)
            return
        for prefix, kind in _CLIENT_FAULTS.items():
            if text.startswith(prefix):
                METRICS.client_faults.labels(kind).inc()
                kwargs.pop("exc_info", None)
                CLIENTS.info("client fault (%s): " + text, kind, *args, extra={"fault": kind}, **kwargs)
                return
        self.logger.log(level, msg, *args, **kwargs)


def peer_of(transport: Any) -> str:
    """`host:port` of a picows WSTransport's peer; "?" when there is none (gone, a Unix socket)."""
    try:
        host, port = transport.underlying_transport.get_extra_info("peername")[:2]
    except Exception:  # noqa: BLE001 - the line still gets written
        return "?"
    return f"{host}:{port}"


def refused_upgrade(status: int, reason: str, peer: str) -> None:
    """One line for an upgrade answered with `status` (4xx/5xx): why, and from where."""
    METRICS.upgrades_refused.labels(str(status)).inc()
    UPGRADES.info("upgrade refused %d from %s: %s", status, peer, reason,
                  extra={"status": status, "peer": peer, "reason": reason})


def client_fault(kind: str, code: int, reason: str, tenant: str | None, user: str | None, cid: int,
                 peer: str) -> None:
    """A connection closed with `code` because its client broke the protocol (or flooded)."""
    METRICS.client_faults.labels(kind).inc()
    CLIENTS.info("client fault (%s): closed %s/%s (cid %d, %s) with %d: %s", kind, tenant, user, cid, peer, code,
                 reason, extra={"fault": kind, "tenant": tenant, "user": user, "cid": cid, "peer": peer})


def configure(level: str, fmt: str = "text") -> None:
    """Set up the root logger once at start, and again (level only) on a reload. (The bot worker
    gets the same settings in its environment: hub.py.)"""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if getattr(configure, "done", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    configure.done = True  # type: ignore[attr-defined]

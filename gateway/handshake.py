"""The server's side of the RFC 6455 opening handshake (sections 4.2.1 and 4.2.2).

picows 2.3.1 checks the upgrade request itself, but only after our listener
factory has run, and in three ways not as the RFC says: it wants `Connection`
to *equal* `upgrade` where the RFC asks for a comma-separated list that
*includes* the token (Firefox sends `Connection: keep-alive, Upgrade`); it
refuses an unknown `Sec-WebSocket-Version` without naming the version it
speaks (section 4.4 requires the header); and it accepts the drafts' versions 7
and 8 and requests without `Host`. So the factory runs `check_upgrade` first:
every MUST of section 4.2.1 is checked here, a request that fails gets its
status and headers, and one that passes has the two headers picows compares
rewritten to their canonical values, so picows' own check agrees with ours.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import MutableMapping
from typing import Any

WS_VERSION = "13"


class HandshakeError(Exception):
    """An upgrade request the server must refuse: `status` and the `headers` to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _values(headers: Any, name: str) -> list[str]:
    """Every value of header `name` (all its lines), as the raw strings."""
    return list(headers.getall(name, ()))


def _tokens(headers: Any, name: str) -> set[str]:
    """The comma-separated tokens of every `name` line, lower-cased (RFC 7230 section 7 list syntax)."""
    return {t.strip().lower() for v in _values(headers, name) for t in v.split(",") if t.strip()}


def check_upgrade(headers: MutableMapping[str, str]) -> None:
    """Check an upgrade request's headers against RFC 6455 section 4.2.1; canonicalise them if they pass.

    `headers` is picows' case-insensitive multidict (`WSUpgradeRequest.headers`); the method (GET)
    and HTTP version (1.1) were already checked by picows' request parser.

    Raises HandshakeError(400) for a missing or malformed `Host`, `Upgrade`, `Connection` or
    `Sec-WebSocket-Key`, and HandshakeError(426, with `Sec-WebSocket-Version: 13`) for any
    version other than 13 (section 4.4).
    """
    hosts = _values(headers, "Host")
    if len(hosts) != 1 or not hosts[0].strip():
        raise HandshakeError(400, "the request needs exactly one Host header (RFC 6455 4.2.1 item 2)")
    if "websocket" not in {t.split("/", 1)[0].strip() for t in _tokens(headers, "Upgrade")}:
        raise HandshakeError(400, "the Upgrade header must include 'websocket' (RFC 6455 4.2.1 item 3)")
    if "upgrade" not in _tokens(headers, "Connection"):
        raise HandshakeError(400, "the Connection header must include the token 'Upgrade' (RFC 6455 4.2.1 item 4)")
    keys = _values(headers, "Sec-WebSocket-Key")
    try:
        valid_key = len(keys) == 1 and len(b64decode(keys[0].strip().encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "Sec-WebSocket-Key must be one base64-encoded 16-byte value (RFC 6455 4.2.1 item 5)")
    versions = _values(headers, "Sec-WebSocket-Version")
    if [v.strip() for v in versions] != [WS_VERSION]:
        got = ", ".join(versions) or "none"
        raise HandshakeError(
            426,
            f"unsupported WebSocket version {got}; this server speaks {WS_VERSION} (RFC 6455 4.4)",
            # RFC 7231 6.5.15: a 426 names the protocol to upgrade to.
            {"Sec-WebSocket-Version": WS_VERSION, "Upgrade": "websocket"},
        )
    # What picows compares literally; the request means exactly this once the checks above pass.
    headers["Upgrade"] = "websocket"
    headers["Connection"] = "Upgrade"
    headers["Sec-WebSocket-Key"] = keys[0].strip()
    headers["Sec-WebSocket-Version"] = WS_VERSION

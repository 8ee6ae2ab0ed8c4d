"""The opening handshake against RFC 6455 sections 4.2.1, 4.2.2 and 4.4, table-driven, on raw sockets.

Each browser row is that browser's upgrade request header for header (captured from the
browser, the key and addresses aside); the other rows break one MUST of the RFC at a time.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from .wsraw import RawWS

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

# Debian's firefox-esr 153, captured; earlier Firefox releases send `Connection: keep-alive, Upgrade`.
FIREFOX = [
    ("Host", "{host}"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:153.0) Gecko/20100101 Firefox/153.0"),
    ("Accept", "*/*"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Sec-WebSocket-Version", "13"),
    ("Origin", "http://127.0.0.1:8080"),
    ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ("Sec-WebSocket-Key", "{key}"),
    ("Connection", "Upgrade"),
    ("Sec-Fetch-Dest", "empty"),
    ("Sec-Fetch-Mode", "websocket"),
    ("Sec-Fetch-Site", "same-site"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("Upgrade", "websocket"),
]
CHROMIUM = [
    ("Host", "{host}"),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"),
    ("Upgrade", "websocket"),
    ("Origin", "http://127.0.0.1:8080"),
    ("Sec-WebSocket-Version", "13"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Sec-WebSocket-Key", "{key}"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
]
SAFARI = [
    ("Host", "{host}"),
    ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ("Sec-WebSocket-Key", "{key}"),
    ("Sec-WebSocket-Version", "13"),
    ("Upgrade", "websocket"),
    ("Origin", "http://127.0.0.1:8080"),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("User-Agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate"),
]
MINIMAL = [
    ("Host", "{host}"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "{key}"),
    ("Sec-WebSocket-Version", "13"),
]


def _with(base: list[tuple[str, str]], **changes: str | list[str] | None) -> list[tuple[str, str]]:
    """`base` with headers replaced (a list value: one line each), or dropped (None)."""
    names = {k.replace("_", "-").lower(): v for k, v in changes.items()}
    out = [(k, v) for k, v in base if k.lower() not in names]
    for name, value in names.items():
        canonical = next((k for k, _ in base if k.lower() == name), name.title())
        for v in [] if value is None else value if isinstance(value, list) else [value]:
            out.append((canonical, v))
    return out


ACCEPTED = {
    "firefox": FIREFOX,
    "firefox with keep-alive": _with(FIREFOX, connection="keep-alive, Upgrade"),
    "chromium": CHROMIUM,
    "safari": SAFARI,
    "minimal": MINIMAL,
    "connection lower case": _with(MINIMAL, connection="upgrade"),
    "connection with other tokens": _with(MINIMAL, connection="Upgrade, HTTP2-Settings"),
    "connection on two lines": _with(MINIMAL, connection=["keep-alive", "Upgrade"]),
    "connection with odd spacing": _with(MINIMAL, connection="keep-alive ,UPGRADE"),
    "upgrade mixed case": _with(MINIMAL, upgrade="WebSocket"),
    "upgrade list": _with(MINIMAL, upgrade="websocket, h2c"),
}

REFUSED = {
    # section 4.2.1: each MUST, broken alone -> 400
    "no host": (_with(MINIMAL, host=None), 400),
    "two hosts": (_with(MINIMAL, host=["a.example", "b.example"]), 400),
    "no upgrade": (_with(MINIMAL, upgrade=None), 400),
    "upgrade to another protocol": (_with(MINIMAL, upgrade="h2c"), 400),
    "no connection": (_with(MINIMAL, connection=None), 400),
    "connection without upgrade": (_with(MINIMAL, connection="keep-alive"), 400),
    "connection token is only a prefix": (_with(MINIMAL, connection="upgrades"), 400),
    "no key": (_with(MINIMAL, sec_websocket_key=None), 400),
    "key not base64": (_with(MINIMAL, sec_websocket_key="not base64!"), 400),
    "key of 15 bytes": (_with(MINIMAL, sec_websocket_key=base64.b64encode(b"x" * 15).decode()), 400),
    "two keys": (_with(MINIMAL, sec_websocket_key=["{key}", "{key}"]), 400),
    # section 4.4: a version we don't speak -> 426 naming ours
    "version 12": (_with(MINIMAL, sec_websocket_version="12"), 426),
    "version 8 (draft)": (_with(MINIMAL, sec_websocket_version="8"), 426),
    "no version": (_with(MINIMAL, sec_websocket_version=None), 426),
    "two versions": (_with(MINIMAL, sec_websocket_version="13, 8"), 426),
}


def _request(headers: list[tuple[str, str]], target: str, host: str, key: str,
             method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    lines += [f"{k}: {v.format(host=host, key=key)}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _headers(head: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), []).append(v.strip())
    return out


async def _send(gateway, headers, target: str | None = None, **kw) -> tuple[RawWS | None, int, dict[str, list[str]], str]:
    key = base64.b64encode(os.urandom(16)).decode()
    if target is None:
        target = f"/ws?v=1&token={gateway.token('visitor', 'hs-' + key[:6])}"
    host = f"127.0.0.1:{gateway.ws_port}"
    ws, status, head = await RawWS.upgrade("127.0.0.1", gateway.ws_port, _request(headers, target, host, key, **kw))
    return ws, status, _headers(head), key


@pytest.mark.parametrize("name", list(ACCEPTED))
async def test_accepted_upgrade_gets_a_correct_101(gateway, name):
    ws, status, headers, key = await _send(gateway, ACCEPTED[name])
    assert status == 101, headers
    # section 4.2.2, item 5
    assert [v.lower() for v in headers["upgrade"]] == ["websocket"]
    assert "upgrade" in {t.strip().lower() for v in headers["connection"] for t in v.split(",")}
    assert headers["sec-websocket-accept"] == [base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()]
    # No extension or subprotocol is agreed unless we chose one (we choose none).
    assert "sec-websocket-extensions" not in headers and "sec-websocket-protocol" not in headers
    op, payload = await ws.read_frame()
    assert op == 0x1 and b'"welcome"' in payload
    ws.close()


@pytest.mark.parametrize("name", list(REFUSED))
async def test_refused_upgrade_gets_the_rfc_status(gateway, name):
    headers, want = REFUSED[name]
    ws, status, answer, _ = await _send(gateway, headers)
    assert ws is None and status == want, answer
    if want == 426:
        assert answer["sec-websocket-version"] == ["13"]
        assert [v.lower() for v in answer["upgrade"]] == ["websocket"]


async def test_requested_subprotocol_is_not_echoed(gateway):
    ws, status, headers, _ = await _send(gateway, _with(MINIMAL, sec_websocket_protocol="chat, superchat"))
    assert status == 101 and "sec-websocket-protocol" not in headers
    ws.close()


@pytest.mark.parametrize("method, version", [("POST", "HTTP/1.1"), ("GET", "HTTP/1.0")])
async def test_not_a_get_of_http11_is_refused(gateway, method, version):
    ws, status, _, _ = await _send(gateway, MINIMAL, method=method, version=version)
    assert ws is None and status == 400


async def test_handshake_is_checked_before_path_and_token(gateway):
    """A broken handshake is a 400 whatever else is wrong; a good one then meets 404 / 400 / 401."""
    assert (await _send(gateway, _with(MINIMAL, connection="close"), target="/nowhere"))[1] == 400
    assert (await _send(gateway, _with(MINIMAL, sec_websocket_version="12"), target="/ws?v=1&token=bad"))[1] == 426
    firefox = ACCEPTED["firefox with keep-alive"]
    assert (await _send(gateway, firefox, target="/nowhere"))[1] == 404
    assert (await _send(gateway, firefox, target="/ws?v=2&token=x"))[1] == 400
    assert (await _send(gateway, firefox, target="/ws?v=1&token=bad"))[1] == 401


async def test_a_half_open_upgrade_is_closed(gateway):
    """An upgrade that never completes does not hold its socket (docs/protocol.md: 5 s to upgrade)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ws_port)
    writer.write(b"GET /ws?v=1 HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), 30) == b""  # EOF: the server closed it
    writer.close()

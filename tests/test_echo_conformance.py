"""The diagnostic /echo endpoint: the production listener and framing path, checked against RFC 6455.

These are the Autobahn-style cases that matter for this gateway, sent with a raw
client; a full third-party suite can be pointed at `./dev serve --echo` too.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from .wsraw import RawWS


@pytest.fixture(scope="module")
def echo_gw():
    from .support import start_gateway

    gw = start_gateway(echo_endpoint="true")
    yield gw
    gw.stop()


async def echo(gw) -> RawWS:
    ws, status, head = await RawWS.connect("127.0.0.1", gw.ws_port, "/echo")
    assert status == 101, head
    return ws


async def next_data(ws: RawWS) -> tuple[int, bytes]:
    while True:
        op, payload = await asyncio.wait_for(ws.read_frame(), 10)
        if op in (0x1, 0x2, 0x8, 0xA):
            return op, payload


async def test_echo_is_off_by_default(gateway):
    ws, status, _ = await RawWS.connect("127.0.0.1", gateway.ws_port, "/echo")
    assert ws is None and status == 404


async def test_text_binary_and_fragmented_messages_echo(echo_gw):
    ws = await echo(echo_gw)
    ws.send_frame(0x1, "héllo ✓".encode())
    assert await next_data(ws) == (0x1, "héllo ✓".encode())
    ws.send_frame(0x2, bytes(range(256)))
    assert await next_data(ws) == (0x2, bytes(range(256)))
    ws.send_frame(0x1, b"frag", fin=False)
    ws.send_frame(0x9, b"interleaved ping")
    ws.send_frame(0x0, "mented ✓".encode(), fin=True)
    assert await next_data(ws) == (0xA, b"interleaved ping")
    assert await next_data(ws) == (0x1, "fragmented ✓".encode())
    ws.send_frame(0x1, b"")
    assert await next_data(ws) == (0x1, b"")


async def test_every_length_encoding_echoes_exactly(echo_gw):
    # The 7-bit, 16-bit and 64-bit length forms, at their edges: our frames are sent from a
    # fresh buffer with header room (listener._send), not through picows' own buffer.
    ws = await echo(echo_gw)
    for n in (0, 1, 125, 126, 127, 65535, 65536):
        payload = bytes(i % 251 for i in range(n))
        ws.send_frame(0x2, payload)
        assert await next_data(ws) == (0x2, payload), n
    ws.send_frame(0x1, b"small again")  # after the big ones
    assert await next_data(ws) == (0x1, b"small again")


async def test_utf8_split_across_fragments_is_valid(echo_gw):
    ws = await echo(echo_gw)
    data = "κόσμε".encode()
    ws.send_frame(0x1, data[:3], fin=False)
    ws.send_frame(0x0, data[3:], fin=True)
    assert await next_data(ws) == (0x1, data)


@pytest.mark.parametrize(
    "frames, code",
    [
        ([(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", True, 0)], 1007),  # surrogate
        ([(0x1, b"ok", False, 0), (0x0, b"\xff", True, 0)], 1007),
        ([(0x1, b"x", True, 2)], 1002),  # RSV2
        ([(0x2, b"x", True, 1)], 1002),  # RSV3
        ([(0xB, b"", True, 0)], 1002),  # reserved control opcode
        ([(0x0, b"x", True, 0)], 1002),
        ([(0x2, b"a", False, 0), (0x2, b"b", True, 0)], 1002),
        ([(0x9, b"x" * 126, True, 0)], 1002),  # control frame too long
        ([(0x9, b"x", False, 0)], 1002),  # fragmented control frame
    ],
)
async def test_violations_close_with_rfc_code(echo_gw, frames, code):
    ws = await echo(echo_gw)
    for op, payload, fin, rsv in frames:
        ws.send_frame(op, payload, fin=fin, rsv=rsv)
    assert await asyncio.wait_for(ws.read_until_close(), 10) == code


@pytest.mark.parametrize(
    "payload, answer",
    [
        (b"", 1000),
        (struct.pack("!H", 1000) + b"bye", 1000),
        (struct.pack("!H", 3001), 3001),
        (struct.pack("!H", 4999), 4999),
        (b"\x03", 1002),  # one-byte close payload
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),  # reserved: must not be sent on the wire
        (struct.pack("!H", 1006), 1002),
        (struct.pack("!H", 2000), 1002),
        (struct.pack("!H", 1000) + b"\xff\xfe", 1007),
    ],
)
async def test_close_handshake_validates_code_and_reason(echo_gw, payload, answer):
    ws = await echo(echo_gw)
    ws.send_frame(0x8, payload)
    assert await asyncio.wait_for(ws.read_until_close(), 10) == answer


async def test_unmasked_client_frame_is_a_protocol_error(echo_gw):
    ws = await echo(echo_gw)
    ws.send_frame(0x1, b"no mask", mask=False)
    assert await asyncio.wait_for(ws.read_until_close(), 10) == 1002


async def _frames_until_eof(ws: RawWS) -> list[tuple[int, bytes]]:
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(ws.read_frame(), 10))
    except (asyncio.IncompleteReadError, ConnectionError):
        return frames


@pytest.mark.parametrize("together", [True, False], ids=["one write", "two writes"])
async def test_second_close_frame_is_ignored(echo_gw, together):
    """Autobahn 7.1.2: after its close, a peer's second close is neither answered nor an error."""
    ws = await echo(echo_gw)
    ws.send_frame(0x8, struct.pack("!H", 1000) + b"first")
    if not together:
        await ws.writer.drain()
    ws.send_frame(0x8, struct.pack("!H", 1000) + b"second")
    frames = await _frames_until_eof(ws)
    assert [(op, p[:2]) for op, p in frames] == [(0x8, struct.pack("!H", 1000))]


async def test_data_after_close_is_not_echoed(echo_gw):
    """Autobahn 7.1.3/7.1.4: nothing the peer sends after its close is acted on."""
    ws = await echo(echo_gw)
    ws.send_frame(0x8, struct.pack("!H", 1000))
    ws.send_frame(0x1, b"too late")
    ws.send_frame(0x9, b"ping too late")
    frames = await _frames_until_eof(ws)
    assert [op for op, _ in frames] == [0x8]

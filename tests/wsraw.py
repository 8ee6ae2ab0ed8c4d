"""A raw RFC 6455 client for sending frames no well-behaved library would send."""

from __future__ import annotations

import asyncio
import base64
import os
import struct


class RawWS:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str, rcvbuf: int | None = None) -> tuple[RawWS | None, int, bytes]:
        """Upgrade with the minimal RFC 6455 request. Returns (client or None, HTTP status, raw response head)."""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        return await cls.upgrade(host, port, request, rcvbuf)

    @classmethod
    async def upgrade(cls, host: str, port: int, request: bytes, rcvbuf: int | None = None) -> tuple[RawWS | None, int, bytes]:
        """Send `request` (a whole HTTP request head) as it is; same answer as `connect`."""
        import socket

        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            return None, status, head + await reader.read(4096)
        return cls(reader, writer), status, head

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True) -> None:
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
            head += key
        self.writer.write(head + payload)

    async def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_until_close(self) -> int | None:
        """Read frames until a close frame (returns its code) or EOF (returns None)."""
        try:
            while True:
                op, payload = await self.read_frame()
                if op == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def close(self) -> None:
        self.writer.close()

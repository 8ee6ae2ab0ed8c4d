"""The protocol's version, its error, and encoding (docs/protocol.md is the contract).

What a client sends is declared and decoded in gateway/envelopes.py, what the server sends
in gateway/replies.py. Encoding is done once per envelope and format (`Outgoing`), however
many connections the envelope goes to.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .replies import Error

VERSION = 1
SUPPORTED_VERSIONS = (1,)


class ProtocolError(Exception):
    """An envelope the server can't act on; becomes an `error` frame, the connection stays."""

    def __init__(self, code: str, message: str, field: str | None = None, rid: Any = None, *, seq: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.rid = rid
        self.seq = seq  # the log's last seq, for a cursor past the end

    def envelope(self) -> Error:
        return Error(code=self.code, message=self.message, field=self.field or None, seq=self.seq, rid=self.rid)


_json_encode = msgspec.json.Encoder().encode
_msgpack_encode = msgspec.msgpack.Encoder().encode


class Outgoing:
    """One server envelope, encoded lazily once per wire format and shared by all recipients.

    `env` is a reply Struct (gateway/replies.py) or a log entry (a map); msgspec encodes both.
    """

    __slots__ = ("env", "_json", "_msgpack")

    def __init__(self, env: Any, json: bytes | None = None):
        self.env = env
        self._json: bytes | None = json  # when the caller already has `env` encoded (the embedded log)
        self._msgpack: bytes | None = None

    def json(self) -> bytes:
        if self._json is None:
            self._json = _json_encode(self.env)
        return self._json

    def msgpack(self) -> bytes:
        if self._msgpack is None:
            self._msgpack = _msgpack_encode(self.env)
        return self._msgpack


class EncodedEntry(Outgoing):
    """A log entry that arrived from another node already encoded for JSON clients.

    `env` is only its routing head ({t, conv, seq}: what delivery reads); the JSON is written as
    it came, and the whole entry is decoded only for a msgpack client.
    """

    __slots__ = ()

    def __init__(self, head: dict[str, Any], json: bytes):
        super().__init__(head, json)

    def msgpack(self) -> bytes:
        if self._msgpack is None:
            self._msgpack = _msgpack_encode(_json_decode(self._json))
        return self._msgpack


_json_decode = msgspec.json.decode


def msgpack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")

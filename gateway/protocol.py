"""Envelope schema, validation and encoding (docs/protocol.md is the contract).

Validation happens once, at the edge, so every handler behind it can trust the
fields it reads. Encoding is done once per envelope and format (`Outgoing`),
however many connections the envelope goes to.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_ID = 128
MAX_ATTACHMENTS = 10


class ProtocolError(Exception):
    """An envelope the server can't act on; becomes an `error` frame, the connection stays."""

    def __init__(self, code: str, message: str, field: str | None = None, rid: Any = None, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.rid = rid
        self.extra = extra  # more fields of the error envelope (e.g. `seq` for a resume past the end)

    def envelope(self) -> dict[str, Any]:
        env: dict[str, Any] = {"t": "error", "code": self.code, "message": self.message, **self.extra}
        if self.field:
            env["field"] = self.field
        if self.rid is not None:
            env["rid"] = self.rid
        return env


def _str(maxlen: int, minlen: int = 1):
    def check(v: Any) -> bool:
        return isinstance(v, str) and minlen <= len(v) <= maxlen
    check.__doc__ = f"a string of {minlen}..{maxlen} characters"
    return check


def _int(lo: int, hi: int):
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    check.__doc__ = f"an integer {lo}..{hi}"
    return check


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


_bool.__doc__ = "true or false"


def _meta(v: Any) -> bool:
    return isinstance(v, dict) and len(v) <= 32 and all(isinstance(k, str) and len(k) <= 64 for k in v)


_meta.__doc__ = "a map of at most 32 short string keys"


def _attachments(v: Any) -> bool:
    if not isinstance(v, list) or len(v) > MAX_ATTACHMENTS:
        return False
    for a in v:
        if not isinstance(a, dict) or not _str(1024)(a.get("ref")):
            return False
        if set(a) - {"ref", "name", "mime", "size"}:
            return False
    return True


_attachments.__doc__ = f"a list of at most {MAX_ATTACHMENTS} {{ref, name, mime, size}} maps"

_ID = _str(MAX_ID)
_SEQ = _int(0, 2**63 - 1)

# kind -> (required fields, optional fields); text length is checked with the node's limit.
SCHEMA: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "open": ({}, {"group": _ID, "meta": _meta}),
    "resume": ({"conv": _ID, "after": _SEQ}, {}),
    "msg": ({"conv": _ID, "id": _ID, "text": None}, {"att": _attachments}),
    "typing": ({"conv": _ID, "on": _bool}, {}),
    "read": ({"conv": _ID, "seq": _SEQ}, {}),
    "history": ({"conv": _ID}, {"before": _SEQ, "limit": _int(1, 100)}),
    "close": ({"conv": _ID}, {}),
    "status": ({"status": None}, {"capacity": _int(0, 1000)}),
    "transfer": ({"conv": _ID}, {"to": _ID, "group": _ID}),
    "ping": ({}, {}),
    "refresh": ({"token": _str(8192)}, {}),
}
STATUSES = ("online", "away", "offline")


def validate(env: Any, max_text: int) -> dict[str, Any]:
    """Return the envelope if it is well formed, else raise ProtocolError naming the field."""
    if not isinstance(env, dict):
        raise ProtocolError("bad_envelope", "an envelope must be a JSON object or a msgpack map")
    rid = env.get("rid")
    if rid is not None and not (isinstance(rid, (str, int)) and not isinstance(rid, bool) and len(str(rid)) <= MAX_ID):
        raise ProtocolError("bad_field", "rid must be a short string or integer", "rid")
    kind = env.get("t")
    spec = SCHEMA.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ProtocolError("unknown_kind", f"unknown envelope kind {kind!r}", "t", rid)
    required, optional = spec
    for name, check in required.items():
        if name not in env:
            raise ProtocolError("missing_field", f"{kind}: field {name!r} is required", name, rid)
        if check is not None and not check(env[name]):
            raise ProtocolError("bad_field", f"{kind}: {name!r} must be {check.__doc__}", name, rid)
    for name, check in optional.items():
        v = env.get(name)
        if v is not None and not check(v):
            raise ProtocolError("bad_field", f"{kind}: {name!r} must be {check.__doc__}", name, rid)
    if kind == "msg":
        text = env["text"]
        if not isinstance(text, str) or len(text) > max_text or (not text and not env.get("att")):
            raise ProtocolError("bad_field", f"msg: 'text' must be a string of at most {max_text} characters", "text", rid)
    elif kind == "status" and env["status"] not in STATUSES:
        raise ProtocolError("bad_field", f"status: 'status' must be one of {', '.join(STATUSES)}", "status", rid)
    elif kind == "transfer" and not (env.get("to") or env.get("group")):
        raise ProtocolError("missing_field", "transfer: 'to' or 'group' is required", "to", rid)
    return env


def decode_text(payload: bytes) -> Any:
    """JSON from a text frame. Invalid UTF-8 was already refused by the listener (1007)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise ProtocolError("bad_envelope", f"malformed JSON: {e}") from None


def decode_binary(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("bad_envelope", f"malformed msgpack: {type(e).__name__}") from None


_packb = msgpack.Packer(use_bin_type=True).pack
_dumps = orjson.dumps


class Outgoing:
    """One server envelope, encoded lazily once per wire format and shared by all recipients."""

    __slots__ = ("env", "_json", "_msgpack")

    def __init__(self, env: dict[str, Any], json: bytes | None = None):
        self.env = env
        self._json: bytes | None = json  # when the caller already has `env` encoded (the embedded log)
        self._msgpack: bytes | None = None

    def json(self) -> bytes:
        if self._json is None:
            self._json = _dumps(self.env)
        return self._json

    def msgpack(self) -> bytes:
        if self._msgpack is None:
            self._msgpack = _packb(self.env)
        return self._msgpack


def msgpack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")

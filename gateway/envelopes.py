"""What a client may send: one declaration per kind, decoded and validated in one pass.

Each kind is a msgspec Struct; `decode` turns a frame's bytes (JSON or msgpack) into the
kind's Struct or raises ProtocolError naming the field, so handlers read typed attributes
they can trust (docs/protocol.md is the contract). msgspec replaced a dict walked by a
table of checks: about 4.6k instead of 17.3k instructions to decode and check a `msg`
(callgrind, measured for issue 11).

A kind is added here (its Struct, in `ENVELOPE`) and its handler in gateway/handlers.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import msgspec
import orjson
from msgspec import Meta, Struct

from .protocol import ProtocolError

MAX_ID = 128
MAX_ATTACHMENTS = 10

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Rid = Annotated[str, Meta(max_length=MAX_ID)] | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
MetaMap = Annotated[dict[Annotated[str, Meta(max_length=64)], Any], Meta(max_length=32)]


class Envelope(Struct, tag_field="t", kw_only=True, gc=False):
    """Every client envelope: its kind `t` and an optional request id echoed in the reply."""

    t: ClassVar[str]
    rid: Rid | None = None


class Attachment(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    ref: Annotated[str, Meta(min_length=1, max_length=1024)]
    name: Any = None
    mime: Any = None
    size: Any = None


class Open(Envelope, tag="open"):
    t: ClassVar[str] = "open"
    group: Id | None = None
    meta: MetaMap | None = None


class Resume(Envelope, tag="resume"):
    t: ClassVar[str] = "resume"
    conv: Id
    after: Seq


class Msg(Envelope, tag="msg"):
    """`text` is at most the node's `max_text` code points, checked in `decode` (a setting)."""

    t: ClassVar[str] = "msg"
    conv: Id
    id: Id
    text: str
    att: Annotated[list[Attachment], Meta(max_length=MAX_ATTACHMENTS)] | None = None


class Typing(Envelope, tag="typing"):
    t: ClassVar[str] = "typing"
    conv: Id
    on: bool


class Read(Envelope, tag="read"):
    t: ClassVar[str] = "read"
    conv: Id
    seq: Seq


class History(Envelope, tag="history"):
    t: ClassVar[str] = "history"
    conv: Id
    before: Seq | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] | None = None


class Close(Envelope, tag="close"):
    t: ClassVar[str] = "close"
    conv: Id


class Status(Envelope, tag="status"):
    t: ClassVar[str] = "status"
    status: Literal["online", "away", "offline"]
    capacity: Annotated[int, Meta(ge=0, le=1000)] | None = None


class Transfer(Envelope, tag="transfer"):
    """`to` (an agent) or `group`, at least one."""

    t: ClassVar[str] = "transfer"
    conv: Id
    to: Id | None = None
    group: Id | None = None


class Ping(Envelope, tag="ping"):
    t: ClassVar[str] = "ping"


class Refresh(Envelope, tag="refresh"):
    t: ClassVar[str] = "refresh"
    token: Annotated[str, Meta(min_length=1, max_length=8192)]


ENVELOPE = Open | Resume | Msg | Typing | Read | History | Close | Status | Transfer | Ping | Refresh
KINDS: dict[str, type[Envelope]] = {cls.t: cls for cls in ENVELOPE.__args__}

_json = msgspec.json.Decoder(ENVELOPE)
_msgpack = msgspec.msgpack.Decoder(ENVELOPE)


def decode(payload: bytes, binary: bool, max_text: int) -> Envelope:
    """A frame's payload (msgpack if `binary`, else JSON already known to be UTF-8) -> its envelope.

    Raises ProtocolError: `bad_envelope` (not a JSON object / msgpack map), `unknown_kind`,
    `missing_field` or `bad_field` with the field's name and the envelope's `rid` when it had one.
    """
    try:
        env = _msgpack.decode(payload) if binary else _json.decode(payload)
    except msgspec.DecodeError as e:
        raise _explain(e, payload, binary) from None
    return _checked(env, max_text)


def from_dict(env: Any, max_text: int) -> Envelope:
    """An envelope some other channel decoded already (a dict) -> its Struct, with the same checks."""
    try:
        out = msgspec.convert(env, ENVELOPE)
    except msgspec.ValidationError as e:
        raise _explain(e, env, None) from None
    return _checked(out, max_text)


def _checked(env: Envelope, max_text: int) -> Envelope:
    """The rules a type can't say: a `msg` within `max_text` with text or attachments; a transfer's target."""
    t = env.t
    if t == "msg":
        text = env.text
        if len(text) > max_text or (not text and not env.att):
            raise ProtocolError("bad_field", f"msg: 'text' must be a string of 1 to {max_text} characters "
                                "(empty only with attachments)", "text", env.rid)
    elif t == "transfer" and not (env.to or env.group):
        raise ProtocolError("missing_field", "transfer: 'to' or 'group' is required", "to", env.rid)
    return env


_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$(.*)`)?$")
_AT = re.compile(r"`\$\.([A-Za-z_][A-Za-z0-9_]*)")  # "- at `$.text`", "- at `key` in `$.meta`"


def _explain(e: msgspec.DecodeError, payload: Any, binary: bool | None) -> ProtocolError:
    """msgspec's error -> today's error envelope: code, top-level field, the envelope's `rid`.

    msgspec gives no partial object, so on this (rare) path the payload is parsed again, loosely,
    for the kind and the rid.
    """
    raw = _loose(payload, binary)
    if not isinstance(raw, dict):
        if isinstance(e, msgspec.ValidationError) or raw is not _MALFORMED:
            return ProtocolError("bad_envelope", "an envelope must be a JSON object or a msgpack map")
        return ProtocolError("bad_envelope", f"malformed {'msgpack' if binary else 'JSON'}: {e}")
    rid = raw.get("rid")
    if not (isinstance(rid, str) and len(rid) <= MAX_ID or type(rid) is int and -(2**63) <= rid < 2**63):
        if rid is not None:
            return ProtocolError("bad_field", "rid must be a short string or integer", "rid")
        rid = None
    kind = raw.get("t")
    if kind is None:
        return ProtocolError("unknown_kind", "the envelope has no kind: field 't' is required", "t", rid)
    if not isinstance(kind, str) or kind not in KINDS:
        return ProtocolError("unknown_kind", f"unknown envelope kind {kind!r}", "t", rid)
    text = str(e)
    m = _MISSING.match(text)
    if m and not m.group(2):
        return ProtocolError("missing_field", f"{kind}: field {m.group(1)!r} is required", m.group(1), rid)
    m = _AT.search(text)
    field = m.group(1) if m else None
    return ProtocolError("bad_field", f"{kind}: {text}", field, rid)


_MALFORMED = object()


def _loose(payload: Any, binary: bool | None) -> Any:
    if binary is None:
        return payload
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True) if binary else orjson.loads(payload)
    except Exception:  # msgpack raises several unrelated types for bad input
        return _MALFORMED

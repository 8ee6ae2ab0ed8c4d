"""The REST API's OpenAPI 3.1 document (served at /api/v1/openapi.json; docs/api.md).

Request bodies come from the msgspec types the API decodes them with (api_http.py), so the
document and the validation can't disagree; responses are written out here, and
tests/test_api.py runs schemathesis against a real node to keep both true.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .api_http import BODIES, CURSOR, STATES
from .api_keys import SCOPES

_STR = {"type": "string"}
_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/]+$"}
_NULLABLE_STR = {"type": ["string", "null"]}
_INT = {"type": "integer"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(["code", "message"], code=_STR, message=_STR, field=_STR)),
    "ConversationView": _obj(["conv", "state", "visitor", "agent", "group", "seq"], conv=_STR,
                             state={"enum": list(STATES)}, visitor=_STR, agent=_NULLABLE_STR, group=_STR, seq=_INT,
                             position=_INT),
    "Conversation": _obj(["id", "tenant", "visitor", "group", "state", "agent", "created_ms", "meta"], id=_STR, tenant=_STR,
                         visitor=_STR, group=_STR, state={"enum": list(STATES)}, agent=_NULLABLE_STR, created_ms=_INT,
                         meta={"type": "object"}, assigned_us=_INT, avoid=_NULLABLE_STR),
    "ConversationList": _obj(["conversations", "next"], conversations={"type": "array",
                                                                      "items": {"$ref": "#/components/schemas/Conversation"}},
                             next=_NULLABLE_STR),
    "Ack": _obj(["conv", "id", "seq", "dup"], conv=_STR, id=_STR, seq=_INT, dup={"type": "boolean"}),
    "Entries": _obj(["entries", "first", "next"], entries={"type": "array", "items": _obj(["seq", "t"], seq=_INT, t=_STR)},
                    first=_INT, next={"type": ["integer", "null"]}),
    "Closed": _obj(["conv", "state"], conv=_STR, state={"const": "closed"}),
    "Transferred": _obj(["conv"], conv=_STR),
    "Contact": _obj(["channel", "external_id", "visitor"], channel=_STR, external_id=_STR, visitor=_STR),
    "Agent": _obj(["id", "groups", "capacity", "status", "connected", "available", "load", "conversations"], id=_STR,
                  groups={"type": "array", "items": _STR}, capacity=_INT, status=_STR, connected={"type": "boolean"},
                  available={"type": "boolean"}, load=_INT, conversations={"type": "array", "items": _STR}),
    "Queue": _obj(["group", "depth", "conversations", "oldest_wait_ms", "mean_wait_ms"], group=_STR, depth=_INT,
                  conversations={"type": "array", "items": _STR}, oldest_wait_ms=_INT, mean_wait_ms=_INT),
}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _op(summary: str, ok: str, *, status: str = "200", body: str | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [],
                          "responses": {status: {"description": summary, "content": _json(ok)},
                                        "default": {"description": "an error, with the WebSocket protocol's code",
                                                    "content": _json("Error")}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def document(cfg: Any) -> dict[str, Any]:
    """The document for a node with `cfg` (its `max_text` is the messages' limit)."""
    _, bodies = msgspec.json.schema_components(BODIES, ref_template="#/components/schemas/{name}")
    bodies["MessageBody"]["properties"]["text"]["maxLength"] = cfg.max_text
    conv = _path("conv")
    ms = {"type": "integer", "minimum": 0, "maximum": 10**18}
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatgw REST API", "version": "1", "description": "docs/api.md"},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "components": {"schemas": {**SCHEMAS, **bodies},
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                                      "description": f"cgk_... keys from the admin API; scopes: "
                                                                     f"{', '.join(SCOPES)}"}}},
        "paths": {
            "/api/v1/conversations": {
                "post": _op("open a conversation for a visitor, or get their open one", "ConversationView",
                            body="OpenBody"),
                "get": _op("a tenant's conversations by creation time", "ConversationList", params=[
                    _query("since", ms), _query("until", ms), _query("state", {"enum": list(STATES)}),
                    _query("agent", {"type": "string", "minLength": 1, "maxLength": 128}), _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query("after", {"type": "string", "pattern": f"^{CURSOR.pattern}$"})]),
            },
            "/api/v1/conversations/{conv}": {"get": _op("one conversation", "Conversation", params=[conv])},
            "/api/v1/conversations/{conv}/messages": {
                "post": _op("a message (idempotent by id)", "Ack", body="MessageBody", params=[conv]),
                "get": _op("the conversation's log after a seq", "Entries", params=[
                    conv, _query("after", ms), _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})]),
            },
            "/api/v1/conversations/{conv}/close": {"post": _op("close it", "Closed", body="CloseBody", params=[conv])},
            "/api/v1/conversations/{conv}/transfer": {
                "post": _op("hand it to another agent or group", "Transferred", body="TransferBody", params=[conv])},
            "/api/v1/contacts": {"post": _op("link a messaging channel's user to a visitor", "Contact",
                                             body="ContactBody")},
            "/api/v1/agents/{agent}": {"get": _op("an agent's status and load", "Agent", params=[_path("agent")])},
            "/api/v1/queues/{group}": {"get": _op("a queue's depth and waits", "Queue", params=[_path("group")])},
        },
    }

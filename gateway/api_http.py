"""The REST API, /api/v1 (docs/api.md): what a backend does without holding a WebSocket.

    POST /api/v1/conversations                       open one for a visitor (or get their open one)
    GET  /api/v1/conversations                       a tenant's conversations, cursor paging
    GET  /api/v1/conversations/{conv}                one conversation's state
    POST /api/v1/conversations/{conv}/messages       a message as service, bot or agent; idempotent by `id`
    GET  /api/v1/conversations/{conv}/messages       its log, paged by seq
    POST /api/v1/conversations/{conv}/close          close it
    POST /api/v1/conversations/{conv}/transfer       hand it to another agent or group (as its agent)
    GET  /api/v1/agents/{agent}                      an agent's status and load
    POST /api/v1/contacts                            link a messaging channel's user to a visitor
    GET  /api/v1/queues/{group}                      a queue's depth and waits
    GET  /api/v1/openapi.json                        the OpenAPI 3.1 document of all this (no key)

Keys (gateway/api_keys.py) are created and revoked through the admin API:

    POST   /admin/tenants/{t}/api-keys {"name", "scopes"} -> {"key": "cgk_...", ...}  (shown once)
    GET    /admin/tenants/{t}/api-keys                    -> {"keys": [...]}  (no secrets)
    DELETE /admin/tenants/{t}/api-keys/{id}

A request carries `Authorization: Bearer cgk_...`. A missing, malformed, unknown or revoked key
is 401; a key without the route's scope is 403; another tenant's conversation is 404 (as if it
did not exist); past the key's rate, 429 with Retry-After. Errors are {"error": {"code",
"message", "field"}} with the WebSocket protocol's codes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from cachetools import LRUCache
from msgspec import Meta, Struct

from . import api_keys, api_session
from .auth import Identity
from .coordinator import Coordinator, Unavailable
from .envelopes import MAX_ID, Id, MetaMap

STATUS = {"bad_envelope": 400, "unknown_kind": 400, "missing_field": 400, "bad_field": 400, "not_participant": 404,
          "not_found": 404, "forbidden": 403, "conflict": 409, "rate_limited": 429, "unavailable": 503,
          "unauthorized": 401, "internal": 500}
STATES = ("bot", "queued", "assigned", "closed")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
CURSOR = re.compile(r"([0-9]{1,18})\.(.+)")  # `next` of a listing page: created_ms.id (the document's pattern)


# Request bodies: decoded strictly (unknown fields refused), and the OpenAPI document's schemas.
class OpenBody(Struct, forbid_unknown_fields=True):
    """Open a conversation for `visitor` (or return their open one)."""

    visitor: Id
    group: Id | None = None
    meta: MetaMap | None = None


class MessageBody(Struct, forbid_unknown_fields=True):
    """A message; `id` is the sender's client id (a retry with the same id is answered with the first seq).
    `as`: service (this key's service, named after it), bot, or agent (`agent`: the assigned agent)."""

    id: Id
    text: Annotated[str, Meta(min_length=1)]
    as_: Literal["service", "bot", "agent"] = msgspec.field(default="service", name="as")
    agent: Id | None = None


class CloseBody(Struct, forbid_unknown_fields=True):
    """Close it as the service, or as its agent (`as`: agent, `agent`)."""

    as_: Literal["service", "agent"] = msgspec.field(default="service", name="as")
    agent: Id | None = None


class TransferBody(Struct, forbid_unknown_fields=True):
    """The assigned `agent` hands it to agent `to` or to `group`."""

    agent: Id
    to: Id | None = None
    group: Id | None = None


class ContactBody(Struct, forbid_unknown_fields=True):
    """Link a channel's user to `visitor`: their messages there go on in that visitor's conversation."""

    channel: Id
    external_id: Id
    visitor: Id


BODIES = (OpenBody, MessageBody, CloseBody, TransferBody, ContactBody)


class ApiError(Exception):
    def __init__(self, code: str, message: str, field: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.field, self.status, self.headers = code, field, status or STATUS.get(code, 400), headers

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.field:
            body["field"] = self.field
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


class RateLimits:
    """A token bucket per key (rate per second, burst), kept for the most recent 10,000 keys."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self._buckets: LRUCache[str, list[float]] = LRUCache(10_000)

    def take(self, key_id: str) -> float:
        """0 if the request may go; else the seconds until it could."""
        now = time.monotonic()
        b = self._buckets.get(key_id)
        if b is None:
            b = self._buckets[key_id] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] >= 1:
            b[0] -= 1
            return 0.0
        return (1 - b[0]) / self.rate


def _decode(request_body: bytes, cls: type) -> Any:
    try:
        return msgspec.json.decode(request_body or b"{}", type=cls)
    except msgspec.ValidationError as e:
        missing = _MISSING.search(str(e))
        if missing:  # the protocol's code for it, naming the field
            raise ApiError("missing_field", f"body: {e}", missing[1].split(".")[-1]) from None
        raise ApiError("bad_field", f"body: {e}", _field_of(str(e))) from None
    except msgspec.DecodeError as e:
        raise ApiError("bad_envelope", f"body is not a JSON object: {e}") from None


_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def _field_of(message: str) -> str | None:
    """The top-level field a msgspec error names (`$.text`, or an unknown field's name)."""
    if "`$." in message:
        return message.rpartition("`$.")[2].split("`")[0].split(".")[0].split("[")[0] or None
    unknown = _UNKNOWN.search(message)
    return unknown[1] if unknown else None


def _int(request: web.Request, name: str, lo: int = 0, hi: int = 2**62) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not _INTEGER.fullmatch(raw):  # not int(): it takes "1_000", " 7" and non-ASCII digits
        raise ApiError("bad_field", f"{name} must be an integer", name)
    v = int(raw)
    if not lo <= v <= hi:
        raise ApiError("bad_field", f"{name} must be {lo}..{hi}", name)
    return v


def add_routes(app: web.Application, node_of: Callable[[web.Request], Any], openapi: Callable[[Any], dict[str, Any]]) -> None:
    """Register /api/v1 and the admin key routes; `node_of` gives the node (cfg, coord, hub)."""
    limits: dict[str, RateLimits] = {}

    def coord(request: web.Request) -> Coordinator:
        return node_of(request).coord

    async def authorised(request: web.Request, scope: str) -> api_keys.ApiKey:
        header = request.headers.get("Authorization", "")
        parsed = api_keys.parse(header[7:].strip()) if header.lower().startswith("bearer ") else None
        if parsed is None:
            raise ApiError("unauthorized", "an API key is required: Authorization: Bearer cgk_...")
        key = await coord(request).api_key(parsed[0])
        if key is None or not api_keys.matches(key, parsed[1]):
            raise ApiError("unauthorized", "unknown or revoked API key")
        if scope not in key.scopes:
            raise ApiError("forbidden", f"this key lacks the scope {scope}")
        cfg = node_of(request).cfg
        bucket = limits.get("") or limits.setdefault("", RateLimits(cfg.api_rate_per_s, cfg.api_rate_burst))
        wait = bucket.take(key.id)
        if wait:
            raise ApiError("rate_limited", "too many requests for this key", headers={"Retry-After": str(int(wait) + 1)})
        return key

    def route(scope: str, fn: Callable[[web.Request, api_keys.ApiKey], Awaitable[web.Response]]):
        async def handler(request: web.Request) -> web.Response:
            try:
                key = await authorised(request, scope)
                for name, value in request.match_info.items():  # ids in the path follow the protocol's rule
                    if not 0 < len(value) <= MAX_ID:
                        raise ApiError("bad_field", f"{name} must be 1 to {MAX_ID} characters", name)
                return await fn(request, key)
            except ApiError as e:
                return e.response()
            except Unavailable as e:
                return ApiError("unavailable", str(e) or "shared state unreachable").response()
            except TimeoutError:  # no reply in time (a stalled commit): it may be stored; the same id is safe
                return ApiError("unavailable", "no answer in time; send it again with the same id").response()

        return handler

    async def run(request: web.Request, key: api_keys.ApiKey, user: str, role: str, env: dict[str, Any],
                  wait_reply: bool) -> dict[str, Any] | None:
        node = node_of(request)
        # Its messages are stamped `ch: api`, as a messaging channel's are with its name.
        reply = await api_session.call(node.hub, Identity(key.tenant, user, role), node.cfg.max_text, env,
                                       wait_reply=wait_reply, channel="api")
        if reply is not None and reply.get("t") == "error":
            # A conversation that is missing or not this key's tenant's: the REST API's one code for it.
            code = "not_found" if reply["code"] == "not_participant" else reply["code"]
            raise ApiError(code, reply["message"], reply.get("field"))
        return reply

    def service_user(key: api_keys.ApiKey) -> str:
        return f"api:{key.name or key.id}"

    async def open_conversation(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        body = _decode(await request.read(), OpenBody)
        reply = await run(request, key, body.visitor, "visitor", {"t": "open", "group": body.group, "meta": body.meta}, True)
        assert reply is not None
        return web.json_response({k: v for k, v in reply.items() if k not in ("t", "rid")})

    async def post_message(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        body = _decode(await request.read(), MessageBody)
        if len(body.text) > node_of(request).cfg.max_text:
            raise ApiError("bad_field", f"text must be at most {node_of(request).cfg.max_text} characters", "text")
        if (body.as_ == "agent") != (body.agent is not None):
            raise ApiError("bad_field", "agent is required with as=agent, and only then", "agent")
        user = {"service": service_user(key), "bot": "bot", "agent": body.agent}[body.as_]
        reply = await run(request, key, user, body.as_, {"t": "msg", "conv": request.match_info["conv"], "id": body.id,
                                                        "text": body.text}, True)
        assert reply is not None
        return web.json_response({"conv": reply["conv"], "id": reply["id"], "seq": reply["seq"], "dup": reply["dup"]})

    async def close(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        body = _decode(await request.read(), CloseBody)
        if (body.as_ == "agent") != (body.agent is not None):
            raise ApiError("bad_field", "agent is required with as=agent, and only then", "agent")
        conv_id = request.match_info["conv"]
        user = body.agent if body.agent is not None else service_user(key)
        await run(request, key, user, body.as_, {"t": "close", "conv": conv_id}, False)
        return web.json_response({"conv": conv_id, "state": "closed"})

    async def transfer(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        body = _decode(await request.read(), TransferBody)
        if not (body.to or body.group):
            raise ApiError("missing_field", "to or group is required", "to")
        conv_id = request.match_info["conv"]
        await run(request, key, body.agent, "agent", {"t": "transfer", "conv": conv_id, "to": body.to, "group": body.group},
                  False)
        return web.json_response({"conv": conv_id})

    async def conversation(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        conv = await coord(request).get_conversation(key.tenant, request.match_info["conv"])
        if conv is None:
            raise ApiError("not_found", "no such conversation", "conv")
        return web.json_response(conv.to_dict())

    async def listing(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise ApiError("bad_field", f"state must be one of {', '.join(STATES)}", "state")
        after = None
        if "after" in request.query:
            m = CURSOR.fullmatch(request.query["after"])
            if m is None:
                raise ApiError("bad_field", "after must be a cursor from `next`", "after")
            after = (int(m[1]), m[2])
        limit = _int(request, "limit", 1, 1000) or 100
        agent = request.query.get("agent")
        if agent is not None and not 0 < len(agent) <= MAX_ID:
            raise ApiError("bad_field", f"agent must be 1 to {MAX_ID} characters", "agent")
        try:
            convs = await coord(request).list_conversations(
                key.tenant, since_ms=_int(request, "since", 0, 10**18), until_ms=_int(request, "until", 0, 10**18),
                state=state, agent=agent, limit=limit, after=after)
        except NotImplementedError as e:
            raise ApiError("unavailable", str(e), status=501) from None
        nxt = f"{convs[-1].created_ms}.{convs[-1].id}" if len(convs) == limit else None
        return web.json_response({"conversations": [c.to_dict() for c in convs], "next": nxt})

    async def messages(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        c = coord(request)
        conv = await c.get_conversation(key.tenant, request.match_info["conv"])
        if conv is None:
            raise ApiError("not_found", "no such conversation", "conv")
        after = _int(request, "after", 0, 10**18) or 0
        limit = _int(request, "limit", 1, 1000) or 100
        entries, first = await c.read_after(key.tenant, conv.id, after, limit)
        return web.json_response({"entries": entries, "first": first,
                                  "next": entries[-1]["seq"] if len(entries) == limit else None})

    async def agent(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        c = coord(request)
        a = await c.get_agent(key.tenant, request.match_info["agent"])
        if a is None:
            raise ApiError("not_found", "no such agent", "agent")
        return web.json_response({"id": a.id, "groups": list(a.groups), "capacity": a.capacity, "status": a.status,
                                  "connected": a.connected, "available": a.available, "load": a.load,
                                  "conversations": await c.conversations_of_agent(key.tenant, a.id)})

    async def queue(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        c = coord(request)
        ids = await c.queue_list(key.tenant, request.match_info["group"])
        now = int(time.time() * 1000)
        waits = []
        for conv_id in ids:
            conv = await c.get_conversation(key.tenant, conv_id)
            if conv is not None:
                waits.append(max(now - conv.created_ms, 0))
        return web.json_response({"group": request.match_info["group"], "depth": len(ids), "conversations": ids,
                                  "oldest_wait_ms": max(waits, default=0),
                                  "mean_wait_ms": int(sum(waits) / len(waits)) if waits else 0})

    async def link_contact(request: web.Request, key: api_keys.ApiKey) -> web.Response:
        body = _decode(await request.read(), ContactBody)
        channels = getattr(node_of(request), "channels", None)
        ch = channels.by_name.get(body.channel) if channels is not None else None
        if ch is None or ch.tenant != key.tenant:
            raise ApiError("not_found", "no such channel for this tenant", "channel")
        await coord(request).save_contact(key.tenant, body.channel, body.external_id,
                                          {"visitor": body.visitor, "conv": None, "seq": 0})
        return web.json_response({"channel": body.channel, "external_id": body.external_id, "visitor": body.visitor})

    async def document(request: web.Request) -> web.Response:
        return web.json_response(openapi(node_of(request).cfg))

    r = app.router
    r.add_get("/api/v1/openapi.json", document)
    r.add_post("/api/v1/conversations", route("conversations:write", open_conversation))
    r.add_get("/api/v1/conversations", route("conversations:read", listing))
    r.add_get("/api/v1/conversations/{conv}", route("conversations:read", conversation))
    r.add_post("/api/v1/conversations/{conv}/messages", route("messages:write", post_message))
    r.add_get("/api/v1/conversations/{conv}/messages", route("conversations:read", messages))
    r.add_post("/api/v1/conversations/{conv}/close", route("conversations:write", close))
    r.add_post("/api/v1/conversations/{conv}/transfer", route("conversations:write", transfer))
    r.add_get("/api/v1/agents/{agent}", route("agents:read", agent))
    r.add_post("/api/v1/contacts", route("conversations:write", link_contact))
    r.add_get("/api/v1/queues/{group}", route("queues:read", queue))


def add_admin_routes(app: web.Application, tenant_of: Callable[[web.Request], str],
                     coord_of: Callable[[web.Request], Coordinator]) -> None:
    """The admin API's keys: create (the key is in this one answer), list (no secrets), revoke."""

    async def create(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        try:
            body = msgspec.json.decode(await request.read() or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("scopes"), list) or \
                    not isinstance(body.get("name", ""), str) or len(body.get("name", "")) > 128:
                raise ValueError("body: {\"name\": str (at most 128), \"scopes\": [str]}")
            token, key = api_keys.mint(tenant, body.get("name", ""), body["scopes"])
        except (ValueError, msgspec.DecodeError) as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        try:
            await coord_of(request).save_api_key(key)
        except Unavailable as e:
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        return web.json_response({"key": token, **key.public()}, status=201)

    async def listing(request: web.Request) -> web.Response:
        keys = await coord_of(request).api_keys(tenant_of(request))
        return web.json_response({"keys": [k.public() for k in keys]})

    async def revoke(request: web.Request) -> web.Response:
        if not await coord_of(request).delete_api_key(tenant_of(request), request.match_info["key"]):
            raise web.HTTPNotFound(text="no such key")
        return web.json_response({"revoked": request.match_info["key"]})

    app.router.add_post("/admin/tenants/{tenant}/api-keys", create)
    app.router.add_get("/admin/tenants/{tenant}/api-keys", listing)
    app.router.add_delete("/admin/tenants/{tenant}/api-keys/{key}", revoke)

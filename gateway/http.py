"""The HTTP side: health, readiness, metrics, the admin API and the demo pages (aiohttp)."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import auth
from .api_http import add_admin_routes as add_api_admin_routes
from .api_http import add_routes as add_api_routes
from .api_openapi import document as openapi_document
from .metrics import METRICS
from .protocol import VERSION
from .supervisor_http import add_routes as add_supervisor_routes
from .transcripts_http import add_routes as add_transcript_routes
from .webhooks import add_routes as add_webhook_routes


class Node(Protocol):
    """What the HTTP side reads of the node (gateway/server.py's `Node`), declared here so
    that the HTTP side does not import the server that starts it."""

    cfg: Any
    coord: Any
    hub: Any
    ws_port: int
    guard: Any  # memory_guard.MemoryGuard
    draining: bool
    last_reload: dict[str, Any]

    def spawn_drain(self) -> None: ...


STATIC = Path(__file__).parent / "static"
NODE: web.AppKey[Any] = web.AppKey("node")


def _node(request: web.Request) -> Node:
    return request.app[NODE]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "node": _node(request).cfg.node_id})


async def readyz(request: web.Request) -> web.Response:
    """200 when the node takes new connections: shared state reachable, not draining, memory under
    the guard's soft line; else 503, saying which (a load balancer stops sending it clients)."""
    node = _node(request)
    health = await node.coord.health()
    memory = node.guard.describe() if node.guard is not None else {"state": "ok"}
    ok = bool(health.get("ok")) and node.hub is not None and not node.draining and memory["state"] == "ok"
    return web.json_response({"ok": ok, "coordinator": health, "draining": node.draining, "memory": memory},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    bots = _node(request).hub.bots
    if bots is not None:  # the breakers live in the bot worker: asked now, not per bot call
        METRICS.bot_breaker.clear()  # backends gone from the config, or a worker that is down, leave no stale series
        for backend, state in (await bots.snapshot()).get("breakers", {}).items():
            METRICS.bot_breaker.labels(backend).set({"closed": 0, "half_open": 1, "open": 2}.get(state, 2))
    return web.Response(body=generate_latest(METRICS.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def api_config(request: web.Request) -> web.Response:
    node = _node(request)
    cfg = node.cfg
    host = request.url.host or "127.0.0.1"
    ws_url = cfg.public_ws_url or f"ws://{host}:{node.ws_port}/ws"
    return web.json_response({"ws_url": ws_url, "version": VERSION, "tenant": cfg.default_tenant, "dev_tokens": cfg.demo,
                              "bots": node.hub.bots is not None})


async def dev_token(request: web.Request) -> web.Response:
    cfg = _node(request).cfg
    if not cfg.demo:
        raise web.HTTPNotFound()
    q = request.query
    role = q.get("role", "visitor")
    sub = q.get("sub") or f"{role}-{id(request) & 0xFFFFFF:06x}"
    tenant = q.get("tenant") or cfg.default_tenant
    if role not in auth.ROLES or not 0 < len(sub) <= auth.MAX_ID_LEN or not 0 < len(tenant) <= auth.MAX_ID_LEN:
        raise web.HTTPBadRequest(text="role must be visitor|agent|service; sub and tenant 1..128 characters")
    groups = [g for g in q.get("groups", "").split(",") if g] or None
    capacity = int(q["capacity"]) if q.get("capacity", "").isdigit() else None
    # `ttl` (seconds, 5..43200) lets the demo show token refresh without waiting hours.
    ttl = min(max(int(q["ttl"]), 5), 43200) if q.get("ttl", "").isdigit() else 12 * 3600
    token = auth.mint(cfg.jwt_secret, tenant=tenant, user=sub, role=role, groups=groups, capacity=capacity,
                      issuer=cfg.jwt_issuer, ttl_s=ttl)
    return web.json_response({"token": token, "sub": sub, "role": role, "tenant": tenant})


def _admin_scope(request: web.Request) -> str | None:
    """None for the operator's admin token (all tenants), else the one tenant a service token may see."""
    cfg = _node(request).cfg
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if token and hmac.compare_digest(token.encode(), cfg.admin_token.encode()):
        return None
    try:
        ident = auth.verify(token, cfg.keys, issuer=cfg.jwt_issuer)
    except auth.AuthError as e:
        raise web.HTTPUnauthorized(text=str(e), headers={"WWW-Authenticate": 'Bearer realm="chatgw-admin"'}) from None
    if ident.role != "service":
        raise web.HTTPForbidden(text="admin API needs the admin token or a service token")
    return ident.tenant


def _tenant(request: web.Request) -> str:
    scope = _admin_scope(request)
    tenant = request.match_info["tenant"]
    if scope is not None and scope != tenant:
        raise web.HTTPNotFound(text="no such tenant for this token")  # as if it did not exist
    return tenant


async def admin_stats(request: web.Request) -> web.Response:
    if _admin_scope(request) is not None:
        raise web.HTTPForbidden(text="node statistics need the admin token")
    node = _node(request)
    return web.json_response({"node": node.cfg.node_id, "hub": node.hub.stats(), "config": node.cfg.describe(),
                              "memory": node.guard.describe() if node.guard is not None else None,
                              "draining": node.draining, "last_reload": node.last_reload,
                              "jwt_keys": node.cfg.keys.describe()})


async def admin_drain(request: web.Request) -> web.Response:
    """POST /admin/drain (admin token): as SIGTERM, without the exit. Answers at once (202) with
    the connections being told; `/readyz` and `/admin/stats` show the drain's progress."""
    if _admin_scope(request) is not None:
        raise web.HTTPForbidden(text="draining a node needs the admin token")
    node = _node(request)
    started = not node.draining
    if started:
        node.spawn_drain()
    return web.json_response({"draining": True, "started": started, "connections": len(node.hub.conns)},
                             status=202)


async def admin_bots(request: web.Request) -> web.Response:
    if _admin_scope(request) is not None:
        raise web.HTTPForbidden(text="bot statistics need the admin token")
    bots = _node(request).hub.bots
    if bots is None:
        return web.json_response({"enabled": False})
    return web.json_response({"enabled": True, **await bots.snapshot()})


async def admin_conversation(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    node = _node(request)
    conv = await node.coord.get_conversation(tenant, request.match_info["conv"])
    if conv is None:
        raise web.HTTPNotFound(text="no such conversation")
    entries, first = await node.coord.read_before(tenant, conv.id, None, 100)
    return web.json_response({"conversation": conv.to_dict(), "log": entries, "first": first})


async def admin_agent(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    node = _node(request)
    agent = await node.coord.get_agent(tenant, request.match_info["agent"])
    if agent is None:
        raise web.HTTPNotFound(text="no such agent")
    convs = await node.coord.conversations_of_agent(tenant, agent.id)
    return web.json_response(
        {"id": agent.id, "groups": list(agent.groups), "capacity": agent.capacity, "status": agent.status,
         "connected": agent.connected, "available": agent.available, "load": agent.load, "conversations": convs}
    )


async def admin_queue(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    node = _node(request)
    return web.json_response({"group": request.match_info["group"], "queue": await node.coord.queue_list(tenant, request.match_info["group"])})


def _page(name: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        if not _node(request).cfg.demo:
            raise web.HTTPNotFound()
        path = STATIC / name
        if not path.exists():
            raise web.HTTPNotFound(text=f"{name} is not built into this node")
        return web.FileResponse(path)

    return handler


def make_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[NODE] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/config", api_config)
    app.router.add_get("/api/dev/token", dev_token)
    app.router.add_get("/admin/stats", admin_stats)
    app.router.add_get("/admin/bots", admin_bots)
    app.router.add_post("/admin/drain", admin_drain)
    app.router.add_get("/admin/tenants/{tenant}/conversations/{conv}", admin_conversation)
    app.router.add_get("/admin/tenants/{tenant}/agents/{agent}", admin_agent)
    app.router.add_get("/admin/tenants/{tenant}/queues/{group}", admin_queue)
    add_transcript_routes(app, _tenant, lambda request: _node(request).coord)
    add_supervisor_routes(app, _admin_scope, _node)
    add_api_routes(app, _node, openapi_document)
    add_api_admin_routes(app, _tenant, lambda request: _node(request).coord)
    add_webhook_routes(app, _tenant, lambda request: getattr(_node(request), "webhooks", None))
    if getattr(node, "channels", None) is not None:
        node.channels.add_routes(app)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/visitor", _page("visitor.html"))
    app.router.add_get("/agent", _page("agent.html"))
    if node.cfg.demo:
        app.router.add_static("/static/", STATIC, show_index=False)
    return app


async def start_http(node: Node) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, node.cfg.host, node.cfg.http_port, reuse_port=node.cfg.coordinator == "redis")
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port

"""The supervisor page (docs/operations.md): live queues with waits, agents with load, conversations by
state, the cluster's nodes.

Routes, served in production too (not through the demo-only /static/):

- `GET /admin/supervisor`: the page, with its script and the shared stylesheet beside it
  (`/admin/supervisor/supervisor.js`, `/admin/supervisor/style.css`). Static files, no token:
  the page asks for one and keeps it in the tab's sessionStorage, never in a URL.
- `GET /admin/tenants/{tenant}/supervisor`: the JSON the page polls, for the admin token or that
  tenant's service token (another tenant's: 404, as if it did not exist):

      {"tenant": str, "node": this node's id, "now_ms": wall clock ms,
       "queues": [{"group": str, "length": n, "waiting": [{"conv", "visitor", "waited_ms"}], head first}],
       "agents": [{"id", "status", "connected", "available", "load", "capacity", "groups": [str]}],
       "conversations": {"bot": n, "queued": n, "assigned": n},   # open ones by state
       "nodes": [{"id", "heartbeat_age_ms", "self": bool}],
       "truncated": bool,                                           # a bound of `LiveView` cut something
       "this_node": {"connections": n, "by_role": {role: n}, "tenant_by_role": {role: n}}}  # admin token only

  Bounded as `Supervision.live_view` is (gateway/coordinator/ports.py); 503 while shared state is away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .coordinator import Unavailable
from .coordinator.ports import LiveView

STATIC = Path(__file__).parent / "static"
# The page's own files: nothing else under static/ is reachable from here.
FILES = {"": "supervisor.html", "supervisor.js": "supervisor.js", "style.css": "style.css"}
# The page holds a bearer token: no framing, no caching, scripts and styles from this origin only
# (the page's few styles of its own are inline).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


def view_json(view: LiveView) -> dict[str, Any]:
    """`LiveView` as the JSON above (queues, agents, conversations, nodes, truncated)."""
    return {
        "queues": [{"group": q.group, "length": q.length,
                    "waiting": [{"conv": w.conv, "visitor": w.visitor, "waited_ms": w.waited_ms} for w in q.waiting]}
                   for q in view.queues],
        "agents": [{"id": a.id, "status": a.status, "connected": a.connected, "available": a.available,
                    "load": a.load, "capacity": a.capacity, "groups": list(a.groups)} for a in view.agents],
        "conversations": dict(view.states),
        "nodes": [{"id": n.id, "heartbeat_age_ms": n.heartbeat_age_ms} for n in view.nodes],
        "truncated": view.truncated,
    }


def connections_by_role(hub: Any, tenant: str) -> dict[str, Any]:
    """This node's connections: how many, by role, and by role for `tenant` (one pass over them)."""
    by_role: dict[str, int] = {}
    of_tenant: dict[str, int] = {}
    conns = list(hub.conns.values())
    for conn in conns:
        role = getattr(conn, "role", "") or "unknown"
        by_role[role] = by_role.get(role, 0) + 1
        if getattr(conn, "tenant", None) == tenant:
            of_tenant[role] = of_tenant.get(role, 0) + 1
    return {"connections": len(conns), "by_role": by_role, "tenant_by_role": of_tenant}


def add_routes(app: web.Application, admin_scope: Callable[[web.Request], str | None],
               node_of: Callable[[web.Request], Any]) -> None:
    """Register the supervisor's page, its files and its JSON. `admin_scope` (gateway/http.py): None
    for the admin token, else the service token's tenant; it raises 401/403 for anything else."""

    def page_file(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC / name, headers=PAGE_HEADERS)

        return handler

    async def supervisor_json(request: web.Request) -> web.Response:
        scope = admin_scope(request)
        tenant = request.match_info["tenant"]
        if scope is not None and scope != tenant:
            raise web.HTTPNotFound(text="no such tenant for this token")  # as if it did not exist
        node = node_of(request)
        try:
            view = await node.coord.live_view(tenant)
        except Unavailable as e:  # shared state away: the page says so and asks again
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        body = {"tenant": tenant, "node": node.cfg.node_id, "now_ms": int(time.time() * 1000), **view_json(view)}
        for n in body["nodes"]:
            n["self"] = n["id"] == node.cfg.node_id
        if scope is None and node.hub is not None:  # node-level numbers: the operator's only
            body["this_node"] = connections_by_role(node.hub, tenant)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    app.router.add_get("/admin/supervisor", page_file(FILES[""]))
    for path, name in FILES.items():
        if path:
            app.router.add_get(f"/admin/supervisor/{path}", page_file(name))
    app.router.add_get("/admin/tenants/{tenant}/supervisor", supervisor_json)

"""The admin API's transcripts (docs/store.md): a tenant's conversations by time, state and agent
with cursor paging; one conversation's transcript as JSON or CSV; erasure of one visitor's data.

    GET    /admin/tenants/{t}/conversations?since=MS&until=MS&state=S&agent=A&limit=N&after=CURSOR
           -> {"conversations": [...], "next": CURSOR or null}   (by creation time, then id)
    GET    /admin/tenants/{t}/conversations/{id}/transcript[?format=csv]
    DELETE /admin/tenants/{t}/visitors/{visitor}  -> {"erased": [conversation ids]}

Same access as the rest of the admin API (the admin token, or a service token of tenant t).
In cluster mode the listing reads the PostgreSQL archive (docs/archive.md) and answers 501 without
one; erasure works either way (transcripts.py of the Redis coordinator).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .coordinator import Coordinator, Unavailable

PAGE = 1000  # log entries read per call while a transcript is assembled
STATES = ("bot", "queued", "assigned", "closed")
CSV_FIELDS = ("seq", "ts", "t", "from", "role", "text", "ev", "agent", "by")


def add_routes(app: web.Application, tenant_of: Callable[[web.Request], str],
               coord_of: Callable[[web.Request], Coordinator]) -> None:
    """Register the three endpoints; `tenant_of` checks access and names the tenant (http.py's `_tenant`)."""

    async def listing(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        q = request.query
        try:
            since = _int(q, "since")
            until = _int(q, "until")
            limit = _int(q, "limit") or 100
            if not 1 <= limit <= 1000:
                raise ValueError("limit must be 1..1000")
            state = q.get("state")
            if state is not None and state not in STATES:
                raise ValueError(f"state must be one of {', '.join(STATES)}")
            after = _cursor(q["after"]) if q.get("after") else None
        except ValueError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        try:
            convs = await coord_of(request).list_conversations(tenant, since_ms=since, until_ms=until, state=state,
                                                               agent=q.get("agent"), limit=limit, after=after)
        except NotImplementedError as e:
            raise web.HTTPNotImplemented(text=str(e)) from None
        except Unavailable as e:  # the archive away (cluster mode): ask again
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        nxt = f"{convs[-1].created_ms}.{convs[-1].id}" if len(convs) == limit else None
        return web.json_response({"conversations": [c.to_dict() for c in convs], "next": nxt})

    async def transcript(request: web.Request) -> web.StreamResponse:
        tenant = tenant_of(request)
        coord = coord_of(request)
        conv_id = request.match_info["conv"]
        try:
            conv = await coord.get_conversation(tenant, conv_id)
            if conv is None:
                raise web.HTTPNotFound(text="no such conversation")
            entries: list[dict[str, Any]] = []
            while True:
                page, _ = await coord.read_after(tenant, conv_id, entries[-1]["seq"] if entries else 0, PAGE)
                entries += page
                if len(page) < PAGE:
                    break
        except Unavailable as e:  # shared state, the store or the archive away: ask again
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        if request.query.get("format") == "csv":
            out = io.StringIO()
            w = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(entries)
            return web.Response(text=out.getvalue(), content_type="text/csv", headers={
                "Content-Disposition": f'attachment; filename="transcript-{conv_id}.csv"'})
        return web.json_response({"conversation": conv.to_dict(), "entries": entries})

    async def erase(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        try:
            erased = await coord_of(request).erase_visitor(tenant, request.match_info["visitor"])
        except ValueError as e:
            raise web.HTTPConflict(text=str(e)) from None
        except NotImplementedError as e:
            raise web.HTTPNotImplemented(text=str(e)) from None
        except Unavailable as e:  # shared state or the store away: nothing was reported erased; ask again
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        return web.json_response({"erased": erased})

    app.router.add_get("/admin/tenants/{tenant}/conversations", listing)
    app.router.add_get("/admin/tenants/{tenant}/conversations/{conv}/transcript", transcript)
    app.router.add_delete("/admin/tenants/{tenant}/visitors/{visitor}", erase)


def _int(q: Any, name: str) -> int | None:
    v = q.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name} must be an integer (milliseconds for since/until)") from None


def _cursor(raw: str) -> tuple[int, str]:
    ms, sep, conv_id = raw.partition(".")
    if not sep or not ms.isdigit() or not conv_id:
        raise ValueError("after must be a cursor from a previous page's next")
    return int(ms), conv_id

"""Outbound webhooks (docs/webhooks.md): signed, at least once, in order per subscription.

Subscriptions are in the config file (`[[webhooks]]`: name, tenant, url, secret, events,
max_age_s). An entry of a subscribed tenant (a message, a conversation event) becomes an outbox
row in the same commit as the entry (store_outbox.py); `Sender` posts the rows of each
subscription in order and deletes each once its receiver answered 2xx. A failure is tried again
after an exponential backoff with jitter (`backoff_s` doubling to `BACKOFF_CAP_S`, times 0.5-1.5);
a row older than `max_age_s` goes to the dead letters, which the admin API lists and replays.

Every delivery is a POST of {"id", "type", "created_ms", "tenant", "conversation", "data"}
with headers `Chatgw-Event-Id`, `Chatgw-Timestamp` (Unix seconds, when sent) and
`Chatgw-Signature: v1=<hex HMAC-SHA256(secret, "<id>.<timestamp>." + body)>`. A receiver checks
the signature, refuses a timestamp outside its replay window, and drops an id it has seen
(`verify` is that check, for receivers written in Python).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson
from aiohttp import web

log = logging.getLogger("gateway.webhooks")

# `conversation.opened` is sent for a conversation's first entry (seq 1: `bot` when a bot answers first,
# else `queued`), before that entry's own event; `conversation.handoff` is a bot handing the visitor to people.
EVENTS = ("message.created", "conversation.opened", "conversation.bot", "conversation.queued", "conversation.assigned",
          "conversation.transferred", "conversation.requeued", "conversation.handoff", "conversation.closed",
          "agent.status")
BACKOFF_CAP_S = 300.0
POLL_S = 0.2
BATCH = 50
REPLAY_WINDOW_S = 300


class WebhookConfigError(ValueError):
    """A `[[webhooks]]` entry that can't be used (the node refuses to start)."""


@dataclass(frozen=True)
class Subscription:
    name: str
    tenant: str
    url: str
    secret: str
    events: frozenset[str] = field(default_factory=lambda: frozenset(EVENTS))
    max_age_s: float = 86_400.0
    backoff_s: float = 1.0
    timeout_s: float = 10.0


def subscriptions(raw: list[dict[str, Any]]) -> list[Subscription]:
    """The config file's `[[webhooks]]` tables, checked."""
    out: list[Subscription] = []
    for i, d in enumerate(raw):
        where = f"webhooks[{i}]"
        try:
            sub = Subscription(name=str(d["name"]), tenant=str(d["tenant"]), url=str(d["url"]), secret=str(d["secret"]),
                               events=frozenset(d.get("events", EVENTS)), max_age_s=float(d.get("max_age_s", 86_400)),
                               backoff_s=float(d.get("backoff_s", 1.0)), timeout_s=float(d.get("timeout_s", 10.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise WebhookConfigError(f"{where}: needs name, tenant, url and secret ({e})") from None
        if urlparse(sub.url).scheme not in ("http", "https"):
            raise WebhookConfigError(f"{where}: url must be http(s)")
        if len(sub.secret) < 16:
            raise WebhookConfigError(f"{where}: secret must be at least 16 characters")
        if not sub.events <= set(EVENTS):
            raise WebhookConfigError(f"{where}: events must be some of {', '.join(EVENTS)}")
        if sub.max_age_s <= 0 or sub.backoff_s <= 0 or sub.timeout_s <= 0:
            raise WebhookConfigError(f"{where}: max_age_s, backoff_s and timeout_s must be positive")
        if any(s.name == sub.name for s in out):
            raise WebhookConfigError(f"{where}: name {sub.name!r} is used twice")
        out.append(sub)
    return out


def event_types(entry: dict[str, Any]) -> list[str]:
    """The webhook events an entry makes, in order: its own, with `conversation.opened` first for seq 1."""
    kind = event_type(entry)
    if kind is None:
        return []
    return ["conversation.opened", kind] if entry.get("t") == "event" and entry.get("seq") == 1 else [kind]


def event_type(entry: dict[str, Any]) -> str | None:
    """The webhook event an entry is (its own kind), if any."""
    if entry.get("t") == "msg":
        return "message.created"
    if entry.get("t") == "event":
        kind = f"conversation.{entry.get('ev')}"
        return kind if kind in EVENTS else None
    if entry.get("t") == "agent":
        return "agent.status"
    return None



def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of "<id>.<timestamp>." + body under `secret`."""
    mac = hmac.new(secret.encode(), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None, window_s: int = REPLAY_WINDOW_S) -> str:
    """A receiver's check: the event id, if the signature is right and the timestamp within `window_s`;
    ValueError otherwise. (Dropping an id seen before is the receiver's.)"""
    event_id, ts = headers.get("Chatgw-Event-Id", ""), headers.get("Chatgw-Timestamp", "")
    if not event_id or not ts.isdigit():
        raise ValueError("missing Chatgw-Event-Id or Chatgw-Timestamp")
    if abs((time.time() if now is None else now) - int(ts)) > window_s:
        raise ValueError("timestamp outside the replay window")
    if not hmac.compare_digest(signature(secret, event_id, int(ts), body).encode(),
                               headers.get("Chatgw-Signature", "").encode("utf-8", "replace")):  # bytes: a non-ASCII header is just wrong
        raise ValueError("bad signature")
    return event_id


class Worker:
    """A node's webhook sender: its HTTP client and its loop (`_run`), from `start()` to `stop()`."""

    _http: aiohttp.ClientSession | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        raise NotImplementedError


class Sender(Worker):
    """Embedded mode: posts each subscription's outbox rows, in order, until `stop()`."""

    def __init__(self, store: Any, subs: list[Subscription]):
        self.store = store
        self.subs = subs
        self._by_tenant: dict[str, list[Subscription]] = {}
        for s in subs:
            self._by_tenant.setdefault(s.tenant, []).append(s)
        self.stats = {"delivered": 0, "failed_attempts": 0, "dead": 0}
        store.subscribers = self.subscribers

    def subscribers(self, tenant: str, body: bytes) -> list[tuple[str, str]]:
        """(subscription, event type) for each event of this entry of `tenant` a subscription wants
        (store_outbox.py asks, per entry), in order."""
        subs = self._by_tenant.get(tenant)
        if not subs:
            return []
        kinds = event_types(orjson.loads(body))
        return [(s.name, kind) for kind in kinds for s in subs if kind in s.events]

    async def _run(self) -> None:
        while True:
            for sub in self.subs:
                try:
                    await self._drain(sub)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the loop outlives any one failure; the rows stay
                    log.exception("webhook %s: sending failed", sub.name)
            await asyncio.sleep(POLL_S)

    async def _drain(self, sub: Subscription) -> None:
        for row in self.store.outbox_due(sub.name, int(time.time() * 1000), BATCH):
            error = await self._post(sub, row)
            if error is None:
                self.store.outbox_done(row)
                self.stats["delivered"] += 1
                continue
            self.stats["failed_attempts"] += 1
            now = int(time.time() * 1000)
            if now - row["created_ms"] > sub.max_age_s * 1000:
                self.store.outbox_bury(row, error)
                self.stats["dead"] += 1
                log.warning("webhook %s: event %s dead after %d attempts: %s", sub.name, row["id"], row["attempts"] + 1,
                            error)
                continue  # out of the way: the next event may go
            delay = min(BACKOFF_CAP_S, sub.backoff_s * 2 ** row["attempts"]) * random.uniform(0.5, 1.5)
            self.store.outbox_retry(row, now + int(delay * 1000))
            return  # in order: nothing after it goes before it

    async def _post(self, sub: Subscription, row: dict[str, Any]) -> str | None:
        assert self._http is not None
        return await deliver(self._http, sub, row["id"], row["tenant"], row["conv"], row["created_ms"],
                             orjson.loads(row["body"]), row["kind"])

    def dead_letters(self, tenant: str) -> list[dict[str, Any]]:
        return self.store.dead_letters(tenant)

    async def replay(self, tenant: str, event_id: str) -> bool:
        """Back to the outbox (tried at once); False if there is no such dead letter."""
        return self.store.replay_dead(tenant, event_id)


async def deliver(http: aiohttp.ClientSession, sub: Subscription, event_id: str, tenant: str, conv: str, created_ms: int,
                  entry: dict[str, Any], kind: str | None = None) -> str | None:
    """POST one event (of type `kind`; default: the entry's own), signed; None when the receiver took it (2xx),
    else why not."""
    body = orjson.dumps({"id": event_id, "type": kind or event_type(entry), "created_ms": created_ms, "tenant": tenant,
                         "conversation": conv, "data": entry})
    ts = int(time.time())
    headers = {"Content-Type": "application/json", "Chatgw-Event-Id": event_id, "Chatgw-Timestamp": str(ts),
               "Chatgw-Signature": signature(sub.secret, event_id, ts, body)}
    try:
        async with http.post(sub.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=sub.timeout_s)) as r:
            return None if 200 <= r.status < 300 else f"HTTP {r.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return f"{type(e).__name__}: {e}"


def add_routes(app: web.Application, tenant_of: Any, sender_of: Any) -> None:
    """GET /admin/tenants/{t}/webhooks/dead; POST /admin/tenants/{t}/webhooks/dead/{id}/replay."""

    def sender(request: web.Request) -> Any:
        s = sender_of(request)
        if s is None:
            raise web.HTTPNotFound(text="no webhooks are configured on this node")
        return s

    async def dead(request: web.Request) -> web.Response:
        return web.json_response({"dead": await _maybe(sender(request).dead_letters(tenant_of(request)))})

    async def replay(request: web.Request) -> web.Response:
        try:
            found = await sender(request).replay(tenant_of(request), request.match_info["event"])
        except aiohttp.ClientError as e:  # cluster mode sends it at once: the receiver is still away
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        if not found:
            raise web.HTTPNotFound(text="no such dead letter")
        return web.json_response({"replayed": request.match_info["event"]})

    app.router.add_get("/admin/tenants/{tenant}/webhooks/dead", dead)
    app.router.add_post("/admin/tenants/{tenant}/webhooks/dead/{event}/replay", replay)


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value

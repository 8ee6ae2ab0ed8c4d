"""Webhooks in cluster mode (docs/webhooks.md, steps 8-11): the log is the outbox.

An event is a log entry, so it is in Redis (or the archive) exactly when it was acked, on
whichever node; nothing else has to be written with it. What is kept is how far each
subscription has got in each conversation: a cursor per (conversation, subscription) in
`P:{c:T:C}:wh` (the conversation's slot; `wh:<sub>` the last seq delivered, `n:<sub>` the failed
attempts at the next one). Conversations with entries past a cursor are found two ways: the node
that appends queues the conversation in `P:whq` (score: when due), off the message path; and, in
case that node died first, one node at a time (lease `P:whsweep`) sweeps the tenants' conversation
metas every `SWEEP_S` and queues any whose last seq is past a cursor. A conversation is worked on
by the node holding its lease (as the archiver's), in seq order; a failure reschedules it with
exponential backoff and jitter; an event past `max_age_s` is a dead letter (`P:{w:T}:dead`) and the
cursor moves past it. Event ids are derived from (tenant, conversation, seq, subscription), so an
event sent twice (a node died between the receiver's 2xx and the cursor's move) carries the same id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from typing import Any

import aiohttp
import orjson

from .coordinator.redis.archiver import member
from .coordinator.redis.keys import q
from .coordinator.redis.leases import LeaseLost, Leases
from .webhooks import BACKOFF_CAP_S, POLL_S, Subscription, Worker, deliver, event_types

log = logging.getLogger("gateway.webhooks")

SWEEP_S = 30.0
BATCH = 50
CURSOR_TTL_S = 30 * 86400  # a conversation's cursors outlive its keys by this much (closed, archived, dropped)

def event_id(tenant: str, conv: str, seq: int | str, sub: str, kind: str = "") -> str:
    """The id of an event: derived from where it is, so whoever sends it again sends the same id."""
    return "evt_" + hashlib.sha256("\0".join((tenant, conv, str(seq), sub, kind)).encode()).hexdigest()[:24]


class CursorSender(Worker):
    """One node's webhook sender over a RedisCoordinator (`coord`)."""

    def __init__(self, coord: Any, subs: list[Subscription], sweep_s: float = SWEEP_S):
        self.coord = coord
        self.sweep_s = sweep_s
        self.subs = subs
        self.by_tenant: dict[str, list[Subscription]] = {}
        for s in subs:
            self.by_tenant.setdefault(s.tenant, []).append(s)
        coord.webhook_tenants = frozenset(self.by_tenant)  # log.py queues their conversations after appends
        self.stats = {"delivered": 0, "failed_attempts": 0, "dead": 0, "swept": 0}
        self.leases = Leases(coord)
        self._last_sweep = 0.0

    def _queue(self) -> str:
        return f"{self.coord._p}:whq"

    def _dead_key(self, tenant: str) -> str:
        return f"{self.coord._p}:{{w:{q(tenant)}}}:dead"

    async def _run(self) -> None:
        while True:
            try:
                if time.monotonic() - self._last_sweep > self.sweep_s:
                    self._last_sweep = time.monotonic()
                    await self.sweep()
                busy = await self.pass_once() + await self.send_agent_events()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop outlives any one failure; the cursors stay
                log.warning("webhooks: a pass failed (tried again): %s: %s", type(e).__name__, e)
                busy = 0
            if not busy:
                await asyncio.sleep(POLL_S)

    async def pass_once(self) -> int:
        r = self.coord.r
        now = int(time.time() * 1000)
        worked = 0
        for m, score in await r.zrangebyscore(self._queue(), "-inf", now, start=0, num=BATCH, withscores=True):
            tenant, conv = _split(m)
            lease, token = self.coord._ck(tenant, conv, "whlease"), self.leases.token()
            if not await self.leases.take(lease, token):
                continue
            try:
                later = await self.send_conversation(tenant, conv, lease, token)
            except LeaseLost:
                continue  # the node that took it over goes on from the cursor
            finally:
                await self.leases.release(lease, token)
            await self.leases.finish(self._queue(), m, score, later)
            worked += 1
        return worked

    async def send_conversation(self, tenant: str, conv: str, lease: str | None = None, token: str = "") -> int | None:
        """Every subscription of `tenant` brought up to the conversation's last seq; when to try again (ms), or
        None. `lease` is renewed before each delivery: a pass slower than LEASE_MS (a slow receiver) keeps
        it, and one that lost it stops (LeaseLost) before sending anything out of order or twice."""
        r = self.coord.r
        subs = self.by_tenant.get(tenant, [])
        wh = self.coord._ck(tenant, conv, "wh")
        raw = await r.hgetall(wh)
        state = {k.decode(): int(v) for k, v in raw.items()}
        last = await self.coord.last_seq(tenant, conv)
        again: int | None = None
        for sub in subs:
            cursor = state.get(f"wh:{sub.name}", 0)
            while cursor < last:
                entries, _ = await self.coord.read_after(tenant, conv, cursor, BATCH)
                if not entries:
                    break
                stop = False
                for e in entries:
                    for kind in (k for k in event_types(e) if k in sub.events):
                        assert self._http is not None
                        if lease is not None:
                            await self.leases.renew(lease, token)
                        eid = event_id(tenant, conv, e["seq"], sub.name, kind)
                        error = await deliver(self._http, sub, eid, tenant, conv, e.get("ts", 0), e, kind)
                        if error is not None:
                            self.stats["failed_attempts"] += 1
                            attempts = state.get(f"n:{sub.name}", 0)
                            now = int(time.time() * 1000)
                            if now - e.get("ts", now) <= sub.max_age_s * 1000:
                                await r.hset(wh, f"n:{sub.name}", attempts + 1)
                                delay = min(BACKOFF_CAP_S, sub.backoff_s * 2 ** attempts) * random.uniform(0.5, 1.5)
                                due = now + int(delay * 1000)
                                again = due if again is None else min(again, due)
                                stop = True
                                break
                            await r.hset(self._dead_key(tenant), eid, orjson.dumps(
                                {"id": eid, "sub": sub.name, "tenant": tenant, "conv": conv, "seq": e["seq"],
                                 "created_ms": e.get("ts", 0), "attempts": attempts + 1, "error": error, "entry": e,
                                 "kind": kind}))
                            self.stats["dead"] += 1
                        else:
                            self.stats["delivered"] += 1
                    if stop:
                        break  # the cursor stays before this entry: its events go again, the same ids
                    cursor = e["seq"]
                    async with r.pipeline(transaction=False) as p:  # one slot: the conversation's
                        p.hset(wh, mapping={f"wh:{sub.name}": cursor, f"n:{sub.name}": 0})
                        p.expire(wh, CURSOR_TTL_S)
                        await p.execute()
                if stop:
                    break
        if again is None and await self.coord.last_seq(tenant, conv) > last:
            return int(time.time() * 1000)  # entries came during the pass: again at once
        return again

    async def send_agent_events(self) -> int:
        """Each tenant's `agent.status` events (the stream `P:{a:T}:events`, written with the agent by
        upsert_agent.lua), one node at a time per tenant, in stream order per subscription; how many sent."""
        r = self.coord.r
        sent = 0
        for tenant, subs in self.by_tenant.items():
            subs = [s for s in subs if "agent.status" in s.events]
            if not subs:
                continue
            stream, wh = self.coord._ak(tenant, "events"), self.coord._ak(tenant, "events:wh")
            lease, token = self.coord._ak(tenant, "events:lease"), self.leases.token()
            if not await self.leases.take(lease, token):
                continue
            try:
                state = {k.decode(): v.decode() for k, v in (await r.hgetall(wh)).items()}
                now = int(time.time() * 1000)
                for sub in subs:
                    if int(state.get(f"due:{sub.name}", 0)) > now:
                        continue  # in backoff
                    cursor = state.get(f"wh:{sub.name}", "0-0")
                    for sid, fields in await r.xrange(stream, f"({cursor}", "+", count=BATCH):
                        await self.leases.renew(lease, token)
                        e = orjson.loads(fields[b"e"])
                        eid = event_id(tenant, "", sid.decode(), sub.name)
                        assert self._http is not None
                        error = await deliver(self._http, sub, eid, tenant, "", e.get("ts", 0), e)
                        if error is not None and now - e.get("ts", now) <= sub.max_age_s * 1000:
                            attempts = int(state.get(f"n:{sub.name}", 0))
                            delay = min(BACKOFF_CAP_S, sub.backoff_s * 2 ** attempts) * random.uniform(0.5, 1.5)
                            await r.hset(wh, mapping={f"n:{sub.name}": attempts + 1, f"due:{sub.name}": now + int(delay * 1000)})
                            self.stats["failed_attempts"] += 1
                            break
                        if error is not None:
                            await r.hset(self._dead_key(tenant), eid, orjson.dumps(
                                {"id": eid, "sub": sub.name, "tenant": tenant, "conv": "", "seq": 0,
                                 "created_ms": e.get("ts", 0), "attempts": 1, "error": error, "entry": e}))
                            self.stats["dead"] += 1
                        else:
                            self.stats["delivered"] += 1
                            sent += 1
                        await r.hset(wh, mapping={f"wh:{sub.name}": sid.decode(), f"n:{sub.name}": 0, f"due:{sub.name}": 0})
            except LeaseLost:
                continue
            finally:
                await self.leases.release(lease, token)
        return sent

    async def sweep(self) -> None:
        """One node at a time: queue every conversation of a subscribed tenant whose log is past a cursor."""
        r = self.coord.r
        lease = f"{self.coord._p}:whsweep"
        if not await r.set(lease, self.coord.node_id, nx=True, px=max(int(self.sweep_s * 1000) - 100, 100)):
            return
        now = int(time.time() * 1000)
        for tenant, subs in self.by_tenant.items():
            prefix = f"{self.coord._p}:{{c:{q(tenant)}:"
            async for key in r.scan_iter(match=f"{prefix}*}}:meta", count=1000):
                conv = key.decode()[len(prefix):].rsplit("}:", 1)[0]
                from urllib.parse import unquote

                conv = unquote(conv)
                seq = int(await r.hget(key, "seq") or 0)
                wh = await r.hgetall(self.coord._ck(tenant, conv, "wh"))
                if any(int(wh.get(f"wh:{s.name}".encode(), 0)) < seq for s in subs):
                    await r.zadd(self._queue(), {member(tenant, conv): now}, nx=True)
                    self.stats["swept"] += 1

    async def dead_letters(self, tenant: str) -> list[dict[str, Any]]:
        rows = [orjson.loads(v) for v in (await self.coord.r.hgetall(self._dead_key(tenant))).values()]
        return sorted(({k: v for k, v in d.items() if k != "entry"} for d in rows), key=lambda d: (d["created_ms"], d["seq"]))

    async def replay(self, tenant: str, event_id_: str) -> bool:
        """Send a dead letter again now; it leaves the dead letters once its receiver took it."""
        raw = await self.coord.r.hget(self._dead_key(tenant), event_id_)
        if raw is None:
            return False
        d = orjson.loads(raw)
        sub = next((s for s in self.by_tenant.get(tenant, []) if s.name == d["sub"]), None)
        if sub is None or self._http is None:
            return False
        error = await deliver(self._http, sub, d["id"], tenant, d["conv"], d["created_ms"], d["entry"], d.get("kind"))
        if error is not None:
            raise aiohttp.ClientError(f"the receiver refused it again: {error}")
        await self.coord.r.hdel(self._dead_key(tenant), event_id_)
        return True


def _split(m: bytes | str) -> tuple[str, str]:
    from urllib.parse import unquote

    s = m.decode() if isinstance(m, bytes) else m
    t, c = s.split(":", 1)
    return unquote(t), unquote(c)

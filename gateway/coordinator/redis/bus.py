"""NodeBus on Redis: deliveries to the nodes holding the recipients (sharded pub/sub), one pipeline per loop turn; the end-to-end probe."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type

from ...retry import backoff
from ..base import DeliveryHandler
from .errors import UNREACHABLE
from .holders import HolderCache
from .lookups import HolderLookups
from .pipe import Pipe, Pipes

# Envelopes are reply Structs (gateway/replies.py) or log entries (maps): msgspec writes both.
_pack = msgspec.msgpack.Encoder().encode

log = logging.getLogger("gateway.redis")

class RedisNodeBus:
    """The `NodeBus` port of `RedisCoordinator` (coordinator.py), which provides the client `r`,
    the registered scripts and the key builders (keys.py)."""

    # delivery
    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._handler = handler

    _lookups: HolderLookups
    _holders: HolderCache
    _pipes: Pipes
    _forget: Callable[[str, str], None]  # drop a conversation's cached copy (conversations.py)
    _sub_pipe: Pipe  # the delivery subscription's connection

    async def deliver_remote(self, tenant: str, users: list[str], env: Any, encoded: bytes | None = None) -> None:
        by_node: dict[str, list[str]] = {}
        key = (tenant, env["conv"]) if encoded is not None else None  # a log entry: its conversation's holders
        holders = self._holders.get(key, users) if key is not None else None
        if holders is None:
            label = self._holders.label(key) if key is not None else None  # read before the lookups leave
            if len(users) == 1:
                holders = [await self._lookups.holders(tenant, users[0])]
            else:
                holders = await asyncio.gather(*(self._lookups.holders(tenant, u) for u in users))
            if label is not None:
                self._holders.put(key, label, users, holders)
        else:
            self.stats["holders_cached"] += 1
        for user, nodes in zip(users, holders, strict=True):
            if not nodes:
                self.stats["no_holder"] += 1
            for n in nodes:
                # Every holder, also one our view still counts as dead: it may be back (it has
                # re-registered: presence is written only by live nodes and removed by the reaper),
                # and a publish to a channel nobody hears costs nothing but the publish.
                if n != self.node_id:
                    by_node.setdefault(n, []).append(user)
        # An entry travels as its routing head and the JSON its clients get (no decoding and
        # re-encoding on the other side); anything else as itself.
        item = (tenant, None, {"t": env["t"], "conv": env["conv"], "seq": env["seq"]}, encoded) if encoded is not None \
            else (tenant, None, env, None)
        for node, us in by_node.items():
            self._outbox.setdefault(node, []).append((item[0], us, item[2], item[3]))
        if by_node:
            self._outbox_ready.set()

    async def _flusher(self) -> None:
        # One flusher, so publishes leave in the order deliveries were queued. Whatever queued
        # up while the previous pipeline was in flight leaves together: one publish per node.
        # A publish that fails is tried again with what queued meanwhile behind it (the entries
        # are acked: a connected recipient must get them without having to resume).
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            if self._outbox:
                try:
                    await self._flush()
                except UNREACHABLE:  # tenacity only once it failed: setting it up costs as much as a flush
                    async for attempt in AsyncRetrying(retry=retry_if_exception_type(UNREACHABLE), wait=backoff(),
                                                       stop=lambda _state: self._closing, reraise=False,
                                                       retry_error_callback=lambda _state: None):
                        with attempt:
                            await self._flush()

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        try:
            # Auto-pipelined (pipe.py): the publishes leave together, with whatever else this loop
            # turn asks of the same server.
            await asyncio.gather(*(self._pipes.call(ch, "SPUBLISH", ch, _pack(items))
                                   for ch, items in ((self._channel(n), i) for n, i in outbox.items())))
        except UNREACHABLE as e:
            for node, items in outbox.items():  # back in front of whatever queued meanwhile
                self._outbox[node] = items + self._outbox.get(node, [])
            log.warning("publish to %d nodes failed (%s: %s); trying again", len(outbox), type(e).__name__, e)
            raise
        except Exception:  # a bug, not an outage: dropped (entries are in the log), never retried forever
            log.exception("publish to %d nodes failed; %d items dropped", len(outbox), sum(map(len, outbox.values())))
            return
        self.stats["pipelines"] += 1
        self.stats["published"] += len(outbox)
        self.stats["delivered_items"] += sum(len(v) for v in outbox.values())

    async def _subscriber(self) -> None:
        channel = self._channel(self.node_id)
        delay = 0.05
        lost = False
        while not self._closing:
            # A connection of its own, made afresh for every attempt (after a cluster restart the
            # channel's slot may live elsewhere); its messages arrive in `_on_push` as they are read.
            pipe = None
            try:
                if lost and self._cluster:
                    await self.r.nodes_manager.initialize()  # learn where the channel's slot is now
                pipe = self._sub_pipe = self._pipes.dedicated(channel, self._on_push)
                await pipe.call("SSUBSCRIBE", channel)
                conn = await pipe.connection()
                self._subscribed.set()
                delay = 0.05
                if lost and self._rejoin is not None:
                    # Whatever was published to us while unsubscribed is only in the logs: the
                    # hub re-registers its users and catches every connection up from there
                    # (a failure here counts as a lost subscription: tried again).
                    await self._rejoin()
                lost = False
                await conn.gone
                raise conn.lost or ConnectionError("subscription closed")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure (cluster errors are no RedisError): resubscribe
                self._subscribed.clear()
                lost = True
                self.health_state = {"ok": False, "reason": f"subscription lost: {e}"}
                log.warning("delivery subscription lost (%s: %s); resubscribing", type(e).__name__, e)
            finally:
                if pipe is not None:
                    pipe.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _on_push(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind = reply[0]
        if kind == b"smessage":
            try:
                self._on_message(reply[2])
            except Exception:  # a bad message must not end the subscription
                log.exception("bad delivery message dropped")
        elif kind == b"sunsubscribe":
            # The channel's slot moved (resharding): subscribe again where it lives now.
            log.warning("delivery channel unsubscribed by the server; resubscribing")
            self._sub_pipe.close()

    def _on_message(self, data: bytes) -> None:
        items = msgpack.unpackb(data, raw=False)
        self.stats["received_items"] += len(items)
        for tenant, users, env, encoded in items:
            if isinstance(env, dict) and env.get("t") == "_probe":
                fut = self._probe_waiters.pop(env.get("nonce"), None)
                if fut and not fut.done():
                    fut.set_result(None)
                continue
            if isinstance(env, dict) and env.get("t") == "_forget":  # erased (transcripts.py): drop our copies
                for conv_id in env.get("convs", ()):
                    self._forget(tenant, conv_id)
                continue
            if self._handler is not None:
                self._handler(tenant, users, env, encoded)

    async def forget_everywhere(self, tenant: str, conv_ids: list[str]) -> None:
        """Every live node drops its cached copies of these conversations (after an erasure)."""
        if not conv_ids:
            return
        item = _pack([(tenant, [], {"t": "_forget", "convs": conv_ids}, None)])
        for node in sorted(self._live_nodes | {self.node_id}):
            ch = self._channel(node)
            await self._pipes.call(ch, "SPUBLISH", ch, item)

    async def _probe(self) -> None:
        """Prove end to end delivery: publish to our own channel and receive it."""
        nonce = os.urandom(8).hex()
        fut = asyncio.get_running_loop().create_future()
        self._probe_waiters[nonce] = fut
        try:
            await self.r.spublish(self._channel(self.node_id), _pack([("", [], {"t": "_probe", "nonce": nonce}, None)]))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives as
            # the probe comes back, and the loop then never stops (a hung shutdown, seen in tests).
            async with asyncio.timeout(2.0):
                await fut
            self._probe_misses = 0
            self.health_state = {"ok": True, "live_nodes": len(self._live_nodes)}
        except TimeoutError:
            # One late probe is a busy loop (a storm of handshakes); a broken subscription loses
            # every probe. Not ready after two in a row.
            self._probe_misses += 1
            if self._probe_misses >= 2:
                self.health_state = {"ok": False, "reason": "delivery probe not received"}
        finally:
            self._probe_waiters.pop(nonce, None)

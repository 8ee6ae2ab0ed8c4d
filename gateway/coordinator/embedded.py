"""In-process coordinator for a single node: the default, no Redis needed.

All state is in dictionaries on the event loop thread. Methods never await
before they have finished mutating, so each one is atomic with respect to other
coroutines; the segment locks still exist because routing holds them across
several calls.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson

from routing.load_index import make_load_index

from .base import Agent, Conversation, Coordinator, DeliveryHandler

_pack = orjson.dumps
_unpack = orjson.loads


class _Log:
    # Entries are kept encoded: bytes are invisible to the garbage collector, so a node holding
    # millions of log entries doesn't pay for them in every full collection (relay p99).
    __slots__ = ("entries", "first", "ids")

    def __init__(self) -> None:
        self.entries: deque[bytes] = deque()
        self.first = 1  # seq of entries[0]
        self.ids: OrderedDict[tuple[str, str], int] = OrderedDict()  # (sender, client id) -> seq, trimmed with the log


class EmbeddedCoordinator(Coordinator):
    # No asyncio.timeout inside: the hub may start handlers inline, and run `msg` through the
    # synchronous peek_now / append_now / seq_of_now (docs/hub.md, steps 4-6a).
    eager_safe = True
    def __init__(self, node_id: str = "embedded", *, history_keep: int = 10_000, lock_segments: int = 1024):
        self.node_id = node_id
        self._keep = history_keep
        self._locks = [asyncio.Lock() for _ in range(lock_segments)]
        self._convs: dict[tuple[str, str], Conversation] = {}
        self._logs: dict[tuple[str, str], _Log] = {}
        self._open_of: dict[tuple[str, str], str] = {}
        self._sticky: dict[tuple[str, str], str] = {}
        self._agents: dict[tuple[str, str], Agent] = {}
        self._agent_convs: dict[tuple[str, str], set[str]] = {}
        self._index = make_load_index()
        self._queues: dict[tuple[str, str], deque[str]] = {}
        self._present: set[tuple[str, str]] = set()

    @asynccontextmanager
    async def lock(self, tenant: str, key: str):
        # crc32 is stable across processes, unlike hash(); the Redis coordinator uses the same segments.
        async with self._locks[zlib.crc32(f"{tenant}\0{key}".encode()) % len(self._locks)]:
            yield

    # conversations
    async def create_conversation(self, conv: Conversation) -> Conversation:
        key = (conv.tenant, conv.id)
        if key in self._convs:
            raise ValueError(f"conversation {conv.id} exists")
        self._convs[key] = conv.copy()
        self._logs[key] = _Log()
        self._open_of[(conv.tenant, conv.visitor)] = conv.id
        self._track(None, conv)
        return conv

    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        c = self._convs.get((tenant, conv_id))
        return c.copy() if c else None

    async def peek_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        return self.peek_now(tenant, conv_id)

    def peek_now(self, tenant: str, conv_id: str) -> Conversation | None:
        """`peek_conversation` without a coroutine, for the hub's inline path."""
        return self._convs.get((tenant, conv_id))  # no copy: read-only callers (every message)

    async def save_conversation(self, conv: Conversation) -> None:
        key = (conv.tenant, conv.id)
        old = self._convs.get(key)
        self._convs[key] = conv.copy()
        self._track(old, conv)
        if conv.state == "closed" and self._open_of.get((conv.tenant, conv.visitor)) == conv.id:
            del self._open_of[(conv.tenant, conv.visitor)]

    def _track(self, old: Conversation | None, new: Conversation) -> None:
        if old and old.agent:
            self._agent_convs.get((old.tenant, old.agent), set()).discard(old.id)
        if new.agent and new.state == "assigned":
            self._agent_convs.setdefault((new.tenant, new.agent), set()).add(new.id)

    async def open_conversation_of(self, tenant: str, visitor: str) -> str | None:
        return self._open_of.get((tenant, visitor))

    async def conversations_of_agent(self, tenant: str, agent: str) -> list[str]:
        return sorted(self._agent_convs.get((tenant, agent), ()))

    async def sticky_agent(self, tenant: str, visitor: str) -> str | None:
        return self._sticky.get((tenant, visitor))

    async def set_sticky_agent(self, tenant: str, visitor: str, agent: str) -> None:
        self._sticky[(tenant, visitor)] = agent

    # the log
    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None) -> tuple[int, bool]:
        seq, dup, _ = self.append_now(tenant, conv_id, entry, client_id)
        return seq, dup

    async def seq_of(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        return self.seq_of_now(tenant, conv_id, sender, client_id)

    def seq_of_now(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        """The seq the log gave `sender`'s `client_id`, while its entry is kept."""
        log = self._logs.get((tenant, conv_id))
        return None if log is None else log.ids.get((sender, client_id))

    def append_now(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None) -> tuple[int, bool, bytes]:
        """`append` without a coroutine, also returning the entry as stored (its JSON encoding), for the hub's inline path."""
        log = self._logs.get((tenant, conv_id))
        if log is None:
            raise KeyError(conv_id)
        if client_id is not None:
            client_id = (entry["from"], client_id)  # ids are per sender; a tuple is the cheapest exact key
            seq = log.ids.get(client_id)
            if seq is not None:
                return seq, True, b""
        seq = log.first + len(log.entries)
        entry["seq"] = seq
        packed = _pack(entry)
        log.entries.append(packed)
        if client_id is not None:
            log.ids[client_id] = seq
        if len(log.entries) > self._keep:
            while len(log.entries) > self._keep:
                log.entries.popleft()
                log.first += 1
            while log.ids and next(iter(log.ids.values())) < log.first:
                log.ids.popitem(last=False)
        return seq, False, packed

    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        log = self._logs.get((tenant, conv_id))
        if log is None:
            return [], 1
        start = max(after + 1 - log.first, 0)
        out = [_unpack(log.entries[i]) for i in range(start, min(start + limit, len(log.entries)))]
        return out, log.first

    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        log = self._logs.get((tenant, conv_id))
        if log is None:
            return [], 1
        end = len(log.entries) if before is None else max(min(before - log.first, len(log.entries)), 0)
        return [_unpack(log.entries[i]) for i in range(max(end - limit, 0), end)], log.first

    async def last_seq(self, tenant: str, conv_id: str) -> int:
        log = self._logs.get((tenant, conv_id))
        return log.first + len(log.entries) - 1 if log else 0

    # agents
    def _ikey(self, tenant: str, agent_id: str) -> str:
        return f"{tenant}\0{agent_id}"

    async def upsert_agent(self, agent: Agent) -> Agent:
        key = (agent.tenant, agent.id)
        old = self._agents.get(key)
        agent = replace(agent, load=old.load if old else 0)
        self._agents[key] = agent
        self._index.upsert(
            self._ikey(agent.tenant, agent.id),
            [f"{agent.tenant}\0{g}" for g in agent.groups],
            agent.capacity,
            agent.available,
        )
        return replace(agent)

    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        a = self._agents.get((tenant, agent_id))
        return replace(a) if a else None

    async def reserve_agent(self, tenant: str, group: str, prefer: str | None = None) -> str | None:
        if prefer is not None:
            a = self._agents.get((tenant, prefer))
            if a and group in a.groups and self._index.acquire(self._ikey(tenant, prefer)):
                a.load += 1
                return prefer
        picked = self._index.pick(f"{tenant}\0{group}")
        if picked is None:
            return None
        agent_id = picked.split("\0", 1)[1]
        if not self._index.acquire(picked):  # pick and acquire disagree only on a bug
            raise RuntimeError(f"load index picked {agent_id} but could not charge it")
        self._agents[(tenant, agent_id)].load += 1
        return agent_id

    async def release_agent(self, tenant: str, agent_id: str) -> None:
        a = self._agents.get((tenant, agent_id))
        if a and a.load > 0:
            a.load -= 1
            self._index.release(self._ikey(tenant, agent_id))

    # queues
    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None:
        q = self._queues.setdefault((tenant, group), deque())
        if conv_id in q:
            return
        q.appendleft(conv_id) if front else q.append(conv_id)

    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool:
        q = self._queues.get((tenant, group))
        if q and conv_id in q:
            q.remove(conv_id)
            return True
        return False

    async def queue_head(self, tenant: str, group: str) -> str | None:
        q = self._queues.get((tenant, group))
        return q[0] if q else None

    async def queue_list(self, tenant: str, group: str) -> list[str]:
        return list(self._queues.get((tenant, group), ()))

    # delivery: one node holds everyone, so nothing is remote
    async def deliver_remote(self, tenant: str, users: list[str], env: dict[str, Any]) -> None:
        return None

    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._handler = handler

    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        if present:
            self._present.add((tenant, user))
        else:
            self._present.discard((tenant, user))
        return int((tenant, user) in self._present)

    async def is_present(self, tenant: str, user: str) -> bool:
        return (tenant, user) in self._present

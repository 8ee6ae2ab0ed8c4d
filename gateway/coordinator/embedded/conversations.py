"""ConversationState in one process: conversations, a visitor's open one, an agent's, sticky agents."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from routing.model import Conversation

from ..ports import ConversationState
from .store import Store

# With a store, at most this many closed conversations stay in memory (the newest), whatever
# `closed_keep_s` says.
CLOSED_KEEP_MAX = 10_000
# What a closed conversation kept in memory costs, for the memory budget: its state, log object
# and client ids. tracemalloc (python /tmp-style count over 2,000 conversations) gives ~1,040 bytes
# plus ~105 per client id; these are that times 1.5, for the allocator's overhead in RSS
# (bench/results/20261129T-issue13).
CLOSED_BASE_BYTES = 1_600
CLOSED_ID_BYTES = 160


class MemoryConversations(ConversationState):
    """Conversations are kept as private copies; readers get copies (`peek_*` excepted: read-only).

    A conversation's log is made with it (`_new_log`, from the log's module).
    """

    _new_log: Callable[[tuple[str, str]], None]
    _forget_log: Callable[[tuple[str, str]], None]
    _shed_entries: Callable[[tuple[str, str]], None]
    _store: Store | None
    _logs: dict[tuple[str, str], Any]
    _closed_budget: int  # bytes (0: no limit), set with the logs' budget (log.py)

    def _init_conversations(self) -> None:
        self._convs: dict[tuple[str, str], Conversation] = {}
        self._open_of: dict[tuple[str, str], str] = {}
        self._sticky: dict[tuple[str, str], str] = {}
        self._agent_convs: dict[tuple[str, str], set[str]] = {}
        # Open conversations by (tenant, state), for the supervisor's view (supervision.py); closed
        # ones are not counted (with a store most of them are not in memory).
        self._state_counts: dict[tuple[str, str], int] = {}
        # (when, key, estimated bytes) of conversations closed and still in memory, oldest first
        self._closed: deque[tuple[float, tuple[str, str], int]] = deque()
        self._closed_bytes = 0

    async def create_conversation(self, conv: Conversation) -> Conversation:
        key = (conv.tenant, conv.id)
        if key in self._convs:
            raise ValueError(f"conversation {conv.id} exists")
        if self._store is not None:
            self._store.save_conversation(conv, 0)  # written ahead: Unavailable leaves nothing behind
        self._convs[key] = conv.copy()
        self._new_log(key)
        self._open_of[(conv.tenant, conv.visitor)] = conv.id
        self._track(None, conv)
        return conv

    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        c = self.peek_now(tenant, conv_id)
        return c.copy() if c else None

    async def peek_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        return self.peek_now(tenant, conv_id)

    def peek_now(self, tenant: str, conv_id: str) -> Conversation | None:
        """`peek_conversation` without a coroutine, for the hub's inline path.

        With a store, a closed conversation is not in memory (`save_conversation` let it go): it is
        read from the store for the caller, and not kept.
        """
        c = self._convs.get((tenant, conv_id))  # no copy: read-only callers (every message)
        if c is None and self._store is not None:
            c = self._store.conversation(tenant, conv_id)
        return c

    async def save_conversation(self, conv: Conversation) -> None:
        key = (conv.tenant, conv.id)
        old = self.peek_now(conv.tenant, conv.id)
        version = old.version + 1 if old else 0
        if self._store is not None:
            self._store.save_conversation(conv, version)
        conv.version = version
        self._convs[key] = conv.copy()
        self._track(old, conv)
        if conv.state == "closed" and self._open_of.get((conv.tenant, conv.visitor)) == conv.id:
            del self._open_of[(conv.tenant, conv.visitor)]
        if conv.state == "closed" and self._store is not None:
            # On disk (once this turn's entries are: a failed commit must find its entries to take back);
            # only its client ids are needed in memory now.
            self._store.when_durable(self._shed_entries, (key,), lambda _e: None)
            log = self._logs.get(key)
            cost = CLOSED_BASE_BYTES + CLOSED_ID_BYTES * (len(log.ids) if log is not None else 0)
            self._closed.append((time.monotonic(), key, cost))  # leaves memory later (evict_closed)
            self._closed_bytes += cost
            if len(self._closed) > CLOSED_KEEP_MAX or (self._closed_budget and self._closed_bytes > self._closed_budget):
                self.evict_closed(float("inf"))

    def evict_closed(self, older_than_s: float) -> int:
        """With a store: conversations closed at least `older_than_s` ago leave memory, state and log
        (the store answers for them from now on). Returns how many left.

        Not at once: a retry of a message sent just before the close must still find its client id.
        """
        if self._store is None:
            return 0
        horizon = time.monotonic() - older_than_s
        gone = 0
        # The oldest first; past `CLOSED_KEEP_MAX` of them, whatever their age (a busy node closes
        # thousands a minute: memory must not hold ten minutes of them).
        # And past a quarter of the memory budget (`_closed_budget`; the logs have the rest).
        while self._closed and (self._closed[0][0] <= horizon or len(self._closed) > CLOSED_KEEP_MAX
                                or (self._closed_budget and self._closed_bytes > self._closed_budget)):
            _, key, cost = self._closed.popleft()
            self._closed_bytes -= cost
            c = self._convs.get(key)
            if c is not None and c.state == "closed":
                del self._convs[key]
                self._forget_log(key)
                self._store.forget(*key)
                gone += 1
        return gone

    def _restore_conversation(self, conv: Conversation) -> None:
        """An open conversation as the store had it (its log is restored by the log's module); closed ones stay on disk."""
        self._convs[(conv.tenant, conv.id)] = conv
        self._open_of[(conv.tenant, conv.visitor)] = conv.id
        self._track(None, conv)

    def _track(self, old: Conversation | None, new: Conversation) -> None:
        counts = self._state_counts
        if old is not None and old.state != "closed":
            counts[(old.tenant, old.state)] = counts.get((old.tenant, old.state), 1) - 1
        if new.state != "closed":
            counts[(new.tenant, new.state)] = counts.get((new.tenant, new.state), 0) + 1
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
        if self._store is not None:
            self._store.save_sticky(tenant, visitor, agent)
        self._sticky[(tenant, visitor)] = agent


"""The embedded coordinator: every port in this process, for a single node (the default).

All state is in dictionaries on the event loop thread. Methods never await before they
have finished mutating, so each one is atomic with respect to other coroutines; the
segment locks still exist because routing holds them across several calls. One module
per port, as the Redis side (gateway/coordinator/redis/).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..base import Coordinator, Unavailable
from ..retention import Retention
from .agents import MemoryAgentsAndQueue
from .api_keys import MemoryApiKeys
from .contacts import MemoryContacts
from .conversations import MemoryConversations
from .locks import MemoryLocks
from .log import MemoryLog
from .presence import MemoryPresence
from .store import Store, StoreError
from .supervision import MemorySupervision
from .transcripts import MemoryTranscripts

__all__ = ["EmbeddedCoordinator", "Retention", "Store", "StoreError"]

log = logging.getLogger("gateway.store")

# With a store, a closed conversation leaves memory this long after it closed (the dedup window:
# a retry of a message sent just before the close still finds its client id); checked every SWEEP_S.
CLOSED_KEEP_S = 600.0
SWEEP_S = 30.0


class EmbeddedCoordinator(MemoryLocks, MemoryConversations, MemoryLog, MemoryAgentsAndQueue, MemoryPresence,
                          MemoryTranscripts, MemoryApiKeys, MemoryContacts, MemorySupervision, Coordinator):
    # No asyncio.timeout inside: the hub may start handlers inline, and run `msg` through the
    # synchronous peek_now / append_now / seq_of_now (docs/hub.md, steps 4-6a).
    eager_safe = True

    def __init__(self, node_id: str = "embedded", *, history_keep: int = 10_000, lock_segments: int = 1024,
                 store: Store | None = None, closed_keep_s: float = CLOSED_KEEP_S, retention: Retention | None = None,
                 memory_budget_bytes: int = 0):
        """`store`: the node's database (store.py), opened and read back by `start`; None keeps everything in
        memory only. `closed_keep_s`: with a store, how long a closed conversation stays in memory (seconds).
        `retention`: how long closed conversations are kept at all (None: for ever). `memory_budget_bytes`: with
        a store, the most bytes of log entries kept in memory (0: no limit; log.py `_shed_over_budget`)."""
        self.node_id = node_id
        self._store = store
        self._retention = retention
        self._closed_keep_s = closed_keep_s
        self._sweeper: asyncio.TimerHandle | None = None
        self._init_locks(lock_segments)
        self._init_logs(history_keep, memory_budget_bytes)
        self._init_conversations()
        self._init_agents()
        self._init_presence()
        self._init_api_keys()
        self._init_contacts()

    @property
    def stats(self) -> dict[str, int]:
        if self._store is None:
            return {}
        return {**self._store.stats, "log_bytes": self._log_bytes, "budget_sheds": self.budget_sheds}

    async def start(self) -> None:
        """Lock the data directory and read back what it holds (StoreError if it can't be used)."""
        if self._store is None:
            return
        snap = self._store.open(self._keep)
        for conv in snap.conversations:
            if conv.state == "closed":  # read from the store when asked for (conversations.py)
                continue
            key = (conv.tenant, conv.id)
            self._restore_conversation(conv)
            self._restore_log(key, snap.last_seq.get(key, 0), snap.entries.get(key, []))
        for agent in snap.agents:
            self._restore_agent(agent, len(self._agent_convs.get((agent.tenant, agent.id), ())))
        self._sticky.update(snap.sticky)
        for (tenant, group), convs in snap.queues.items():
            self._restore_queue(tenant, group, convs)
        self._restore_api_keys()
        self._restore_contacts()
        self._sweep()

    def shed_memory(self) -> None:
        """The memory guard's soft line: closed conversations leave memory now, and every committed
        log entry held in memory (the store answers for both). Memory only: nothing can go."""
        if self._store is None:
            return
        self.evict_closed(0.0)
        self._shed_over_budget(0)

    def _sweep(self) -> None:
        self.evict_closed(self._closed_keep_s)
        if self._retention is not None and self._retention.any():
            try:
                self.expire(int(time.time() * 1000))
            except Unavailable as e:  # the store can't write now: the next sweep tries again
                log.warning("retention sweep: %s", e)
        self._sweeper = asyncio.get_running_loop().call_later(min(SWEEP_S, max(self._closed_keep_s, 0.1)), self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._store is not None:
            self._store.close()

    def agents_away(self) -> list[tuple[str, str]]:
        """Agents holding conversations with no connection here (after a restart): they get their grace period."""
        return [(t, a) for (t, a), convs in self._agent_convs.items()
                if convs and not getattr(self._agents.get((t, a)), "connected", False)]

"""The embedded coordinator: every port in this process, for a single node (the default).

All state is in dictionaries on the event loop thread. Methods never await before they
have finished mutating, so each one is atomic with respect to other coroutines; the
segment locks still exist because routing holds them across several calls. One module
per port, as the Redis side (gateway/coordinator/redis/).
"""

from __future__ import annotations

from collections import deque

from ..base import Coordinator
from .agents import MemoryAgentsAndQueue
from .conversations import MemoryConversations
from .locks import MemoryLocks
from .log import MemoryLog
from .presence import MemoryPresence
from .store import Store, StoreError

__all__ = ["EmbeddedCoordinator", "Store", "StoreError"]


class EmbeddedCoordinator(MemoryLocks, MemoryConversations, MemoryLog, MemoryAgentsAndQueue, MemoryPresence, Coordinator):
    # No asyncio.timeout inside: the hub may start handlers inline, and run `msg` through the
    # synchronous peek_now / append_now / seq_of_now (docs/hub.md, steps 4-6a).
    eager_safe = True

    def __init__(self, node_id: str = "embedded", *, history_keep: int = 10_000, lock_segments: int = 1024,
                 store: Store | None = None):
        """`store`: the node's database (store.py), opened and read back by `start`; None keeps everything in memory only."""
        self.node_id = node_id
        self._store = store
        self._init_locks(lock_segments)
        self._init_logs(history_keep)
        self._init_conversations()
        self._init_agents()
        self._init_presence()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._store.stats) if self._store is not None else {}

    async def start(self) -> None:
        """Lock the data directory and read back what it holds (StoreError if it can't be used)."""
        if self._store is None:
            return
        snap = self._store.open(self._keep)
        for conv in snap.conversations:
            key = (conv.tenant, conv.id)
            self._restore_conversation(conv)
            self._restore_log(key, snap.last_seq.get(key, 0), snap.entries.get(key, []))
        for agent in snap.agents:
            self._restore_agent(agent, len(self._agent_convs.get((agent.tenant, agent.id), ())))
        self._sticky.update(snap.sticky)
        for key, convs in snap.queues.items():
            self._queues[key] = deque(convs)

    async def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def agents_away(self) -> list[tuple[str, str]]:
        """Agents holding conversations with no connection here (after a restart): they get their grace period."""
        return [(t, a) for (t, a), convs in self._agent_convs.items()
                if convs and not getattr(self._agents.get((t, a)), "connected", False)]

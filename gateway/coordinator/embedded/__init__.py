"""The embedded coordinator: every port in this process, for a single node (the default).

All state is in dictionaries on the event loop thread. Methods never await before they
have finished mutating, so each one is atomic with respect to other coroutines; the
segment locks still exist because routing holds them across several calls. One module
per port, as the Redis side (gateway/coordinator/redis/).
"""

from __future__ import annotations

from ..base import Coordinator
from .agents import MemoryAgentsAndQueue
from .conversations import MemoryConversations
from .locks import MemoryLocks
from .log import MemoryLog
from .presence import MemoryPresence

__all__ = ["EmbeddedCoordinator"]


class EmbeddedCoordinator(MemoryLocks, MemoryConversations, MemoryLog, MemoryAgentsAndQueue, MemoryPresence, Coordinator):
    # No asyncio.timeout inside: the hub may start handlers inline, and run `msg` through the
    # synchronous peek_now / append_now / seq_of_now (docs/hub.md, steps 4-6a).
    eager_safe = True

    def __init__(self, node_id: str = "embedded", *, history_keep: int = 10_000, lock_segments: int = 1024):
        self.node_id = node_id
        self._init_locks(lock_segments)
        self._init_logs(history_keep)
        self._init_conversations()
        self._init_agents()
        self._init_presence()

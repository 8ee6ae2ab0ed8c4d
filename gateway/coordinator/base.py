"""Shared state's data types, and the coordinator: every port of ports.py in one object.

`embedded` keeps the state in-process for a single node, `redis` (cluster mode) keeps
it in Redis. Both pass tests/test_coordinator_contract.py, grouped by port.

Atomicity contract:
- `append` allocates the next seq and records the client id in one step; a
  repeated client id *of the same sender* (the entry's `from`) returns the first
  seq with duplicate=True. Each client picks its own ids, so the same id from
  another sender is another message.
- `reserve_agent` picks and charges an agent slot in one step, so two callers can
  never push an agent past its capacity.
- Conversation state changes are made while holding `lock(tenant, conv)` (or
  `lock(tenant, "queue:" + group)` for queue draining); the lock is a segment
  lock, so unrelated conversations rarely contend.
"""

from __future__ import annotations

from typing import Any

from routing.model import Agent, Conversation

from .ports import (
    AgentsAndQueue,
    ApiKeys,
    Contacts,
    ConversationLog,
    ConversationState,
    DeliveryHandler,
    Locks,
    NodeBus,
    Presence,
    Supervision,
    SyncLog,
    Transcripts,
)

__all__ = ["Agent", "AgentsAndQueue", "Conversation", "ConversationLog", "ConversationState", "Coordinator",
           "DeliveryHandler", "Locks", "NodeBus", "Presence", "StaleState", "Supervision", "SyncLog", "Transcripts", "Unavailable", "idempotency_key"]


def agent_event(agent: Agent) -> dict[str, Any]:
    """The `agent.status` webhook event's data (gateway/webhooks.py) for an agent whose status or
    connection changed: kept with the agent's own write, in the embedded store's outbox or in Redis's
    `P:{a:T}:events` stream."""
    import time

    return {"t": "agent", "agent": agent.id, "status": agent.status, "connected": agent.connected,
            "available": agent.available, "ts": int(time.time() * 1000)}


def idempotency_key(sender: str, client_id: str) -> str:
    """Where the log remembers a client message id: per sender, since each client picks its own.

    Length-prefixed, so no two (sender, id) pairs share a key whatever characters they hold.
    """
    return f"{len(sender)}:{sender}:{client_id}"


class Unavailable(Exception):
    """Shared state can't be reached; the node refuses new work instead of guessing."""


class StaleState(Exception):
    """A conditional append (`if_version`) found the conversation changed since it was read."""


class Coordinator(Locks, ConversationState, ConversationLog, AgentsAndQueue, NodeBus, Presence, Transcripts, ApiKeys, Contacts,
                  Supervision):
    """Every port at once, as each implementation provides them today (ports.py)."""

    node_id: str

    async def start(self) -> None:  # noqa: B027 - optional hook; embedded has nothing to connect
        """Connect, register the node; called once before serving."""

    async def close(self) -> None:  # noqa: B027
        """Deregister and release resources."""

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

    def shed_memory(self) -> None:  # noqa: B027 - optional hook; Redis holds nothing it could drop
        """The memory guard's soft line (gateway/memory_guard.py): drop from memory what the store
        answers for. Never anything not yet durable."""

    def counters(self) -> dict[str, int]:
        """What the coordinator has done so far (name -> count since start), for /admin/stats."""
        return dict(getattr(self, "stats", {}))

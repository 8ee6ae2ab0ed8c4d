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

from dataclasses import asdict, dataclass, field
from typing import Any

from .ports import (
    AgentsAndQueue,
    ConversationLog,
    ConversationState,
    DeliveryHandler,
    Locks,
    NodeBus,
    Presence,
    SyncLog,
)

__all__ = ["Agent", "AgentsAndQueue", "Conversation", "ConversationLog", "ConversationState", "Coordinator",
           "DeliveryHandler", "Locks", "NodeBus", "Presence", "SyncLog", "Unavailable", "idempotency_key"]


def idempotency_key(sender: str, client_id: str) -> str:
    """Where the log remembers a client message id: per sender, since each client picks its own.

    Length-prefixed, so no two (sender, id) pairs share a key whatever characters they hold.
    """
    return f"{len(sender)}:{sender}:{client_id}"


class Unavailable(Exception):
    """Shared state can't be reached; the node refuses new work instead of guessing."""


@dataclass
class Conversation:
    id: str
    tenant: str
    visitor: str
    group: str
    state: str = "queued"
    agent: str | None = None
    created_ms: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    # When the current agent got it (wall clock, microseconds): an agent's conversations
    # return to the queue in this order (docs/routing.md step 7).
    assigned_us: int = 0
    # The agent that transferred it to a group: not given it back while another agent can take it.
    avoid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conversation:
        return cls(**d)

    def copy(self) -> Conversation:
        """A private copy (meta included); far cheaper than dataclasses.replace on the hot path."""
        c = object.__new__(Conversation)
        c.__dict__.update(self.__dict__)
        c.meta = dict(self.meta)
        return c

    def participants(self) -> tuple[str, ...]:
        return (self.visitor, self.agent) if self.agent else (self.visitor,)


@dataclass
class Agent:
    tenant: str
    id: str
    groups: tuple[str, ...]
    capacity: int
    status: str = "offline"  # online | away | offline (as set by the agent)
    connected: bool = False
    load: int = 0

    @property
    def available(self) -> bool:
        return self.connected and self.status == "online"


class Coordinator(Locks, ConversationState, ConversationLog, AgentsAndQueue, NodeBus, Presence):
    """Every port at once, as each implementation provides them today (ports.py)."""

    node_id: str

    async def start(self) -> None:  # noqa: B027 - optional hook; embedded has nothing to connect
        """Connect, register the node; called once before serving."""

    async def close(self) -> None:  # noqa: B027
        """Deregister and release resources."""

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

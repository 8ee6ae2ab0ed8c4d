"""The coordinator: the one interface to state shared between nodes.

Callers (the hub, routing) see only this interface; `embedded` keeps the state
in-process for a single node, `redis` (cluster mode) keeps it in Redis. Both must
pass tests/test_coordinator_contract.py. Every method is a coroutine so the
Redis implementation fits without changing any caller.

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

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any


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


# A remote delivery: (tenant, users, envelope) handed to the node holding them.
DeliveryHandler = Callable[[str, list[str], dict[str, Any]], Awaitable[None] | None]


class Coordinator(ABC):
    node_id: str

    async def start(self) -> None:  # noqa: B027 - optional hook; embedded has nothing to connect
        """Connect, register the node; called once before serving."""

    async def close(self) -> None:  # noqa: B027
        """Deregister and release resources."""

    @abstractmethod
    def lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        """Segment lock for conversation `key` (or a queue key); see the module docstring."""

    # conversations
    @abstractmethod
    async def create_conversation(self, conv: Conversation) -> Conversation: ...

    @abstractmethod
    async def get_conversation(self, tenant: str, conv_id: str) -> Conversation | None: ...

    async def peek_conversation(self, tenant: str, conv_id: str) -> Conversation | None:
        """Like get_conversation, for callers that only read: the result must not be mutated."""
        return await self.get_conversation(tenant, conv_id)

    @abstractmethod
    async def save_conversation(self, conv: Conversation) -> None:
        """Write the state of `conv`; the caller holds its lock."""

    @abstractmethod
    async def open_conversation_of(self, tenant: str, visitor: str) -> str | None:
        """The visitor's open (not closed) conversation id, if any."""

    @abstractmethod
    async def conversations_of_agent(self, tenant: str, agent: str) -> list[str]: ...

    @abstractmethod
    async def sticky_agent(self, tenant: str, visitor: str) -> str | None: ...

    @abstractmethod
    async def set_sticky_agent(self, tenant: str, visitor: str, agent: str) -> None: ...

    # the log
    @abstractmethod
    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None) -> tuple[int, bool]:
        """Append entry (its `seq` is set here); returns (seq, duplicate).

        With a `client_id`, an entry whose sender (`entry["from"]`) already appended that id
        is not appended again: the answer is the first seq and duplicate=True.
        """

    @abstractmethod
    async def seq_of(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        """The seq `append` gave `sender`'s `client_id` in this conversation, while its entry is kept; else None."""

    @abstractmethod
    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Entries with seq > after, ascending, at most limit; and the oldest seq still kept (last+1 if none)."""

    @abstractmethod
    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The `limit` entries just before seq `before` (newest when None), ascending; and the oldest seq kept."""

    @abstractmethod
    async def last_seq(self, tenant: str, conv_id: str) -> int: ...

    # agents and their load
    @abstractmethod
    async def upsert_agent(self, agent: Agent) -> Agent:
        """Create or update an agent's groups, capacity, status and connectedness; its load is kept."""

    @abstractmethod
    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None: ...

    @abstractmethod
    async def reserve_agent(self, tenant: str, group: str, prefer: str | None = None) -> str | None:
        """Charge one slot of an available agent: `prefer` if it is in the group with room, else the least-loaded."""

    @abstractmethod
    async def release_agent(self, tenant: str, agent_id: str) -> None: ...

    # the waiting queue, one FIFO per (tenant, group)
    @abstractmethod
    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None: ...

    @abstractmethod
    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool: ...

    @abstractmethod
    async def queue_head(self, tenant: str, group: str) -> str | None: ...

    @abstractmethod
    async def queue_list(self, tenant: str, group: str) -> list[str]: ...

    # delivery to other nodes
    @abstractmethod
    async def deliver_remote(self, tenant: str, users: list[str], env: dict[str, Any]) -> None:
        """Hand `env` to the nodes that hold `users` but not this node."""

    @abstractmethod
    def on_delivery(self, handler: DeliveryHandler) -> None:
        """Register the node's handler for deliveries from other nodes."""

    # presence
    @abstractmethod
    async def set_present(self, tenant: str, user: str, present: bool, role: str = "") -> int:
        """Record that this node holds (or no longer holds) a connection of `user`.

        Returns how many live nodes hold the user afterwards (this one included).
        """

    @abstractmethod
    async def is_present(self, tenant: str, user: str) -> bool:
        """Does any live node hold a connection of `user`?"""

    def on_node_lost(self, handler: Callable[[list[tuple[str, str, str]]], Awaitable[None]]) -> None:  # noqa: B027
        """Register the handler told about (tenant, user, role) of a node that died; single-node: never."""

    def on_rejoin(self, handler: Callable[[], Awaitable[None]]) -> None:  # noqa: B027
        """Register the handler that re-registers this node's users after it was cut off; single-node: never."""

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

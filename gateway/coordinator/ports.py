"""The ports to shared state: one small interface per concern (ARCHITECTURE.md, Concepts).

`Coordinator` (base.py) is all of them together, as each implementation provides them
today; callers should name the port they use. Every method is a coroutine so that a
remote implementation fits without changing any caller, except `SyncLog`: the
synchronous fast path an in-process log offers (docs/hub.md, step 6a).

Contract tests: tests/test_coordinator_contract.py, grouped by port, run against every
implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .base import Agent, Conversation

# A remote delivery: (tenant, users, envelope) handed to the node holding them.
DeliveryHandler = Callable[[str, list[str], dict[str, Any]], Awaitable[None] | None]


class Locks(ABC):
    """Segment locks: lock index = hash(tenant, key) mod N, so unrelated keys rarely contend."""

    @abstractmethod
    def lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        """Segment lock for conversation `key` (or `"queue:" + group`); base.py's atomicity contract says who holds it."""


class ConversationState(ABC):
    """Conversations (state, participants, meta), a visitor's open one, an agent's, the sticky agent."""

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


class ConversationLog(ABC):
    """Each conversation's append-only log: seq 1, 2, 3, ...; idempotent per (sender, client id)."""

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


@runtime_checkable
class SyncLog(Protocol):
    """The synchronous fast path of a log held in this process (the embedded one).

    The same answers as `ConversationState.peek_conversation` and `ConversationLog.append` /
    `seq_of`, without a coroutine; `append_now` also returns the entry as stored (its JSON
    bytes), which is what is delivered. Implementations that offer it set `eager_safe`.
    """

    eager_safe: bool

    def peek_now(self, tenant: str, conv_id: str) -> Conversation | None: ...

    def append_now(self, tenant: str, conv_id: str, entry: dict[str, Any],
                   client_id: str | None = None) -> tuple[int, bool, bytes]: ...

    def seq_of_now(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None: ...


class AgentsAndQueue(ABC):
    """Agents with capacity and load (a slot is reserved atomically), and one FIFO queue per (tenant, group)."""

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

    @abstractmethod
    async def enqueue(self, tenant: str, group: str, conv_id: str, front: bool = False) -> None: ...

    @abstractmethod
    async def queue_remove(self, tenant: str, group: str, conv_id: str) -> bool: ...

    @abstractmethod
    async def queue_head(self, tenant: str, group: str) -> str | None: ...

    @abstractmethod
    async def queue_list(self, tenant: str, group: str) -> list[str]: ...


class NodeBus(ABC):
    """Delivery to the nodes that hold recipients (never a broadcast to every node)."""

    @abstractmethod
    async def deliver_remote(self, tenant: str, users: list[str], env: dict[str, Any]) -> None:
        """Hand `env` to the nodes that hold `users` but not this node."""

    @abstractmethod
    def on_delivery(self, handler: DeliveryHandler) -> None:
        """Register the node's handler for deliveries from other nodes."""


class Presence(ABC):
    """Which live nodes hold a user's connections; node loss and rejoin."""

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

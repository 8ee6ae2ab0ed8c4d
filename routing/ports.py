"""The shared state routing works through: segment locks, conversation state, agents and queues.

Declared here, beside the policy that uses them, so that `routing` depends on no part of
`gateway`. The gateway's coordinators implement them (gateway/coordinator/ports.py adds the
log, the node bus and presence). Every method is a coroutine so that a remote
implementation fits without changing any caller.

Contract tests: tests/test_coordinator_contract.py, grouped by port, run against every
implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager

from .model import Agent, Conversation


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
        """Like get_conversation, for callers that only read: the result must not be mutated.

        It may be a copy this node keeps and be older than the stored state; its `version` says
        which, and an append made with `if_version` fails if it is not the current one.
        """
        return await self.get_conversation(tenant, conv_id)

    @abstractmethod
    async def save_conversation(self, conv: Conversation) -> None:
        """Write the state of `conv` (the caller holds its lock); its `version` changes to one it never had."""

    @abstractmethod
    async def open_conversation_of(self, tenant: str, visitor: str) -> str | None:
        """The visitor's open (not closed) conversation id, if any."""

    @abstractmethod
    async def conversations_of_agent(self, tenant: str, agent: str) -> list[str]: ...

    @abstractmethod
    async def sticky_agent(self, tenant: str, visitor: str) -> str | None: ...

    @abstractmethod
    async def set_sticky_agent(self, tenant: str, visitor: str, agent: str) -> None: ...


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


class RoutingStore(Locks, ConversationState, AgentsAndQueue, ABC):
    """Everything the router needs: the three ports above in one object."""

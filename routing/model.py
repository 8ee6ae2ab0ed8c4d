"""The chat-support data model routing works on: a conversation and an agent.

They live here, with the policy that moves them, so that `routing` needs nothing from
`gateway`; the gateway's shared-state ports (gateway/coordinator) store them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    # When it last joined a queue (wall clock, ms; 0: never queued): the queue wait metric's start.
    queued_ms: int = 0
    # The state's version: 0 when created, another at each save (kept by the store, not in the doc).
    # An append can be made conditional on it (ConversationLog.append's `if_version`).
    version: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["version"]
        return d

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

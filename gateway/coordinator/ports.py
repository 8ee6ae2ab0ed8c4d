"""The ports to shared state: one small interface per concern (ARCHITECTURE.md, Concepts).

The three routing works through (locks, conversation state, agents and queue) are declared
in routing/ports.py and re-exported here; the log, the node bus and presence are the gateway's.

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
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from routing.model import Agent, Conversation
from routing.ports import AgentsAndQueue, ConversationState, Locks

__all__ = ["AgentsAndQueue", "ApiKeys", "Contacts", "ConversationLog", "ConversationState", "DeliveryHandler", "Locks", "NodeBus",
           "LiveView", "NodeSeen", "Presence", "QueueView", "Supervision", "SyncLog", "Transcripts", "Waiting"]

# A remote delivery handed to the node holding the users: (tenant, users, envelope, encoded). For a
# log entry sent encoded, `envelope` is only its routing head {t, conv, seq} and `encoded` the JSON
# the clients get; else `encoded` is None. Synchronous: deliveries are handled in the order they
# arrive, as they are read off the subscription.
DeliveryHandler = Callable[[str, list[str], Any, bytes | None], None]


class ConversationLog(ABC):
    """Each conversation's append-only log: seq 1, 2, 3, ...; idempotent per (sender, client id)."""

    @abstractmethod
    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None, *,
                     if_version: int | None = None) -> tuple[int, bool]:
        """Append entry (its `seq` is set here); returns (seq, duplicate).

        With a `client_id`, an entry whose sender (`entry["from"]`) already appended that id
        is not appended again: the answer is the first seq and duplicate=True.
        With `if_version`, nothing is appended unless the conversation's state is still at that
        version (`Conversation.version`): else `StaleState`, and the caller reads it again.
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

    # With a store on disk: `when_durable(fn, args, failed)` calls fn(*args) once the entries
    # appended so far are committed, or failed(error) if they can't be (they were taken back).
    # None where an append is as durable as it gets when append_now returns.
    when_durable: Callable[[Callable[..., None], tuple[Any, ...], Callable[[Exception], None]], None] | None


class NodeBus(ABC):
    """Delivery to the nodes that hold recipients (never a broadcast to every node)."""

    @abstractmethod
    async def deliver_remote(self, tenant: str, users: list[str], env: Any, encoded: bytes | None = None) -> None:
        """Hand `env` to the nodes that hold `users` but not this node.

        `encoded`: a log entry's JSON as its clients get it, when the caller has it; the receiving
        node writes it as it is (one encoding per entry in the whole cluster).
        """

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

    async def holders_changed(self, tenant: str, conv_ids: list[str]) -> None:  # noqa: B027
        """This node now holds a participant of each conversation (its presence is written): called
        before the node reads their logs for that participant, so other nodes that cached who holds
        the participants read it again (docs/cluster.md, step 6d). Single node: nothing to tell."""


class Transcripts(ABC):
    """A tenant's conversations over time, for export and audit, and erasure of one visitor's data.

    A transcript itself is the log (`ConversationLog.read_after`, paged).
    """

    @abstractmethod
    async def list_conversations(self, tenant: str, *, since_ms: int | None = None, until_ms: int | None = None,
                                 state: str | None = None, agent: str | None = None, limit: int = 100,
                                 after: tuple[int, str] | None = None) -> list[Conversation]:
        """Conversations of `tenant` ordered by (created_ms, id), strictly past `after`, created in
        [since_ms, until_ms) (wall clock, ms), in `state`, held by `agent`; at most `limit`.

        Raises NotImplementedError where this coordinator keeps no archive to list from.
        """

    @abstractmethod
    async def erase_visitor(self, tenant: str, visitor: str) -> list[str]:
        """Delete every conversation of `visitor` (state, log, sticky agent) from memory and storage;
        returns the ids erased. ValueError while the visitor has an open conversation (close it first).

        Raises NotImplementedError where this coordinator can't find a visitor's closed conversations.
        """


class ApiKeys(ABC):
    """The REST API's keys (gateway/api_keys.py `ApiKey`: hashed, tenant-scoped), kept with the node's state."""

    @abstractmethod
    async def save_api_key(self, key: Any) -> None:
        """Store a new key (an `ApiKey`)."""

    @abstractmethod
    async def api_key(self, key_id: str) -> Any | None:
        """The key with this id, or None (revoked, or never)."""

    @abstractmethod
    async def api_keys(self, tenant: str) -> list[Any]:
        """`tenant`'s keys, oldest first."""

    @abstractmethod
    async def delete_api_key(self, tenant: str, key_id: str) -> bool:
        """Revoke `tenant`'s key; False if it had no such key."""


class Contacts(ABC):
    """Who a messaging channel's user is (gateway/channels): (tenant, channel, external id) -> a record
    {"visitor": the tenant's visitor id, "conv": the conversation last relayed, "seq": the last seq
    sent out to them}. One visitor may be linked from several channels (one contact)."""

    @abstractmethod
    async def contact(self, tenant: str, channel: str, external_id: str) -> dict[str, Any] | None:
        """The record, or None (not seen yet)."""

    @abstractmethod
    async def save_contact(self, tenant: str, channel: str, external_id: str, record: dict[str, Any]) -> None:
        """Create or replace the record."""

    @abstractmethod
    async def contacts(self, tenant: str, channel: str) -> dict[str, dict[str, Any]]:
        """Every record of the channel: external id -> record."""


# Supervision: a tenant's live picture, for the supervisor page (gateway/supervisor_http.py).

LIVE_QUEUED_MAX = 500  # queue entries listed in one view, all groups together (head first per group)
LIVE_AGENTS_MAX = 1000  # agents listed in one view (by id)
LIVE_GROUPS_MAX = 200  # queues (groups) looked at in one view


@dataclass(frozen=True)
class Waiting:
    """One conversation in a queue: its id, its visitor, and how long it has waited: ms since it
    last joined the queue (a requeue or a transfer to a group starts the count again)."""

    conv: str
    visitor: str
    waited_ms: int


@dataclass(frozen=True)
class QueueView:
    """One group's queue: its full `length`, and `waiting`, its first entries, head first."""

    group: str
    length: int
    waiting: list[Waiting]


@dataclass(frozen=True)
class NodeSeen:
    """A live node: its id and ms since its last heartbeat (the embedded node: itself, 0)."""

    id: str
    heartbeat_age_ms: int


@dataclass
class LiveView:
    """One tenant's live picture.

    `queues`: non-empty queues by group name, each cut so that at most LIVE_QUEUED_MAX entries are
    listed in all; `agents`: at most LIVE_AGENTS_MAX, by id, with their load; `states`: open
    conversations by state, {"bot": n, "queued": n, "assigned": n} (closed ones are not counted);
    `nodes`: the cluster's live nodes by id; `truncated`: some bound above cut something.
    """

    queues: list[QueueView] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    nodes: list[NodeSeen] = field(default_factory=list)
    truncated: bool = False


OPEN_STATES = ("bot", "queued", "assigned")


class Supervision(ABC):
    """What a supervisor watches: queues with waits, agents with load, conversations by state, nodes."""

    @abstractmethod
    async def live_view(self, tenant: str) -> LiveView:
        """`tenant`'s live picture (`LiveView`), bounded: at most LIVE_QUEUED_MAX queue entries over at
        most LIVE_GROUPS_MAX groups and LIVE_AGENTS_MAX agents, whatever the tenant's size. Reads only;
        the parts are read one after another, not as one snapshot."""

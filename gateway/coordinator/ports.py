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
from typing import Any, Protocol, runtime_checkable

from routing.model import Conversation
from routing.ports import AgentsAndQueue, ConversationState, Locks

__all__ = ["AgentsAndQueue", "ApiKeys", "Contacts", "ConversationLog", "ConversationState", "DeliveryHandler", "Locks", "NodeBus",
           "Presence", "SyncLog", "Transcripts"]

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

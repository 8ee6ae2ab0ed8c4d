"""`msg` over a log in another process (Redis): the node's copy of the conversation and its dedup
cache in front of the log, the append's answer awaited (`h_msg`); steps 4-6 are
`Handlers._appended` for every path (docs/hub.md, 6a-6b).

Also the steps every `msg` path shares: who takes part in a conversation, and its log entry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from msgspec import to_builtins

from .coordinator import Conversation, Coordinator, StaleState, Unavailable
from .delivery import Delivery
from .envelopes import Envelope, Msg
from .protocol import Outgoing, ProtocolError
from .replies import msg_entry
from .session import Session

# How often a `msg` reads the conversation again when its copy was stale (each time another node
# changed the conversation between the read and the append): past that, the client sends it again.
STALE_RETRIES = 3


def now_ms() -> int:
    """Wall-clock milliseconds: an entry's `ts`."""
    return int(time.time() * 1000)


class RemoteMsg:
    """`msg`'s steps 1-3 over a remote log; mixed into `Handlers` (handlers.py), which provides the rest."""

    coord: Coordinator
    delivery: Delivery
    dedup: Any
    _spawn: Callable[[Awaitable[object]], object]
    _appended: Callable[..., Any]

    async def h_msg(self, conn: Session, env: Msg) -> None:
        """`msg` over a remote log, with this node's dedup cache in front of it.

        Steps 1-3 read the node's copy of the conversation and append only if that copy is
        still the stored state (`if_version`); a stale copy is read again and checked again.
        """
        cid = env.id
        for _ in range(STALE_RETRIES):
            conv = await self.coord.peek_conversation(conn.tenant, env.conv)
            if not takes_part(conn, conv):
                # The node's copy may predate this sender's assignment: only the stored state may refuse.
                conv = await self.coord.get_conversation(conn.tenant, env.conv)
            conv = taking_part(conn, env, conv)  # 1
            # Conversation ids are random and unique across tenants, and the tenant was checked above.
            # Client ids are the sender's own: the key is (conversation, sender, id).
            now = now_ms()
            seq = self.dedup.get(conv.id, conn.user, cid, now)
            if seq is not None:  # 2: this node appended it already (and delivered it then)
                self._appended(conn, conv, env, None, seq, True, None)
                return
            if conv.state == "closed":
                self._closed_retry(conn, conv, env, await self.coord.seq_of(conv.tenant, conv.id, conn.user, cid))
                return
            entry = new_entry(conn, conv, env, now)
            try:
                seq, dup = await self.coord.append(conv.tenant, conv.id, entry, cid, if_version=conv.version)  # 3
            except StaleState:
                continue  # another node changed it meanwhile: read it again
            break
        else:
            raise Unavailable("the conversation kept changing while this message was sent; send it again")
        self.dedup.put(conv.id, conn.user, cid, seq, now)
        await self._deliver_appended(conn, conv, env, entry, seq, dup)

    async def _deliver_appended(self, conn: Session, conv: Conversation, env: Msg, entry: dict[str, Any], seq: int,
                                dup: bool) -> None:
        """Steps 4-6 after a remote append."""
        out = Outgoing(entry)
        if dup:
            # The log knew it but this node did not: the node that appended it may have died
            # before delivering. Deliver the first entry again; sessions drop what they have.
            first, _ = await self.coord.read_after(conv.tenant, conv.id, seq - 1, 1)
            out = Outgoing(first[0]) if first and first[0]["seq"] == seq else None
        remote = self._appended(conn, conv, env, entry, seq, dup, out)
        if remote:
            await self.delivery.remote(conv.tenant, list(remote), out)  # retried, never an error: acked

    def _closed_retry(self, conn: Session, conv: Conversation, env: Msg, seq: int | None) -> None:
        """Step 2: a closed conversation takes no new message, but a retry of a logged one gets its ack."""
        if seq is None:
            raise ProtocolError("conflict", "conversation is closed", "conv", env.rid)
        self._appended(conn, conv, env, None, seq, True, None)


def takes_part(conn: Session, conv: Conversation | None) -> bool:
    """Does `conn`'s user take part in `conv` (None: no such conversation)?"""
    # A service (a backend, the REST API) and a bot (the REST API's `as: bot`) act on any of its tenant's.
    return conv is not None and (conn.role in _ANY_CONVERSATION or conn.user in conv.participants())


_ANY_CONVERSATION = frozenset(("service", "bot"))


def taking_part(conn: Session, env: Envelope, conv: Conversation | None) -> Conversation:
    """`conv`, if `conn` takes part in it; else ProtocolError `not_participant` (with `env`'s rid)."""
    if not takes_part(conn, conv):
        # A conversation of another tenant or another visitor looks exactly like a missing one.
        raise ProtocolError("not_participant", "no such conversation for this user", "conv", env.rid)
    return conv


def new_entry(conn: Session, conv: Conversation, env: Msg, now: int) -> dict[str, Any]:
    """The log entry for a `msg` envelope (seq is set by the coordinator's append)."""
    entry = msg_entry(conv.id, env.id, conn.user, conn.role, env.text, now)
    if env.att:
        entry["att"] = to_builtins(env.att)
    if conn.channel is not None:  # the agent sees where it came from (absent: the web widget)
        entry["ch"] = conn.channel
    return entry

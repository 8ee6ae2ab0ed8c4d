"""What every messaging channel shares (docs/channels.md).

A channel's user is a *contact*: (tenant, channel, external id) -> a tenant visitor id (by default
`<channel>:<external id>`; `POST /api/v1/contacts` links it to a visitor of the web widget, so the
same conversation goes on there) and a cursor: the conversation and last seq sent out to them.

Inbound: the platform POSTs to `/channels/<name>`; the channel checks its signature, turns it into
(external id, message id, text) and `Channel.receive` runs `open` (if the contact has no open
conversation) and `msg` as that visitor, through the same handlers as the WebSocket (the client id
is the platform's message id, so a platform's retry is stored once), and answers the platform 200
only once the message is stored.

Outbound: a `ContactSession` per contact with an open conversation is registered with the node as
that visitor (stamped with the channel's name), so deliveries reach it as they reach a widget; it
relays the entries others wrote (and the close) to the platform in seq order, one at a time,
retrying with backoff, and moves the contact's cursor after each. On start, every contact with an
open conversation gets its session back and resumes from its cursor: nothing written while the node
was down is lost, and nothing sent is sent again (except one whose cursor move was lost: at least once).
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from typing import Any

import orjson
from aiohttp import web

from .. import api_session
from ..auth import Identity
from ..coordinator import Unavailable
from ..coordinator.redis.keys import q
from ..protocol import Outgoing
from ..session import ChannelSession

log = logging.getLogger("gateway.channels")
BACKOFF_S, BACKOFF_CAP_S = 0.2, 60.0


class Refused(Exception):
    """A platform's permanent no (a 4xx that sending again won't change): the entry is skipped."""


def text_of(entry: dict[str, Any]) -> str:
    """What a plain-text platform shows for an entry: its text, its attachments, or the close."""
    if entry["t"] != "msg":
        return "This conversation is closed."
    if entry.get("text"):
        return entry["text"]
    names = [str(a.get("name") or a.get("ref")) for a in entry.get("att") or [] if isinstance(a, dict)]
    return "(attachment: " + ", ".join(names) + ")" if names else "(attachment)"


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0.5, 1.5) * min(BACKOFF_CAP_S, BACKOFF_S * 2 ** attempt))


class ContactSession(ChannelSession):
    """One contact's conversation, relayed out through its channel."""

    __slots__ = ("ch", "external_id", "queue", "task")

    def __init__(self, ch: Channel, core: Any, ident: Identity, external_id: str):
        super().__init__(core, ident, ch.max_text)
        self.channel = ch.name
        self.ch, self.external_id = ch, external_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._relay())

    def write(self, batch: list[Outgoing]) -> None:
        for out in batch:
            env = orjson.loads(out.json())
            if env.get("t") in ("msg", "event"):
                self.queue.put_nowait(env)

    async def _relay(self) -> None:
        while True:
            env = await self.queue.get()
            attempt = 0
            while True:
                try:
                    await self._relay_one(env)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - shared state away, a platform's odd answer: tried again
                    log.warning("%s: relaying seq %s to %s failed (tried again): %s: %s", self.ch.name, env.get("seq"),
                                self.external_id, type(e).__name__, e)
                    await _backoff(attempt)
                    attempt += 1

    async def _relay_one(self, env: dict[str, Any]) -> None:
        contacts = self.ch.coord
        record = await contacts.contact(self.tenant, self.ch.name, self.external_id) or {}
        if env["conv"] != record.get("conv") or env["seq"] <= record.get("seq", 0):
            return  # another conversation's, or sent already (a replay overlapping live)
        if (env["t"] == "msg" and env.get("from") != self.user) or (env["t"] == "event" and env.get("ev") == "closed"):
            attempt = 0
            while True:
                try:
                    error = await self.ch.send(self.external_id, env)
                except Refused as e:  # the platform will never take it: skipped, the rest goes on
                    log.warning("%s: %s refused seq %s for good: %s", self.ch.name, self.external_id, env["seq"], e)
                    break
                if error is None:
                    break
                log.warning("%s: sending to %s failed (tried again): %s", self.ch.name, self.external_id, error)
                await _backoff(attempt)
                attempt += 1
        # The cursor moves only if the contact is still on this conversation (it may have opened another meanwhile).
        now = await contacts.contact(self.tenant, self.ch.name, self.external_id) or {}
        if now.get("conv") == env["conv"] and now.get("seq", 0) < env["seq"]:
            await contacts.save_contact(self.tenant, self.ch.name, self.external_id, {**now, "seq": env["seq"]})


class Channel(ABC):
    """A messaging platform: `inbound` reads its webhook, `send` writes to one of its users."""

    kind = ""

    def __init__(self, node: Any, settings: dict[str, Any]):
        self.node = node
        self.name: str = settings["name"]
        self.tenant: str = settings["tenant"]
        self.settings = settings
        self.sessions: dict[str, ContactSession] = {}
        self._owner_task: asyncio.Task[None] | None = None

    @property
    def coord(self) -> Any:
        return self.node.coord

    @property
    def max_text(self) -> int:
        return self.node.cfg.max_text

    @abstractmethod
    async def inbound(self, request: web.Request) -> tuple[str, str, str] | web.Response:
        """The platform's POST: (external id, message id, text), or a response to give it (refused or ignored)."""

    @abstractmethod
    async def send(self, external_id: str, entry: dict[str, Any]) -> str | None:
        """Put one entry (a message, or the close) on the platform for that user; None when it took it,
        else why not (tried again). Raises `Refused` when the platform will never take it (skipped)."""

    async def start(self) -> None:
        """Bring back the sessions of contacts with an open conversation (resumed from their cursors);
        in cluster mode, keep owning them (and take over a dead node's) every `channel_owner_s / 3`."""
        await self._claim_all()
        if getattr(self.coord, "r", None) is not None:
            self._owner_task = asyncio.get_running_loop().create_task(self._keep_owning())

    async def _claim_all(self) -> None:
        for external_id, record in (await self.coord.contacts(self.tenant, self.name)).items():
            conv = record.get("conv") and await self.coord.get_conversation(self.tenant, record["conv"])
            if not conv or conv.state == "closed":
                continue
            if await self._own(external_id):
                s = self._session(external_id, record["visitor"])
                if conv.id not in (s.sent or {}):
                    s.receive({"t": "resume", "conv": conv.id, "after": record.get("seq", 0)})
            elif (s := self.sessions.pop(external_id, None)) is not None:  # another node has it now
                s.task.cancel()
                s.gone()

    async def _keep_owning(self) -> None:
        while True:
            await asyncio.sleep(self.node.cfg.channel_owner_s / 3)
            try:
                await self._claim_all()
            except Exception as e:  # noqa: BLE001 - tried again next round
                log.warning("%s: claiming contacts failed: %s", self.name, e)

    async def _own(self, external_id: str) -> bool:
        """Does this node relay the contact's conversation out? Always with one node; in cluster mode
        the node holding the contact's lease (`P:{k:T}:owner:C:E`, renewed by its holder, taken by
        another node once it lapses: a node that died hands its contacts on within `channel_owner_s`)."""
        r = getattr(self.coord, "r", None)
        if r is None:
            return True
        key = f"{self.coord._p}:{{k:{q(self.tenant)}}}:owner:{q(self.name)}:{q(external_id)}"
        ms = int(self.node.cfg.channel_owner_s * 1000)
        if await r.set(key, self.coord.node_id, nx=True, px=ms):
            return True
        holder = await r.get(key)
        if holder is not None and holder.decode() == self.coord.node_id:
            await r.pexpire(key, ms)
            return True
        return False

    async def stop(self) -> None:
        if self._owner_task is not None:
            self._owner_task.cancel()
        for s in self.sessions.values():
            s.task.cancel()
            s.gone()

    def _session(self, external_id: str, visitor: str) -> ContactSession:
        s = self.sessions.get(external_id)
        if s is not None and not s.closed and s.task.done():  # its relay ended (a bug): a fresh one
            s.gone()
        if s is None or s.closed or s.task.done():
            s = self.sessions[external_id] = ContactSession(self, self.node.hub, Identity(self.tenant, visitor, "visitor"),
                                                            external_id)
            s.open()
        return s

    async def receive(self, request: web.Request) -> web.Response:
        try:
            return await self._receive(request)
        except (TimeoutError, Unavailable) as e:  # the platform sends it again; the same message id is stored once
            return web.json_response({"error": f"unavailable: {type(e).__name__}: {e}"}, status=503)

    async def _receive(self, request: web.Request) -> web.Response:
        got = await self.inbound(request)
        if isinstance(got, web.Response):
            return got
        external_id, message_id, text = got
        record = await self.coord.contact(self.tenant, self.name, external_id)
        if record is None:
            record = {"visitor": f"{self.name}:{external_id}", "conv": None, "seq": 0}
        visitor = record["visitor"]
        ident = Identity(self.tenant, visitor, "visitor")
        conv = record.get("conv") and await self.coord.get_conversation(self.tenant, record["conv"])
        if not conv or conv.state == "closed":
            view = await api_session.call(self.node.hub, ident, self.max_text, {"t": "open"}, wait_reply=True)
            if view is None or view.get("t") != "conv":
                return web.json_response({"error": view}, status=503)
            if view["conv"] != record.get("conv"):
                record = {**record, "conv": view["conv"], "seq": 0}
            await self.coord.save_contact(self.tenant, self.name, external_id, record)
        if await self._own(external_id):  # else the node that owns the contact relays what comes back
            session = self._session(external_id, visitor)
            if record["conv"] not in (session.sent or {}):
                session.receive({"t": "resume", "conv": record["conv"], "after": record.get("seq", 0)})
        ack = await api_session.call(self.node.hub, ident, self.max_text,
                                     {"t": "msg", "conv": record["conv"], "id": f"{self.name}:{message_id}", "text": text},
                                     wait_reply=True, channel=self.name)
        if ack is None or ack.get("t") != "ack":
            status = 400 if ack and str(ack.get("code", "")).startswith(("bad_", "missing")) else 503
            return web.json_response({"error": ack}, status=status)  # 503: the platform sends it again
        return web.json_response({"ok": True, "seq": ack["seq"], "dup": ack["dup"]})

"""A small async client for the chat protocol (docs/protocol.md): what every widget, bot or
integration written in Python needs, and what is easy to get wrong.

    client = ChatClient("ws://127.0.0.1:8765/ws", token)   # or token=an async function (refreshed per connect)
    await client.start()
    conv = await client.open()
    ack = await client.send(conv, "Where is my order?")      # retried with the same id until acked
    async for event in client.events():                      # Message, StateChange, Gap: in seq order, once
        ...
    await client.close()

It connects (aiohttp), and when the connection drops it connects again after a backoff with
full jitter (AWS's "exponential backoff and jitter": a random wait in [0, min(cap, base * 2^n)]),
asks for a fresh token, resumes every conversation from the last seq it has handed out (the
server replays what was missed, in order), and sends every unacked message again with its client
id, which the server answers with the first seq instead of storing it twice. Entries are handed
out in seq order, each once, whatever arrives twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

Token = str | Callable[[], Awaitable[str]]
log = logging.getLogger("gateway.client")


def _json(env: dict[str, Any]) -> str:
    """Text frames: the server answers a connection in the format of its frames (JSON for text)."""
    return orjson.dumps(env).decode()


@dataclass(frozen=True)
class Message:
    conv: str
    seq: int
    id: str
    sender: str
    role: str
    text: str
    ts: int
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class StateChange:
    """A conversation event entry: queued, assigned, transferred, requeued, closed..."""

    conv: str
    seq: int
    ev: str
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Gap:
    """The log no longer reaches back to what this client had: entries before `first` are gone."""

    conv: str
    first: int


@dataclass(frozen=True)
class Ack:
    conv: str
    id: str
    seq: int
    dup: bool


class ChatError(Exception):
    """The server refused a request: `code` is the protocol's (docs/protocol.md, Errors)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class ChatClient:
    """One identity's connection, kept up: see the module's text."""

    def __init__(self, url: str, token: Token, *, backoff_s: float = 0.2, backoff_cap_s: float = 30.0,
                 connect_timeout_s: float = 10.0):
        self.url = url
        self._token = token
        self.backoff_s, self.backoff_cap_s, self.connect_timeout_s = backoff_s, backoff_cap_s, connect_timeout_s
        self.last: dict[str, int] = {}  # conversation -> the last seq handed out
        self._pending: dict[str, tuple[str, str, asyncio.Future[Ack]]] = {}  # client id -> (conv, text, ack)
        self._requests: dict[str, asyncio.Future[dict[str, Any]]] = {}  # rid -> the reply
        self._events: asyncio.Queue[Message | StateChange | Gap] = asyncio.Queue()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self.connections = 0  # how many times it connected (1 + reconnects)
        self.welcome: dict[str, Any] | None = None

    async def start(self) -> None:
        """Connect (returns once the first connection is up) and keep connecting until `close`."""
        self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._up.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def open(self, group: str | None = None) -> str:
        """Open a conversation (or get the open one); its id. Its entries come through `events()`."""
        reply = await self._request({"t": "open", **({"group": group} if group else {})})
        self.last.setdefault(reply["conv"], 0)  # the opener is subscribed from the first entry
        return reply["conv"]

    async def send(self, conv: str, text: str, *, client_id: str | None = None) -> Ack:
        """Send a message; returns once the server stored it. Sent again with the same id after a reconnect."""
        cid = client_id or uuid.uuid4().hex
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[cid] = (conv, text, fut)
        await self._send_msg(cid)
        return await fut

    async def set_status(self, status: str) -> dict[str, Any]:
        """An agent's availability: `online` (assigned conversations), `away` or `offline`; the reply
        carries `status`, `capacity`, `load`. It outlives the connection: a reconnect keeps it."""
        return await self._request({"t": "status", "status": status})

    async def events(self) -> AsyncIterator[Message | StateChange | Gap]:
        """Entries of this client's conversations, in seq order, each once (and gaps, if any)."""
        while True:
            yield await self._events.get()

    # the connection

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect()
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever ended this connection, the next one is tried
                log.debug("connection ended: %s: %s", type(e).__name__, e)
            self._ws = None
            self._up.clear()
            for fut in self._requests.values():  # their replies won't come on this connection: ask again
                if not fut.done():
                    fut.set_exception(ConnectionError("connection lost"))
            wait = random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** attempt))
            attempt += 1
            await asyncio.sleep(wait)

    async def _connect(self) -> None:
        token = self._token if isinstance(self._token, str) else await self._token()
        assert self._http is not None
        self._ws = await asyncio.wait_for(self._http.ws_connect(f"{self.url}?v=1&token={token}", autoping=True),
                                          self.connect_timeout_s)
        self.connections += 1
        first = await self._frames()
        self.welcome = first[0]
        if self.welcome.get("t") != "welcome":
            raise aiohttp.ClientError(f"expected welcome, got {self.welcome}")
        for c in self.welcome.get("convs", []):
            self.last.setdefault(c["conv"] if isinstance(c, dict) else c, 0)
        for conv, last in self.last.items():  # what was missed, in order, then live
            await self._ws.send_str(_json({"t": "resume", "conv": conv, "after": last}))
        for cid in list(self._pending):  # unacked: the same ids, so nothing is stored twice
            await self._send_msg(cid)
        self._up.set()
        for env in first[1:]:
            self._handle(env)

    def _leave(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close `ws` (still the connection a drain notice came on): the read loop connects again."""
        if ws is self._ws and not ws.closed:
            asyncio.ensure_future(ws.close(code=1001, message=b"reconnecting: node draining"))

    async def _frames(self) -> list[dict[str, Any]]:
        assert self._ws is not None
        msg = await self._ws.receive()
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise aiohttp.ClientError(f"connection ended: {msg.type.name}")
        data = orjson.loads(msg.data)
        return data if isinstance(data, list) else [data]

    async def _read(self) -> None:
        while True:
            for env in await self._frames():
                self._handle(env)

    async def _send_msg(self, cid: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # sent when the connection is back
        conv, text, _ = self._pending[cid]
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(_json({"t": "msg", "conv": conv, "id": cid, "text": text, "rid": cid}))

    async def _request(self, env: dict[str, Any]) -> dict[str, Any]:
        """Send `env` and wait for its reply; asked again on the next connection if this one drops
        first (only for requests that are safe to repeat: `open` returns the open conversation)."""
        while True:
            await self._up.wait()
            ws = self._ws
            assert ws is not None
            rid = uuid.uuid4().hex
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._requests[rid] = fut
            try:
                await ws.send_str(_json({**env, "rid": rid}))
                return await fut
            except (ConnectionError, aiohttp.ClientError):
                continue
            finally:
                self._requests.pop(rid, None)

    def _handle(self, env: dict[str, Any]) -> None:
        t = env.get("t")
        if t in ("msg", "event"):
            conv, seq = env["conv"], env["seq"]
            if seq <= self.last.get(conv, 0):
                return  # already handed out (a replay overlapping live traffic)
            self.last[conv] = seq
            if t == "msg":
                self._events.put_nowait(Message(conv, seq, env.get("id", ""), env.get("from", ""), env.get("role", ""),
                                                env.get("text", ""), env.get("ts", 0), env))
            else:
                self._events.put_nowait(StateChange(conv, seq, env.get("ev", ""), env))
        elif t == "assigned":
            # An agent given a conversation: its entries so far come in `history` (the last
            # `assign_history` of them), live ones after `seq`. What the snapshot leaves out before
            # itself is a gap (ask `history` for it); what it stops short of, a resume catches up.
            conv, history = env["conv"], sorted(env.get("history") or (), key=lambda e: e.get("seq", 0))
            last = self.last.get(conv, 0)
            if history and history[0].get("seq", 0) > last + 1:
                self.last[conv] = history[0]["seq"] - 1
                self._events.put_nowait(Gap(conv, history[0]["seq"]))
            for entry in history:
                self._handle({**entry, "conv": conv, "t": entry.get("t") or ("event" if "ev" in entry else "msg")})
            if env.get("seq", 0) > self.last.get(conv, 0) and self._ws is not None:
                asyncio.ensure_future(self._ws.send_str(_json({"t": "resume", "conv": conv,
                                                               "after": self.last.get(conv, 0)})))
        elif t == "ack":
            pending = self._pending.pop(env["id"], None)
            if pending is not None and not pending[2].done():
                pending[2].set_result(Ack(env["conv"], env["id"], env["seq"], env["dup"]))
        elif t == "gap":
            self.last[env["conv"]] = max(self.last.get(env["conv"], 0), env["first"] - 1)
            self._events.put_nowait(Gap(env["conv"], env["first"]))
        elif t == "error":
            rid = env.get("rid")
            err = ChatError(env.get("code", "internal"), env.get("message", ""))
            if rid in self._pending:
                fut = self._pending.pop(rid)[2]
                if not fut.done():
                    fut.set_exception(err)
            elif rid in self._requests and not self._requests[rid].done():
                self._requests[rid].set_exception(err)
        elif t == "closing" and env.get("reason") == "drain":
            # The node is draining: it keeps serving this connection until we leave, which we do
            # after the jittered retry_ms it gave (so its clients don't all reconnect at once).
            ws = self._ws
            if ws is not None:
                asyncio.get_running_loop().call_later(env.get("retry_ms", 0) / 1000, self._leave, ws)
        elif env.get("rid") in self._requests:
            fut = self._requests[env["rid"]]
            if not fut.done():
                fut.set_result(env)

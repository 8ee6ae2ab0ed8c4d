"""picows client listeners: a plain echo client for peer servers and a gateway protocol client.

Both count how their connection ended: a clean close is our close frame answered
by the server's close frame before the socket went away.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from .histogram import Histogram
from .state import Flow, WorkerState, now_ns

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE

ECHO_PAYLOAD = 128  # bytes per echo message: about the size of a gateway `msg` envelope with TEXT_LEN text
TEXT_LEN = 64  # characters of text in a gateway message


def stamp(size: int, prefix: bytes = b"") -> bytes:
    """A payload of `size` bytes starting with `prefix` + the send time in ns + ':'."""
    head = b"%s%d:" % (prefix, now_ns())
    return head + b"x" * max(0, size - len(head))


def stamped_ns(data: bytes | str, start: int = 0) -> int:
    return int(data[start:data.index(b":" if isinstance(data, bytes) else ":")])


class Client(WSListener):
    """Connection lifecycle shared by every bench client."""

    __slots__ = ("transport", "state", "ready", "done", "close_sent", "close_rcvd", "close_code")

    def __init__(self, state: WorkerState) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.state = state
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.done: asyncio.Future[bool] = loop.create_future()
        self.close_sent = False
        self.close_rcvd = False
        self.close_code = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(True)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before ready"))
            self.ready.exception()  # mark retrieved: nobody may be waiting any more

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt == TEXT or mt == BINARY:
            self.on_data(frame.get_payload_as_bytes())
        elif mt == CLOSE:
            self.close_rcvd = True
            self.close_code = int(frame.get_close_code()) if frame.payload_size >= 2 else 1005
            if not self.close_sent:  # the server closed first: answer, as RFC 6455 asks
                self.close_sent = True
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_data(self, payload: bytes) -> None:  # pragma: no cover - overridden
        pass

    def close(self) -> None:
        """Start a clean close: send our close frame; the server answers and the socket goes away."""
        if self.transport is not None and not self.close_sent and not self.done.done():
            self.close_sent = True
            self.transport.send_close(WSCloseCode.OK)

    @property
    def clean(self) -> bool:
        return self.close_sent and self.close_rcvd and self.close_code == 1000


class EchoClient(Client):
    """Talks to an echo peer: each message comes back to the same connection."""

    __slots__ = ("flow",)

    def __init__(self, state: WorkerState) -> None:
        super().__init__(state)
        self.flow: Flow | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.ready.set_result(True)

    def on_data(self, payload: bytes) -> None:
        if payload[:1] == b"B":
            self.state.on_fanout(stamped_ns(payload, 1))
        elif self.flow is not None:
            self.flow.on_delivered(stamped_ns(payload))
        else:
            self.state.counts["unexpected"] += 1

    def send_echo(self, seq: int) -> None:
        self.transport.send(TEXT, stamp(ECHO_PAYLOAD))

    def send_broadcast(self) -> None:
        self.transport.send(TEXT, stamp(ECHO_PAYLOAD, b"B"))


class ChatClient(Client):
    """Speaks the gateway protocol (docs/protocol.md) in JSON text frames, as a visitor or an agent."""

    __slots__ = ("user", "role", "conv", "position", "flows_in", "waiter", "waiter_t", "conv_b")

    def __init__(self, state: WorkerState, user: str, role: str) -> None:
        super().__init__(state)
        self.user = user
        self.role = role
        self.conv: str | None = None
        self.conv_b = b""
        self.position: int | None = None
        self.flows_in: dict[str, Flow] | None = None  # conv -> the flow whose messages arrive here
        self.waiter: asyncio.Future[dict] | None = None
        self.waiter_t = ""

    def on_data(self, payload: bytes) -> None:
        data = orjson.loads(payload)
        if type(data) is list:
            for env in data:
                self.on_env(env)
        else:
            self.on_env(data)

    def on_env(self, env: dict[str, Any]) -> None:
        t = env.get("t")
        st = self.state
        if t == "msg":
            if env.get("from") == self.user:
                st.counts["own_copies"] += 1  # the gateway delivers each entry to the sender too
                return
            flow = self.flows_in.get(env["conv"]) if self.flows_in is not None else None
            if flow is not None:
                flow.on_delivered(stamped_ns(env["text"]))
            else:
                st.on_fanout(stamped_ns(env["text"]))
            return
        if t == "ack":
            st.counts["acks"] += 1
            if env.get("dup"):
                st.counts["dup_acks"] += 1
            return
        if t == "queue":
            self.position = env.get("position")
            st.queue_receipts.append(now_ns())
            return
        if t == "welcome":
            if not self.ready.done():
                self.ready.set_result(True)
            return
        if t == "conv":
            self.conv = env["conv"]
            self.conv_b = self.conv.encode()
            self.position = env.get("position")
        elif t == "assigned":
            pairs = st.pairs
            pair = pairs.get(env["conv"])
            if pair is None:
                pairs[env["conv"]] = pair = Pair(env["conv"])
            pair.agent = self
            st.counts["assigned"] += 1
        elif t == "error":
            st.errors[str(env.get("code"))] += 1
        else:
            st.counts["env_" + str(t)] += 1
        w = self.waiter
        if w is not None and (t == self.waiter_t or t == "error") and not w.done():
            w.set_result(env)

    async def request(self, env: dict[str, Any], reply: str, timeout: float) -> dict[str, Any]:
        """Send one envelope and wait for the reply of kind `reply` (or an error)."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.waiter_t = reply
        self.transport.send(TEXT, orjson.dumps(env))
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None

    def send_msg(self, conv_b: bytes, mid: bytes, seq: int) -> None:
        head = b"%d:" % now_ns()
        self.transport.send(
            TEXT,
            b'{"t":"msg","conv":"%s","id":"%s%d","text":"%s%s"}' % (conv_b, mid, seq, head, b"x" * (TEXT_LEN - len(head))),
        )


class Pair:
    """A gateway conversation between a bench visitor and a bench agent: two flows."""

    __slots__ = ("conv", "visitor", "agent")

    def __init__(self, conv: str) -> None:
        self.conv = conv
        self.visitor: ChatClient | None = None
        self.agent: ChatClient | None = None

    @property
    def ready(self) -> bool:
        return self.visitor is not None and self.agent is not None

    def flows(self, state: WorkerState) -> tuple[Flow, Flow]:
        v, a, cb = self.visitor, self.agent, self.conv.encode()
        v2a = Flow(lambda seq: v.send_msg(cb, b"v", seq), state.hists["v2a"], state)
        a2v = Flow(lambda seq: a.send_msg(cb, b"a", seq), state.hists["a2v"], state)
        if a.flows_in is None:
            a.flows_in = {}
        a.flows_in[self.conv] = v2a
        v.flows_in = {self.conv: a2v}
        return v2a, a2v


class BotLoad:
    """The bot scenario's visitors of one worker: each asks a question, waits for the bot's answer, asks again.

    Per answer: latency question sent -> the bot's `msg` (role `bot`), question sent -> first `bot_chunk`,
    and how many `bot_chunk` frames came before the answer (the gateway coalesces the backend's tokens).
    """

    def __init__(self) -> None:
        self.active = False
        self.answer = Histogram()
        self.first_chunk = Histogram()
        self.counts: Counter[str] = Counter()
        self.chunks_per_answer: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.clients: list[BotClient] = []

    def reset(self) -> None:
        self.answer.reset()
        self.first_chunk.reset()
        self.counts.clear()
        self.chunks_per_answer.clear()
        self.errors.clear()

    @property
    def pending(self) -> int:
        return sum(1 for c in self.clients if c.asked_ns)


class BotClient(ChatClient):
    """A visitor in a conversation a bot answers (see BotLoad)."""

    __slots__ = ("load", "asked_ns", "first_ns", "chunks", "n", "handed_off")

    def __init__(self, state: WorkerState, user: str, role: str, load: BotLoad) -> None:
        super().__init__(state, user, role)
        self.load = load
        self.asked_ns = 0  # when the question in flight was sent (0: none)
        self.first_ns = 0
        self.chunks = 0
        self.n = 0
        self.handed_off = False

    def ask(self) -> None:
        if self.handed_off or self.asked_ns or self.conv is None or self.done.done():
            return
        self.n += 1
        self.chunks = 0
        self.first_ns = 0
        self.asked_ns = now_ns()
        # Unique per question (no cache hit), no handoff phrase in it.
        self.transport.send(TEXT, b'{"t":"msg","conv":"%s","id":"q%d","text":"Question %d from %s: when does my order '
                                  b'ship and what does delivery to Berlin cost?"}' % (self.conv_b, self.n, self.n,
                                                                                     self.user.encode()))
        self.load.counts["asked"] += 1

    def on_env(self, env: dict[str, Any]) -> None:
        t = env.get("t")
        load = self.load
        if t == "bot_chunk":
            self.chunks += 1
            if not self.first_ns:
                self.first_ns = now_ns()
            return
        if t == "msg":
            if env.get("role") != "bot":
                load.counts["own_copies" if env.get("from") == self.user else "other_msgs"] += 1
                return
            now = now_ns()
            if self.asked_ns:
                load.answer.record_ns(now - self.asked_ns)
                if self.first_ns:
                    load.first_chunk.record_ns(self.first_ns - self.asked_ns)
                load.chunks_per_answer[self.chunks] += 1
                load.counts["answers"] += 1
                load.counts["chunks"] += self.chunks
            else:
                load.counts["late_answers"] += 1  # a question asked before the last reset
            if env.get("fallback"):
                load.counts["fallback:" + str(env["fallback"])] += 1
            if env.get("handoff"):
                load.counts["handoff:" + str(env["handoff"])] += 1
                self.handed_off = True
            self.asked_ns = 0
            if load.active:
                self.ask()
            return
        if t == "ack":
            load.counts["acks"] += 1
            return
        if t == "error" and self.waiter is None:
            load.errors[str(env.get("code"))] += 1
            self.asked_ns = 0  # the question was refused: ask again a little later
            if load.active:
                asyncio.get_running_loop().call_later(0.05, self.ask)
            return
        if t == "event":
            load.counts["event:" + str(env.get("ev"))] += 1
            if env.get("ev") == "handoff":
                self.handed_off = True
            return
        super().on_env(env)

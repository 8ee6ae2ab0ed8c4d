"""Per-worker measurement state shared by every client listener of that worker process."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .histogram import Histogram, pack

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine


class Flow:
    """One direction of traffic: a sender, a receiver and the messages in flight between them.

    Echo peers: sender and receiver are the same connection (the server echoes).
    Gateway: visitor -> agent or agent -> visitor through one conversation.
    """

    __slots__ = ("send", "hist", "state", "outstanding", "sent", "delivered", "seq")

    def __init__(self, send: Any, hist: Histogram, state: WorkerState) -> None:
        self.send = send  # send(seq: int) -> None, stamps the payload with now_ns()
        self.hist = hist
        self.state = state
        self.outstanding = 0
        self.sent = 0
        self.delivered = 0
        self.seq = 0  # message ids keep growing across steps (the gateway deduplicates by id)

    def send_one(self) -> None:
        self.seq += 1
        self.sent += 1
        self.outstanding += 1
        self.send(self.seq)

    def on_delivered(self, sent_ns: int) -> None:
        self.hist.record_ns(now_ns() - sent_ns)
        self.delivered += 1
        if self.outstanding > 0:
            self.outstanding -= 1
        st = self.state
        if st.closed_loop and st.running and self.outstanding < st.window:
            self.send_one()

    def reset(self) -> None:
        self.outstanding = 0
        self.sent = 0
        self.delivered = 0


class WorkerState:
    """Counters and histograms of one worker; reset between measurement steps."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.running = False
        self.closed_loop = False
        self.window = 1
        self.hists: dict[str, Histogram] = {"echo": Histogram(), "v2a": Histogram(), "a2v": Histogram(),
                                            "fanout": Histogram(), "cycle": Histogram()}
        self.flows: list[Flow] = []
        self.pairs: dict[str, Any] = {}  # gateway conversation id -> Pair
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.fan_count = 0
        self.fan_round_max_ns = 0
        self.queue_receipts: list[int] = []

    def on_fanout(self, sent_ns: int) -> None:
        lat = now_ns() - sent_ns
        self.hists["fanout"].record_ns(lat)
        self.fan_count += 1
        if lat > self.fan_round_max_ns:
            self.fan_round_max_ns = lat

    def reset(self) -> None:
        for h in self.hists.values():
            h.reset()
        for f in self.flows:
            f.reset()
        self.counts.clear()
        self.errors.clear()
        self.fan_count = 0
        self.fan_round_max_ns = 0
        self.queue_receipts = []

    def packed_hists(self) -> dict[str, dict]:
        return {k: pack(h) for k, h in self.hists.items() if h.n}

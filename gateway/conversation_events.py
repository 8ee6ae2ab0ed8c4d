"""What the node does when a conversation changes: log the event, tell the people (docs/routing.md).

`ConversationEvents` is the router's sink (routing.RoutingSink): every state change the
router makes becomes a log entry delivered to the participants, plus the side frames
(`assigned` with history for the new agent, `unassigned`, `queue` positions).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .coordinator import Conversation, Coordinator
from .delivery import Delivery
from .metrics import METRICS
from .replies import Assigned, ConvView, Queue, Unassigned, event_entry


class RunningBots(Protocol):
    """The node's running bot calls (gateway/bot_turns.py), as far as routing events need them."""

    def cancel(self, tenant: str, conv_id: str, why: str) -> None:
        """Stop the conversation's bot call, if one runs; `why` is logged."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConversationEvents:
    """The routing sink: events into the log and out to the participants.

    `bot_turns` (set once the node has built its bot side, None without bots) loses a
    conversation's running bot call when an agent takes the conversation or it closes.
    """

    def __init__(self, coord: Coordinator, delivery: Delivery, assign_history: int):
        self.coord = coord
        self.delivery = delivery
        self._assign_history = assign_history
        self.bot_turns: RunningBots | None = None
        self._queue_pos: dict[tuple[str, str], tuple[int, str]] = {}  # (tenant, conv) -> (position told, visitor)
        self._queue_lengths: dict[tuple[str, str], int] = {}  # (tenant, group) -> waiting, as last seen (non-zero)

    async def event(self, conv: Conversation, ev: str, **fields: Any) -> dict[str, Any]:
        """Append an `event` entry (state change) to the conversation's log; returns it with its seq."""
        entry = event_entry(conv.id, ev, _now_ms(), **fields)
        await self.coord.append(conv.tenant, conv.id, entry)
        return entry

    async def on_queued(self, conv: Conversation, ev: str) -> None:
        entry = await self.event(conv, ev, group=conv.group)
        await self.delivery.deliver(conv, entry)

    async def on_assigned(self, conv: Conversation, ev: str, previous: str | None) -> None:
        self._queue_pos.pop((conv.tenant, conv.id), None)
        if ev == "assigned" and conv.queued_ms:
            METRICS.queue_wait.observe(max(0.0, time.time() - conv.queued_ms / 1000))
        if self.bot_turns is not None:
            self.bot_turns.cancel(conv.tenant, conv.id, "agent took over")
        entry = await self.event(conv, ev, agent=conv.agent, by=previous)
        history, _ = await self.coord.read_before(conv.tenant, conv.id, None, self._assign_history)
        last = history[-1]["seq"] if history else 0
        assigned = Assigned(conv=conv.id, visitor=conv.visitor, group=conv.group, seq=last,
                            meta={k: v for k, v in conv.meta.items() if k != "bot"}, bot=conv.meta.get("bot"),
                            history=history)
        await self.delivery.send_to(conv.tenant, [conv.agent], assigned)
        if conv.assigned_us:  # set when the router charged the agent: the rest is this step's cost
            METRICS.assignment_latency.observe(max(0.0, time.time() - conv.assigned_us / 1e6))
        METRICS.assignments.inc()
        await self.delivery.deliver(conv, entry)

    async def on_unassigned(self, conv: Conversation, agent: str, rid: Any = None) -> None:
        await self.delivery.send_to(conv.tenant, [agent], Unassigned(conv.id, rid))

    async def on_queue_changed(self, tenant: str, group: str) -> None:
        """Tell every waiting visitor whose position changed (one lookup per newcomer, not per change)."""
        waiting = await self.coord.queue_list(tenant, group)
        self._queue_length(tenant, group, len(waiting))
        for pos, conv_id in enumerate(waiting, 1):
            known = self._queue_pos.get((tenant, conv_id))
            if known is not None and known[0] == pos:
                continue
            visitor = known[1] if known is not None else None
            if visitor is None:
                conv = await self.coord.get_conversation(tenant, conv_id)
                if conv is None:
                    continue
                visitor = conv.visitor
            self._queue_pos[(tenant, conv_id)] = (pos, visitor)
            await self.delivery.send_to(tenant, [visitor], Queue(conv_id, pos))

    def _queue_length(self, tenant: str, group: str, n: int) -> None:
        """The metric is per group, all tenants together: one series per tenant would grow without bound."""
        delta = n - self._queue_lengths.get((tenant, group), 0)
        if n:
            self._queue_lengths[(tenant, group)] = n
        else:
            self._queue_lengths.pop((tenant, group), None)
        if delta:
            METRICS.queue_length.labels(group).inc(delta)

    async def on_closed(self, conv: Conversation, by: str) -> None:
        self._queue_pos.pop((conv.tenant, conv.id), None)
        if self.bot_turns is not None:
            self.bot_turns.cancel(conv.tenant, conv.id, "conversation closed")
        entry = await self.event(conv, "closed", by=by)
        await self.delivery.deliver(conv, entry)

    async def conv_view(self, conv: Conversation, rid: Any = None) -> ConvView:
        """The `conv` envelope for `conv`: its state, last seq and, when queued, its position."""
        view = ConvView(conv=conv.id, state=conv.state, visitor=conv.visitor, agent=conv.agent, group=conv.group,
                        seq=await self.coord.last_seq(conv.tenant, conv.id), rid=rid)
        if conv.state == "queued":
            queue = await self.coord.queue_list(conv.tenant, conv.group)
            if conv.id in queue:
                view.position = queue.index(conv.id) + 1
        return view

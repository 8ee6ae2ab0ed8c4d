"""Bot turns: the hub's side of the bot bridge (docs/bots.md; handoff in docs/routing.md).

One running bot call per conversation, answering the visitor's latest question:
its pieces stream to the participants as `bot_chunk`, the answer is logged once
(idempotent by the question's seq), and a handoff moves the conversation into
the routing queue with the bot's last real answer for the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .coordinator import Conversation, Coordinator
from .delivery import Delivery
from .metrics import METRICS
from .replies import BotChunk, msg_entry
from .tasks import TaskSet

if TYPE_CHECKING:
    from routing import Router

    from .conversation_events import ConversationEvents

log = logging.getLogger("gateway.bots")

HISTORY_TURNS = 40


class BotTurns:
    """The running bot calls of this node, one per conversation.

    `bridge` answers questions (bot_bridge.worker.WorkerBridge); the rest is what a turn
    needs to read history, log the answer, deliver it and hand the conversation off.
    """

    def __init__(self, bridge: Any, coord: Coordinator, delivery: Delivery, events: ConversationEvents,
                 router: Router, tasks: TaskSet):
        self.bridge = bridge
        self.coord = coord
        self.delivery = delivery
        self.events = events
        self.router = router
        self._tasks = tasks
        self._calls: dict[tuple[str, str], asyncio.Task[Any]] = {}

    @property
    def busy(self) -> bool:
        return bool(self._calls)

    def start(self, conv: Conversation, question: dict[str, Any]) -> None:
        key = (conv.tenant, conv.id)
        self.cancel(conv.tenant, conv.id, "newer question")  # answer the latest question only
        task = self._tasks.spawn(self._turn(conv, question))
        self._calls[key] = task

        def done(t: asyncio.Task[Any]) -> None:
            if self._calls.get(key) is t:
                del self._calls[key]

        task.add_done_callback(done)

    def cancel(self, tenant: str, conv_id: str, why: str) -> None:
        task = self._calls.pop((tenant, conv_id), None)
        # A turn that hands off assigns the conversation itself, which lands here: a turn never
        # cancels itself (its handoff would stop half done at its next await).
        if task is not None and not task.done() and task is not asyncio.current_task():
            log.debug("cancelling bot call for %s/%s: %s", tenant, conv_id, why, extra={"tenant": tenant, "conv": conv_id})
            METRICS.bot_cancelled.inc()
            task.cancel()

    def cancel_all(self) -> None:
        for task in list(self._calls.values()):
            task.cancel()

    async def _turn(self, conv: Conversation, question: dict[str, Any]) -> None:
        from bot_bridge import BotContext, Turn

        coord, delivery = self.coord, self.delivery
        earlier, _ = await coord.read_before(conv.tenant, conv.id, question["seq"], HISTORY_TURNS)
        history = [Turn(e.get("role", "visitor"), e["text"]) for e in earlier if e.get("t") == "msg" and e.get("text")]
        ctx = BotContext(conv.tenant, conv.id, conv.group, conv.visitor, question["text"], history, conv.meta,
                         seq=question["seq"])
        audience = conv.participants()
        started, first = time.monotonic(), []
        backend = self.bridge.backend_for(conv.tenant, conv.group) or "none"

        async def on_chunk(text: str) -> None:
            if not first:
                first.append(True)
                METRICS.bot_first_chunk.labels(backend).observe(time.monotonic() - started)
            await delivery.send_to(conv.tenant, audience, BotChunk(conv.id, question["seq"], text))

        result = await self.bridge.answer(ctx, on_chunk)
        METRICS.bot_answer.labels(backend).observe(time.monotonic() - started)  # the configured backend, as the breaker's
        METRICS.bot_answers.labels(result.backend or "none", "handoff" if result.handoff else "answer").inc()
        async with coord.lock(conv.tenant, conv.id):
            current = await coord.get_conversation(conv.tenant, conv.id)
            if current is None or current.state != "bot":
                return  # an agent took over or the visitor closed meanwhile
            if result.handoff:
                current.state, current.queued_ms = "queued", int(time.time() * 1000)
                current.meta["bot"] = {**last_bot_answer(result, earlier), "reason": result.reason}
                await coord.save_conversation(current)
        if result.text:
            entry = msg_entry(conv.id, f"bot-{question['seq']}", "bot", "bot", result.text, int(time.time() * 1000),
                              backend=result.backend, conf=result.confidence, reply_to=question["seq"])
            if result.fallback:
                entry["fallback"] = result.reason
            if result.handoff:
                entry["handoff"] = result.reason
            # The client id makes the answer idempotent: a retried turn can't log it twice.
            _, dup = await coord.append(conv.tenant, conv.id, entry, f"bot:{question['seq']}")
            if not dup:
                await delivery.deliver(conv, entry)
        if result.handoff:
            METRICS.bot_handoffs.labels(result.reason or "backend").inc()
            await delivery.deliver(current, await self.events.event(current, "handoff", reason=result.reason))
            await self.router.enqueue_new(current)


def last_bot_answer(result: Any, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """What the agent should see of the bot: its last real answer, not the handoff line."""
    if result.draft:  # a low-confidence answer the handoff message replaced
        return {"text": result.draft, "confidence": result.confidence, "backend": result.backend}
    for e in reversed(earlier):
        if e.get("t") == "msg" and e.get("role") == "bot" and not e.get("handoff"):
            return {"text": e["text"], "confidence": e.get("conf"), "backend": e.get("backend")}
    return {"text": None, "confidence": None, "backend": result.backend}

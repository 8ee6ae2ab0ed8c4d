"""Assignment policy on top of the coordinator.

See docs/routing.md for the invariants. In short: one FIFO queue per (tenant,
group); a conversation is assigned only from the queue head, under the queue's
lock, to an agent whose slot was charged atomically by the coordinator; every
state change of a conversation happens under that conversation's lock.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .model import Agent, Conversation
from .ports import RoutingStore


class RoutingSink(Protocol):
    """What the node does when routing changes something (log the event, tell the people)."""

    async def on_queued(self, conv: Conversation, ev: str) -> None: ...

    async def on_assigned(self, conv: Conversation, ev: str, previous: str | None) -> None: ...

    async def on_unassigned(self, conv: Conversation, agent: str, rid: Any = None) -> None:
        """`agent` no longer holds `conv`; `rid` is the request's (a transfer) when it answers one."""

    async def on_queue_changed(self, tenant: str, group: str) -> None: ...

    async def on_closed(self, conv: Conversation, by: str) -> None: ...


class RoutingError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Router:
    def __init__(self, coord: RoutingStore, sink: RoutingSink):
        self.coord = coord
        self.sink = sink

    async def enqueue_new(self, conv: Conversation) -> None:
        """A new conversation joins the back of its group's queue, then the queue drains."""
        await self.join(conv)
        await self.joined(conv)

    async def join(self, conv: Conversation) -> None:
        """Put a new conversation at the back of its group's queue.

        The caller then calls `joined` (after telling the visitor its position, for an `open`).
        """
        async with self.coord.lock(conv.tenant, "queue:" + conv.group):
            await self.coord.enqueue(conv.tenant, conv.group, conv.id)

    async def joined(self, conv: Conversation) -> None:
        """Log `queued` for a conversation `join` placed, then drain its queue."""
        await self.sink.on_queued(conv, "queued")
        await self.drain_and_tell(conv.tenant, conv.group)

    async def drain_and_tell(self, tenant: str, group: str) -> None:
        """Drain the queue; if nobody was assigned, tell the waiting visitors their positions."""
        if not await self.drain(tenant, group):
            await self.sink.on_queue_changed(tenant, group)

    async def drain(self, tenant: str, group: str) -> int:
        """Assign queue heads while agents have room; returns how many were assigned.

        The queue lock covers taking the head and charging an agent; the conversation's own
        lock is taken after it is released. Never both at once: segment locks are not
        reentrant, and the two keys may fall in the same segment.
        """
        assigned = 0
        changed = False
        while True:
            async with self.coord.lock(tenant, "queue:" + group):
                head = await self.coord.queue_head(tenant, group)
                if head is None:
                    break
                conv = await self.coord.get_conversation(tenant, head)
                if conv is None or conv.state != "queued":
                    await self.coord.queue_remove(tenant, group, head)  # stale entry
                    changed = True
                    continue
                agent = await self._reserve(conv)
                if agent is None:
                    break
                await self.coord.queue_remove(tenant, group, head)
                changed = True
            async with self.coord.lock(tenant, head):
                conv = await self.coord.get_conversation(tenant, head)
                if conv is None or conv.state != "queued":  # closed while we reserved
                    await self.coord.release_agent(tenant, agent)
                    continue
                conv.state, conv.agent, conv.assigned_us, conv.avoid = "assigned", agent, _now_us(), None
                await self.coord.save_conversation(conv)
            await self.coord.set_sticky_agent(tenant, conv.visitor, agent)
            await self.sink.on_assigned(conv, "assigned", None)
            assigned += 1
        if changed:
            await self.sink.on_queue_changed(tenant, group)
        return assigned

    async def _reserve(self, conv: Conversation) -> str | None:
        """Charge an agent for queued `conv`: its visitor's previous agent if it has room, else the least-loaded.

        An agent that transferred `conv` away to the group is passed over while another agent has
        room (docs/routing.md step 6): its slots charged while looking are released again.
        """
        tenant, group = conv.tenant, conv.group
        sticky = await self.coord.sticky_agent(tenant, conv.visitor)
        agent = await self.coord.reserve_agent(tenant, group, prefer=None if sticky == conv.avoid else sticky)
        if agent is None or agent != conv.avoid:
            return agent
        held = 1  # charges on the avoided agent; each makes it look busier to the next pick
        try:
            while True:
                other = await self.coord.reserve_agent(tenant, group)
                if other != conv.avoid:
                    if other is not None:
                        return other
                    held -= 1  # nobody else has room: it keeps one of its charges and gets the conversation
                    return agent
                held += 1
        finally:
            for _ in range(held):
                await self.coord.release_agent(tenant, agent)

    async def agent_changed(self, agent: Agent) -> None:
        """Status, connection or capacity changed: it may have room now."""
        if agent.available:
            for group in agent.groups:
                await self.drain(agent.tenant, group)

    async def close(self, tenant: str, conv_id: str, by: str) -> Conversation:
        async with self.coord.lock(tenant, conv_id):
            conv = await self.coord.get_conversation(tenant, conv_id)
            if conv is None:
                raise RoutingError("not_participant", "no such conversation")
            if conv.state == "closed":
                raise RoutingError("conflict", "conversation is already closed")
            agent, was_queued = conv.agent, conv.state == "queued"
            conv.state = "closed"
            await self.coord.save_conversation(conv)
        if was_queued:
            async with self.coord.lock(tenant, "queue:" + conv.group):
                await self.coord.queue_remove(tenant, conv.group, conv.id)
            await self.sink.on_queue_changed(tenant, conv.group)
        await self.sink.on_closed(conv, by)
        if agent:
            await self.coord.release_agent(tenant, agent)
            await self.sink.on_unassigned(conv, agent)
            released = await self.coord.get_agent(tenant, agent)
            if released:
                await self.agent_changed(released)
        return conv

    async def transfer(self, tenant: str, conv_id: str, by: str, to_agent: str | None, to_group: str | None,
                       rid: Any = None) -> Conversation:
        """Move a conversation to a named agent (who must have room) or to a group's queue.

        `rid` (the transfer request's) goes into the `unassigned` that answers `by`, right after the
        state is saved; the caller then calls `settle_transfer` with a fresh `done` set (the request
        is answered: what follows is not reported to `by`, and is retried).
        Raises RoutingError: not_participant, forbidden (not `by`'s), conflict (target has no room).
        """
        async with self.coord.lock(tenant, conv_id):
            conv = await self.coord.get_conversation(tenant, conv_id)
            if conv is None:
                raise RoutingError("not_participant", "no such conversation")
            if conv.state != "assigned" or conv.agent != by:
                raise RoutingError("forbidden", "only the agent holding a conversation can transfer it")
            group = to_group or conv.group
            if to_agent is not None:
                if to_agent == by:
                    raise RoutingError("conflict", "conversation is already yours")
                target = await self.coord.get_agent(tenant, to_agent)
                if target is None or group not in target.groups:
                    raise RoutingError("conflict", f"agent {to_agent} is not in group {group}")
                got = await self.coord.reserve_agent(tenant, group, prefer=to_agent)
                if got != to_agent:
                    # reserve_agent falls back to the least-loaded agent; only `to_agent` is wanted here
                    if got is not None:
                        await self.coord.release_agent(tenant, got)
                    raise RoutingError("conflict", f"agent {to_agent} is not available or has no room")
                conv.agent, conv.group, conv.assigned_us, conv.avoid = to_agent, group, _now_us(), None
                await self.coord.save_conversation(conv)
            else:
                conv.state, conv.agent, conv.group, conv.avoid = "queued", None, group, by
                conv.queued_ms = _now_us() // 1000
                await self.coord.save_conversation(conv)
        await self.sink.on_unassigned(conv, by, rid)
        return conv

    async def settle_transfer(self, conv: Conversation, by: str, done: set[str]) -> None:
        """After `transfer` answered `by`: `by`'s slot is released, the named agent gets the
        conversation (`conv.agent`) or it goes to the front of its group's queue, which drains; then
        `by`'s freed slot takes new work.

        Tried again from the start when shared state was away: `done` (the caller's, kept between
        tries) records the steps that took effect, so none is done twice (a slot released twice would
        undercount the agent's load). A conversation that changed meanwhile (closed, moved again) is
        not announced.
        """
        tenant, group, to_agent = conv.tenant, conv.group, conv.agent
        if "release" not in done:
            await self.coord.release_agent(tenant, by)
            done.add("release")
        if "move" not in done:
            current = await self.coord.get_conversation(tenant, conv.id)
            if current is None or current.state != conv.state or current.agent != to_agent:
                done.add("move")  # changed since the transfer: the change announced itself
            elif to_agent is not None:
                await self.coord.set_sticky_agent(tenant, conv.visitor, to_agent)
                await self.sink.on_assigned(current, "transferred", by)
                done.add("move")
            else:
                async with self.coord.lock(tenant, "queue:" + group):
                    await self.coord.enqueue(tenant, group, conv.id, front=True)
                await self.sink.on_queued(current, "transferred")
                done.add("move")
        if "drain" not in done and to_agent is None:
            if not await self.drain(tenant, group):
                await self.sink.on_queue_changed(tenant, group)
            done.add("drain")
        me = await self.coord.get_agent(tenant, by)
        if me:
            await self.agent_changed(me)

    async def requeue_agent(self, tenant: str, agent_id: str) -> list[str]:
        """The agent's grace period ran out: its conversations go back to the front of their queues."""
        moved: list[str] = []
        groups: set[str] = set()
        held = [c for c in [await self.coord.get_conversation(tenant, i)
                            for i in await self.coord.conversations_of_agent(tenant, agent_id)] if c is not None]
        # Each goes to the front, so the last assigned goes first and the first assigned ends up ahead.
        held.sort(key=lambda c: (c.assigned_us, c.created_ms, c.id))
        for conv_id in reversed([c.id for c in held]):
            async with self.coord.lock(tenant, conv_id):
                conv = await self.coord.get_conversation(tenant, conv_id)
                if conv is None or conv.state != "assigned" or conv.agent != agent_id:
                    continue
                conv.state, conv.agent, conv.queued_ms = "queued", None, _now_us() // 1000
                await self.coord.save_conversation(conv)
            await self.coord.release_agent(tenant, agent_id)
            async with self.coord.lock(tenant, "queue:" + conv.group):
                await self.coord.enqueue(tenant, conv.group, conv.id, front=True)
            await self.sink.on_unassigned(conv, agent_id)
            await self.sink.on_queued(conv, "requeued")
            moved.append(conv_id)
            groups.add(conv.group)
        for g in sorted(groups):
            await self.drain(tenant, g)
            await self.sink.on_queue_changed(tenant, g)
        return moved


def _now_us() -> int:
    return time.time_ns() // 1000

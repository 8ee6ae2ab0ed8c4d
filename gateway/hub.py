"""The node's core, assembled: what the listener talks to.

Each concern has its own module; the hub builds them and wires them together:

- `dispatch.Dispatcher`: per-connection order and inline starts (docs/hub.md, 1-6a);
- `handlers.Handlers`: what each envelope kind does;
- `lifecycle.Lifecycle`: welcome, presence, grace periods, heartbeats, token expiry,
  close deadlines (one timing wheel);
- `conversation_events.ConversationEvents`: the router's sink (events into the log, out
  to the participants);
- `delivery.Delivery`: local connections, per-connection order of log entries, replay;
- `bot_turns.BotTurns`: the bot side, behind its worker-process bridge;
- `tasks.TaskSet`: the node's background tasks.

Sessions (gateway/session.py; the WebSocket one is gateway/listener.pyx) call the hub's
`Core` methods: `connected`, `disconnected`, `submit`, `closing`, `slow_reader` and
`resumed_writing`. Write coalescing is the transport's (listener.schedule_flush).
"""

from __future__ import annotations

import asyncio
from typing import Any

from routing import Router

from .bot_turns import BotTurns
from .conversation_events import ConversationEvents
from .coordinator import Coordinator
from .delivery import Delivery
from .dispatch import Dispatcher
from .handlers import Handlers
from .lifecycle import Lifecycle
from .metrics import METRICS
from .tasks import TaskSet


class Hub:
    """One node's connection-facing core; see the module docstring for who owns what."""

    def __init__(self, cfg: Any, coord: Coordinator):
        self.cfg = cfg
        self.coord = coord
        self.loop = asyncio.get_event_loop()
        self.tasks = TaskSet(self.loop)
        self.delivery = Delivery(coord, self.tasks.spawn, stall_s=cfg.heartbeat_timeout_s)
        self.events = ConversationEvents(coord, self.delivery, cfg.assign_history)
        self.router = Router(coord, self.events)
        self.bots: Any = None
        self.bot_turns: BotTurns | None = None
        if cfg.bots_enabled and cfg.bots.get("enabled", True):
            from bot_bridge.worker import WorkerBridge  # the bridge itself runs in a worker process

            self.bots = WorkerBridge.from_mapping(cfg.bots, self._worker_env())
            self.bot_turns = BotTurns(self.bots, coord, self.delivery, self.events, self.router, self.tasks)
            self.events.bot_turns = self.bot_turns
        self.handlers = Handlers(cfg, coord, self.router, self.delivery, self.events, self.bots, self.bot_turns,
                                 self.tasks.spawn)
        dispatcher = Dispatcher(self.tasks, self.handlers.table(), eager=self.handlers.eager, inline=self.handlers.inline())
        self.lifecycle = Lifecycle(cfg, coord, self.router, self.delivery, self.events, self.tasks, self.bot_turns,
                                   first=dispatcher.first)
        self.conns = self.lifecycle.conns
        self.users = self.delivery.users
        # What the listener calls, bound once (an attribute lookup per frame, no extra call).
        self.submit = dispatcher.submit
        self.run = dispatcher.run  # the REST API: one envelope to the end of its handler (api_session.py)
        self.connected = self.lifecycle.connected
        self.disconnected = self.lifecycle.disconnected
        self.closing = self.lifecycle.closing
        self.slow_reader = self.lifecycle.slow_reader
        self.resumed_writing = self.lifecycle.resumed_writing
        coord.on_delivery(self.delivery.from_remote)

    async def start(self) -> None:
        if self.bots is not None:
            await self.bots.start()
        self.lifecycle.start()

    async def stop(self) -> None:
        if self.bot_turns is not None:
            self.bot_turns.cancel_all()
            await self.bots.close()
        self.lifecycle.stop()
        self.tasks.cancel_all()

    async def reload_bots(self, table: dict[str, Any]) -> bool:
        """Bots on a new `[bots]` table (a reload): a new worker reads it and the FAQ files again;
        once it is ready new bot turns go to it, while turns already asked finish on the old one,
        which then stops. So a question asked during a reload gets the old or the new answer.

        Raises (and changes nothing) when the table or a file it names is refused. Returns False,
        starting nothing, when neither the table nor its files changed.
        """
        from bot_bridge.worker import WorkerBridge, fingerprint

        if self.bots is not None and self.bots.fingerprint == fingerprint(table):
            return False

        new = WorkerBridge.from_mapping(table, self._worker_env())
        await new.start()
        old, self.bots = self.bots, new
        self.handlers.bots = new
        if self.bot_turns is not None:
            self.bot_turns.bridge = new
        if old is not None:
            self.tasks.spawn(old.retire())
        return True

    def _worker_env(self) -> dict[str, str]:
        """The bot worker logs as the node does."""
        return {"GATEWAY_LOG_LEVEL": self.cfg.log_level, "GATEWAY_LOG_FORMAT": self.cfg.log_format}

    def shed_memory(self) -> None:
        """The memory guard's soft line: drop what can be rebuilt. The dedup cache starts empty (the
        log's client-id record stays exact behind it); the coordinator drops what its store or
        Redis answers for (closed conversations, committed entries held in memory)."""
        self.handlers.shed_memory()
        self.coord.shed_memory()

    def stats(self) -> dict[str, Any]:
        dedup = self.handlers.dedup
        return {"connections": len(self.conns), "users": len(self.users), "dedup": len(dedup) if dedup is not None else 0,
                "timers": self.lifecycle.timers(), "catch_ups": METRICS.hot.catch_ups, "coordinator": self.coord.counters()}

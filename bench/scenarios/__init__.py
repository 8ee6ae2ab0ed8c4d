"""Scenarios: each is a module with `run(ctx) -> dict` (see base.Context)."""

from __future__ import annotations

from types import ModuleType

from . import bot, churn, cluster, fanout, idle, relay

SCENARIOS: dict[str, ModuleType] = {"idle": idle, "relay": relay, "fanout": fanout, "churn": churn, "bot": bot,
                                    "cluster": cluster}
STUBS = {"bot": bot.STATUS, "cluster": cluster.STATUS}

__all__ = ["SCENARIOS", "STUBS"]

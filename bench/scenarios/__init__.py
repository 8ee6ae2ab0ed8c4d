"""Scenarios: each is a module with `run(ctx) -> dict` (see base.Context)."""

from __future__ import annotations

from types import ModuleType

from . import bot, churn, cluster, fanout, idle, relay, storm

SCENARIOS: dict[str, ModuleType] = {"idle": idle, "relay": relay, "fanout": fanout, "churn": churn, "bot": bot,
                                    "cluster": cluster, "storm": storm}
STUBS: dict[str, str] = {}  # scenario -> why it is not measured yet (none at the moment)

__all__ = ["SCENARIOS", "STUBS"]

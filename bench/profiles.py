"""Run profiles: how big and how long each scenario is.

quick: the whole suite in under five minutes on a small machine.
full: steps to 100k idle connections (where the open-file limit and memory allow) and longer windows.
"""

from __future__ import annotations

import copy
from typing import Any

QUICK: dict[str, Any] = {
    "name": "quick",
    "deadline_s": 285,
    "heartbeat_s": 3.0,
    "idle": {"steps": [2_500, 10_000], "conc": 200, "settle_s": 0.5, "hold_s": 3.0, "open_deadline_s": 60},
    "relay": {"pairs": 100, "window": 4, "warmup_s": 1.0, "probe_s": 2.5, "fractions": [0.25, 0.5, 0.75], "step_s": 2.0,
              "drain_s": 2.0},
    "fanout": {"recipients": 1_000, "rounds": 10, "queue_visitors": 300, "queue_rounds": 5, "round_timeout_s": 10},
    "churn": {"conc": 16, "duration_s": 2.5},
    "bot": {"human_pairs": 50, "human_rate": 2_000, "window": 2, "drain_s": 1.0, "bot_convs": 20, "bot_levels": [5, 20],
            "tokens": 20, "token_delay_ms": "5-10", "coalesce_ms": 50, "warmup_s": 1.0, "ramp_s": 0.5, "step_s": 3.0,
            "bot_drain_s": 3.0},
    "cluster": {"pairs": 100, "window": 4, "warmup_s": 1.0, "probe_s": 2.5, "fractions": [0.25, 0.5, 0.75], "step_s": 2.0,
                "drain_s": 1.0, "node_counts": [1, 2, 3]},
    # not in the default scenario list: `--scenario storm` (it holds many connections for a while)
    "storm": {"connections": 20_000, "workers": 2, "open_deadline_s": 120.0, "chat_fraction": 0.01, "settle_s": 2.0,
              "hold_s": 5.0, "chat_s": 5.0, "chat_rate": 200.0, "window": 2, "drain_s": 1.0, "conc": 200},
    # memory-only comparisons in a quick run: the read buffer, the transport, the gateway's bare listener
    "only": {"picows_1k": ["idle"], "picows_uv": ["idle"], "gateway_echo": ["idle"]},
}

FULL: dict[str, Any] = {
    "name": "full",
    "deadline_s": 3_000,
    "heartbeat_s": 10.0,
    "idle": {"steps": [10_000, 50_000, 100_000], "conc": 256, "settle_s": 2.0, "hold_s": 12.0, "open_deadline_s": 300},
    "relay": {"pairs": 500, "window": 4, "warmup_s": 2.0, "probe_s": 10.0, "fractions": [0.1, 0.25, 0.5, 0.75, 0.9],
              "step_s": 8.0, "drain_s": 3.0},
    "fanout": {"recipients": 10_000, "rounds": 20, "queue_visitors": 2_000, "queue_rounds": 10, "round_timeout_s": 30},
    "churn": {"conc": 32, "duration_s": 15.0},
    "bot": {"human_pairs": 200, "human_rate": 5_000, "window": 2, "drain_s": 2.0, "bot_convs": 100,
            "bot_levels": [10, 30, 100], "tokens": 20, "token_delay_ms": "5-10", "coalesce_ms": 50, "warmup_s": 3.0,
            "ramp_s": 1.0, "step_s": 10.0, "bot_drain_s": 5.0},
    "cluster": {"pairs": 500, "window": 4, "warmup_s": 2.0, "probe_s": 10.0, "fractions": [0.1, 0.25, 0.5, 0.75, 0.9],
                "step_s": 8.0, "drain_s": 3.0, "node_counts": [1, 2, 3]},
    "storm": {"connections": 100_000, "workers": 6, "open_deadline_s": 300.0, "chat_fraction": 0.01, "settle_s": 5.0,
              "hold_s": 20.0, "chat_s": 20.0, "chat_rate": 1000.0, "window": 2, "drain_s": 2.0, "conc": 200},
    "only": {},
}

# A few seconds end to end: the smoke test.
TINY: dict[str, Any] = {
    "name": "tiny",
    "deadline_s": 60,
    "heartbeat_s": 2.0,
    "idle": {"steps": [20], "conc": 10, "settle_s": 0.1, "hold_s": 0.5, "open_deadline_s": 10},
    "relay": {"pairs": 10, "window": 2, "warmup_s": 0.3, "probe_s": 1.0, "fractions": [0.5], "step_s": 1.0, "drain_s": 1.0},
    "fanout": {"recipients": 20, "rounds": 3, "queue_visitors": 10, "queue_rounds": 2, "round_timeout_s": 5},
    "churn": {"conc": 2, "duration_s": 1.0},
    "bot": {"human_pairs": 10, "human_rate": 200, "window": 2, "drain_s": 1.0, "bot_convs": 4, "bot_levels": [4],
            "tokens": 20, "token_delay_ms": "5-10", "coalesce_ms": 50, "warmup_s": 0.5, "ramp_s": 0.3, "step_s": 1.0,
            "bot_drain_s": 2.0},
    "cluster": {"pairs": 10, "window": 2, "warmup_s": 0.3, "probe_s": 1.0, "fractions": [0.5], "step_s": 1.0, "drain_s": 1.0,
                "node_counts": [1, 2]},
    "storm": {"connections": 200, "workers": 2, "open_deadline_s": 30.0, "chat_fraction": 0.05, "settle_s": 0.5,
              "hold_s": 1.0, "chat_s": 1.0, "chat_rate": 50.0, "window": 2, "drain_s": 1.0, "conc": 50},
    "only": {},
}

PROFILES = {"quick": QUICK, "full": FULL, "tiny": TINY}


def get(name: str) -> dict[str, Any]:
    return copy.deepcopy(PROFILES[name])

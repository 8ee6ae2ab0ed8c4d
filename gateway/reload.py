"""SIGHUP: read the configuration again and apply what can change while the node runs.

1. The file is read and checked as at start (`config.load`, with the command line's settings on
   top). A file that can't be read or is refused changes nothing: the node keeps its settings and
   says why (an ERROR line and `chatgw_config_reloads_total{outcome="refused"}`).
2. A new `[bots]` table (or the same one: its FAQ files may have changed) is started in a new bot
   worker; if that fails, nothing changes either (step 1's outcome).
3. Then the settings in RELOADABLE are copied onto the running configuration, which every part of
   the node reads: limits (the listener's shared `Limits` and the `welcome`'s copy), heartbeats,
   memory guard lines, drain times, log level, the admin token, and the JWT secret, which
   rotates: tokens signed with the old one stay accepted for `jwt_rotation_grace_s` (auth.KeyRing,
   by the `kid` in their header).
4. Any other setting that changed is named in a WARNING line: it needs a restart (ports, the
   coordinator, the data directory...).

A secret the node generated at start (development) stays: a reload would otherwise generate a new
one and refuse every token handed out so far. Tested by tests/test_operations.py::test_reload_*.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from . import logs
from .config import NOT_SETTINGS, Config, load
from .metrics import METRICS

log = logging.getLogger("gateway.reload")

LIMITS = {"max_frame": "max_frame", "max_text": "max_text", "rate_per_s": "rate", "rate_burst": "burst",
          "flood_strikes": "strikes", "max_write_buffer": "max_write_buffer"}
RELOADABLE = (*LIMITS, "heartbeat_s", "heartbeat_timeout_s", "agent_capacity", "agent_grace_s", "log_level",
              "log_connections", "memory_soft_mb", "memory_hard_mb", "drain_spread_s", "drain_timeout_s",
              "jwt_rotation_grace_s", "jwt_secret", "jwt_previous_secrets", "jwt_issuer", "admin_token", "bots",
              "api_rate_per_s", "api_rate_burst")
_one_at_a_time = asyncio.Lock()  # two SIGHUPs close together: the later file wins, not the slower reload


async def reload(node: Any) -> dict[str, Any]:
    """Reload `node`'s configuration (steps above); returns what `GET /admin/stats` shows as
    `last_reload`: {outcome: applied | refused, changed: [...], restart_needed: [...], error}."""
    async with _one_at_a_time:
        try:
            new, changed, restart = _read(node.cfg)
            bots_restarted = await _bots(node, new)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the node keeps running as it was
            METRICS.config_reloads.labels("refused").inc()
            log.error("configuration reload refused, running settings kept: %s: %s", type(e).__name__, e)
            node.last_reload = {"outcome": "refused", "error": f"{type(e).__name__}: {e}", "changed": [],
                                "restart_needed": [], "at": _now(), "file": node.cfg.origin[0]}
            return node.last_reload
        _apply(node, new, changed)
    METRICS.config_reloads.labels("applied").inc()
    shown = [n if n not in ("jwt_secret", "admin_token") else f"{n} (rotated)" for n in changed]  # names, never values
    log.info("configuration reloaded from %s: %s%s", node.cfg.origin[0], ", ".join(shown) or "nothing changed",
             "; bot worker restarted" if bots_restarted else "")
    if restart:
        log.warning("these settings changed in the file but need a restart to take effect: %s", ", ".join(restart))
    node.last_reload = {"outcome": "applied", "changed": changed, "restart_needed": restart, "error": None,
                        "bots_restarted": bots_restarted, "at": _now(), "file": node.cfg.origin[0]}
    return node.last_reload


def _read(running: Config) -> tuple[Config, list[str], list[str]]:
    """Step 1: the file read and checked again; what changed, reloadable or not. Changes nothing."""
    path, overrides = running.origin
    new = load(path, **overrides)
    for name in ("jwt_secret", "admin_token"):
        if name in new.generated:
            setattr(new, name, getattr(running, name))
    changed, restart = [], []
    for f in fields(running):
        if f.name in NOT_SETTINGS or f.name == "node_id" or getattr(new, f.name) == getattr(running, f.name):
            continue
        (changed if f.name in RELOADABLE else restart).append(f.name)
    return new, changed, restart


async def _bots(node: Any, new: Config) -> bool:
    """Step 2: a bot worker on the new table (and FAQ files) when either changed; raises, changing
    nothing, if it can't start. Returns whether one was started."""
    if node.hub is not None and node.hub.bot_turns is not None:
        return await node.hub.reload_bots(new.bots)
    return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _apply(node: Any, new: Config, changed: list[str]) -> None:
    """Steps 3-4: the checked values onto the running configuration. Nothing here can fail on a
    value: `load` checked each one's type and range."""
    running = node.cfg
    if "jwt_secret" in changed:
        running.keys.rotate(new.jwt_secret, new.jwt_rotation_grace_s)
    for name in changed:
        setattr(running, name, getattr(new, name))
    running.keys.previous = list(running.jwt_previous_secrets)
    for name, attr in LIMITS.items():
        setattr(node.limits, attr, getattr(running, name))
    if node.hub is not None:
        node.hub.lifecycle.limits_changed()
    logs.configure(running.log_level)
    node.picows_log.log_connections = running.log_connections

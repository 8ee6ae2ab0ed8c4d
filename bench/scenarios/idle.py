"""idle: N open connections doing nothing but heartbeats.

Per step (N rising): time and rate to open the new connections (gateway: until
each got its `welcome`), then after a short settle, a hold window of idle
connections: server CPU at rest (the server pings every connection every
`heartbeat_s`), server RSS. Memory per connection = (RSS at N - RSS before any
connection) / N. Kernel TCP memory (both ends of every loopback connection) is
reported apart: it is not in any RSS.
"""

from __future__ import annotations

import time
from typing import Any

from bench.measure import rss_bytes, tcp_kernel_bytes

from .base import Context, noise_fields

GROUP = "idle"


def steps_for(ctx: Context) -> tuple[list[int], str | None]:
    """The profile's steps, capped at what this machine lets one server hold."""
    want = sorted(ctx.params["steps"])
    steps = [n for n in want if n <= ctx.max_conns]
    note = None
    if len(steps) < len(want):
        steps.append(ctx.max_conns)
        note = (f"steps {[n for n in want if n > ctx.max_conns]} capped at {ctx.max_conns} connections: "
                "the server's open-file hard limit / memory on this machine")
    return steps, note


def run(ctx: Context) -> dict[str, Any]:
    p, srv = ctx.params, ctx.server
    steps, note = steps_for(ctx)
    # Warm up: the first connections import and allocate things every later one shares.
    ctx.open_spread("warm", 20, 20)
    ctx.close_all("warm")
    time.sleep(0.3)
    base_rss = rss_bytes(srv.pid)
    base_kernel = tcp_kernel_bytes()
    w = ctx.window()
    time.sleep(min(0.7, p["hold_s"]))
    base_win = w.stop()
    out: dict[str, Any] = {"heartbeat_s": ctx.profile["heartbeat_s"], "base_rss_mb": round(base_rss / 2**20, 2),
                           "base_cpu_pct": round(base_win.server_cpu_pct, 2), "steps": [], "note": note}
    have = 0
    for n in steps:
        ctx.need(p["hold_s"] + 5, f"idle step {n}")
        ctx.log(f"    idle: opening {n - have} more (to {n})")
        opened = ctx.open_spread(GROUP, n - have, p["open_deadline_s"], role="visitor", user="idle")
        have += opened["opened"]
        ctx.check_server()
        time.sleep(p["settle_s"])
        w = ctx.window()
        time.sleep(p["hold_s"])
        hold = w.stop()
        rss = rss_bytes(srv.pid)
        kernel = tcp_kernel_bytes()
        alive = sum(r["alive"] for r in ctx.loadgen.all({"op": "alive", "group": GROUP}, timeout=30))
        step: dict[str, Any] = {
            "connections": have,
            "alive": alive,
            "open": {k: opened[k] for k in ("requested", "opened", "failed", "errors", "elapsed_s", "rate_per_s",
                                            "server_cpu_ms_per_conn")},
            "rss_mb": round(rss / 2**20, 2),
            "rss_bytes": rss,
            "rss_per_conn_kb": round((rss - base_rss) / have / 1024, 3) if have else None,
            "kernel_tcp_per_conn_kb": round((kernel - base_kernel) / have / 1024, 3) if have else None,
            "cpu_at_rest_pct": round(hold.server_cpu_pct, 3),
            "cpu_us_per_conn_per_s": round(hold.server_cpu_s * 1e6 / have / hold.wall_s, 3) if have else None,
            "hold_s": round(hold.wall_s, 2),
            **noise_fields(hold),
        }
        # marginal: the cost of the connections added by this step alone
        prev_n, prev_rss = (out["steps"][-1]["connections"], out["steps"][-1]["rss_bytes"]) if out["steps"] else (0, base_rss)
        step["rss_marginal_kb"] = round((rss - prev_rss) / (have - prev_n) / 1024, 3) if have > prev_n else None
        stats = srv.admin_stats()
        if stats is not None:
            step["server_reports_connections"] = _conn_count(stats)
        out["steps"].append(step)
        ctx.log(f"    idle: {have} open ({opened['rate_per_s']}/s), {step['rss_per_conn_kb']} KB/conn, "
                f"rest {step['cpu_at_rest_pct']}% CPU, noise {step['noise_pct']}%")
        if opened["failed"] > max(10, 0.01 * opened["requested"]):
            out["stopped"] = f"{opened['failed']} connections failed to open: {opened['errors']}"
            break
    out["close"] = ctx.close_all(GROUP, timeout=p.get("close_timeout_s", 30))
    time.sleep(0.5)
    out["rss_after_close_mb"] = round(rss_bytes(srv.pid) / 2**20, 2)
    return out


def _conn_count(stats: dict[str, Any]) -> Any:
    hub = stats.get("hub")
    return hub.get("connections") if isinstance(hub, dict) else None

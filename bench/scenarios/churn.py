"""churn: connect -> handshake -> clean close cycles, as fast as `conc` loops per worker can go.

One cycle: TCP connect from a rotating 127.x source address, WebSocket upgrade
(gateway: JWT verified, then wait for `welcome`), our close frame, the server's
close frame, socket gone. Cycles per second and per server CPU-second.
"""

from __future__ import annotations

from typing import Any

from .base import Context, latency, noise_fields, per_cpu


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    cmd = ctx.open_cmd("churn", role="visitor", user="churn")
    cmd.update(op="churn", conc=p["conc"], duration=p["duration_s"], timeout=5.0)
    ctx.log(f"    churn: {p['conc']} loops x {ctx.loadgen.n} workers for {p['duration_s']} s")
    w = ctx.window()
    replies = ctx.loadgen.all(cmd, ctx.timeout(p["duration_s"] + 30))
    win = w.stop()
    ctx.check_server()
    counts: dict[str, int] = {}
    for r in replies:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    cycles = counts.pop("cycles", 0)
    out = {
        "cycles": cycles,
        "clean": counts.pop("clean", 0),
        "unclean": counts.pop("unclean", 0),
        "errors": counts,
        "cycles_per_s": round(cycles / win.wall_s, 1) if win.wall_s else None,
        "cycles_per_cpu_s": per_cpu(cycles, win.server_cpu_s),
        "cycle_latency": latency(replies, "cycle"),
        **noise_fields(win),
    }
    ctx.log(f"    churn: {out['cycles_per_s']} cycles/s, {out['cycles_per_cpu_s']}/CPU-s, clean {out['clean']}/{cycles}")
    return out

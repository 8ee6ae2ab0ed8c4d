"""relay: messages between two ends through the server, under rising load.

What one "message" is:
- echo peers: a client sends a 128-byte text frame, the server echoes it to the
  same connection. One echoed frame = one message; latency = round trip.
- gateway: a visitor sends a `msg` envelope (64 characters of text, ~128 bytes
  of JSON) in its conversation; the agent receives the `msg`. One delivery to
  the other participant = one message; latency = visitor send -> agent
  receive (one way, same machine clock). Agents send to visitors the same way
  (`a2v`). For each message the gateway also writes the log, acks the sender
  and sends the sender its own copy: that work is counted against it.

Both kinds have the same number of flows (2 per conversation for the gateway,
1 per connection for peers, with 2x as many connections) so concurrency matches.

Steps: a closed-loop probe (every flow keeps `window` messages in flight) finds
the peak; then open-loop steps at fractions of that peak measure latency at a
known load. Messages per server CPU-second = messages / server CPU time in the
window (the server is pinned to its own CPU).
"""

from __future__ import annotations

import time
from typing import Any

from .base import Context, ceil_div, latency, noise_fields, per_cpu

CONVS_PER_AGENT = 50


def open_conversations(ctx: Context, pairs: int, prefix: str = "relay", tenant: str = "bench",
                       agents_kw: dict[str, Any] | None = None, visitors_kw: dict[str, Any] | None = None,
                       conv_group: str | None = None) -> dict[str, Any]:
    """`pairs` conversations, each a bench visitor assigned to a bench agent (groups `{prefix}_agents`/`_visitors`).

    One tenant per worker: its visitors are assigned to its own agents, so both ends of every conversation
    live in one process and one-way latency needs no cross-process bookkeeping. `agents_kw`/`visitors_kw`
    go into the `open` commands (e.g. `url`: another node; `groups`: the agents' groups claim);
    `conv_group` is the group the visitors `open` in.
    """
    lg = ctx.loadgen
    per_worker = lg.split(pairs)
    agents = [ceil_div(n, CONVS_PER_AGENT) for n in per_worker]
    capacity = min(1000, max((ceil_div(n, a) for n, a in zip(per_worker, agents, strict=True) if a), default=1))
    t = ctx.timeout(60)
    acmd = ctx.open_cmd(f"{prefix}_agents", role="agent", user=f"{prefix}-agent", tenant=tenant, capacity=capacity,
                        deadline_s=60, **(agents_kw or {}))
    lg.call([dict(acmd, n=a, tenant=f"{acmd['tenant']}-w{i}") if a else None for i, a in enumerate(agents)], t)
    online = lg.all({"op": "agents_online", "group": f"{prefix}_agents", "capacity": capacity, "timeout": 10}, t)
    base = ctx.open_cmd(f"{prefix}_visitors", role="visitor", user=f"{prefix}-visitor", tenant=tenant, deadline_s=60,
                        **(visitors_kw or {}))
    opened = lg.call([dict(base, n=n, tenant=f"{base['tenant']}-w{i}") if n else None for i, n in enumerate(per_worker)], t)
    states = lg.all({"op": "visitors_open", "group": f"{prefix}_visitors", "timeout": 10, "conc": 50,
                     "conv_group": conv_group}, t)
    return {"agents": sum(agents), "capacity": capacity, "agents_online": sum(r["online"] for r in online),
            "visitors": sum(r["opened"] for r in opened if r), "conv_states": _sum_counts(r["states"] for r in states),
            "tenant": base["tenant"], "agent_user": acmd["user"]}


def pair_flows(ctx: Context) -> dict[str, Any]:
    """Wait until every opened conversation reached its agent; two flows (v2a, a2v) per pair."""
    flows = ctx.loadgen.all({"op": "pair_flows", "timeout": 20}, ctx.timeout(60))
    return {"pairs": sum(r["pairs"] for r in flows), "unpaired": sum(r["unpaired"] for r in flows),
            "flows": sum(r["flows"] for r in flows)}


def _setup_gateway(ctx: Context, pairs: int) -> dict[str, Any]:
    lg = ctx.loadgen
    out = open_conversations(ctx, pairs)
    tenant, agent = out.pop("tenant"), out.pop("agent_user")
    out.update(pair_flows(ctx))
    if out["unpaired"]:
        # What the gateway itself says: still queued, or assigned but the agent never heard?
        out["diagnosis"] = {"queue": ctx.server.admin(f"tenants/{tenant}-w0/queues/default"),
                            "agent0": ctx.server.admin(f"tenants/{tenant}-w0/agents/{agent}-w0-0"),
                            "worker0": lg.call([{"op": "fan_wait", "expected": 0, "timeout": 0, "final": True}] + [None] * (lg.n - 1), 10)[0]}
        ctx.log(f"    relay: {out['unpaired']} conversations never reached an agent: {out['diagnosis']}")
    return out


def _setup_echo(ctx: Context, pairs: int) -> dict[str, Any]:
    opened = ctx.open_spread("relay", pairs * 2, 60)
    flows = ctx.loadgen.all({"op": "echo_flows", "group": "relay"}, ctx.timeout(30))
    return {"connections": opened["opened"], "failed": opened["failed"], "flows": sum(r["flows"] for r in flows)}


def _sum_counts(parts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0) + v
    return out


def run_step(ctx: Context, mode: str, duration: float, rate: float = 0.0) -> dict[str, Any]:
    p, lg = ctx.params, ctx.loadgen
    cmd: dict[str, Any] = {"op": "run", "mode": mode, "duration": duration, "window": p["window"], "drain": p["drain_s"]}
    w = ctx.window()
    if mode == "rate":
        # each worker gets its share of the rate in proportion to its flows (equal by construction)
        replies = lg.all(dict(cmd, rate=rate / lg.n), ctx.timeout(duration + p["drain_s"] + 30))
    else:
        replies = lg.all(cmd, ctx.timeout(duration + p["drain_s"] + 30))
    win = w.stop()
    ctx.check_server()
    return step_result(ctx, mode, rate, replies, win)


def step_result(ctx: Context, mode: str, rate: float, replies: list[dict[str, Any]], win: Any) -> dict[str, Any]:
    """One step's figures from the workers' replies and the measurement window."""
    sent = sum(r["sent"] for r in replies)
    delivered = sum(r["delivered"] for r in replies)
    keys = ("v2a", "a2v") if ctx.gateway else ("echo",)
    step: dict[str, Any] = {
        "mode": mode,
        "target_rate": round(rate) if mode == "rate" else None,
        "sent": sent,
        "delivered": delivered,
        "lost_or_late": sum(r["in_flight_left"] for r in replies),
        "skipped": sum(r["skipped"] for r in replies),
        "wall_s": round(win.wall_s, 3),
        "msgs_per_s": round(delivered / win.wall_s, 1) if win.wall_s else None,
        "server_cpu_s": round(win.server_cpu_s, 3),
        # the server process alone: in the bot scenario the rest is the bot worker, its child
        "node_cpu_s": round(win.server_main_cpu_s, 3),
        "node_cpu_pct": round(win.server_main_cpu_s / win.wall_s * 100, 1) if win.wall_s else None,
        "msgs_per_cpu_s": per_cpu(delivered, win.server_cpu_s),
        "latency": latency(replies, *keys),
        **noise_fields(win),
    }
    if ctx.gateway:
        step["latency_v2a"] = latency(replies, "v2a")
        step["latency_a2v"] = latency(replies, "a2v")
        counts = _sum_counts(r["counts"] for r in replies)
        step["acks"] = counts.get("acks", 0)
        step["own_copies"] = counts.get("own_copies", 0)
        step["dup_acks"] = counts.get("dup_acks", 0)
    errors = _sum_counts(r["errors"] for r in replies)
    if errors:
        step["errors"] = errors
    if win.server_cpu_each_s:
        step["server_cpu_each_s"] = [round(c, 3) for c in win.server_cpu_each_s]
    if win.others_cpu_s:
        step["others_cpu_s"] = {k: round(v, 3) for k, v in win.others_cpu_s.items()}
    return step


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    pairs = p["pairs"]
    ctx.log(f"    relay: setting up {pairs} {'conversations' if ctx.gateway else 'connection pairs'}")
    setup = _setup_gateway(ctx, pairs) if ctx.gateway else _setup_echo(ctx, pairs)
    out: dict[str, Any] = {"setup": setup, "window": p["window"], "steps": []}
    if not setup.get("flows"):
        out["error"] = "no flows could be set up"
        return out
    run_step(ctx, "closed", p["warmup_s"])  # warm-up, not reported
    ctx.need(p["probe_s"] + 5, "relay probe")
    probe = run_step(ctx, "closed", p["probe_s"])
    out["peak"] = probe
    ctx.log(f"    relay: peak {probe['msgs_per_s']} msg/s, {probe['msgs_per_cpu_s']} msg/CPU-s, "
            f"p99 {probe['latency']['p99_ms']} ms (server {probe['server_cpu_pct']}%, loadgen {probe['loadgen_cpu_pct']}%)")
    peak = probe["msgs_per_s"] or 0
    for frac in p["fractions"]:
        ctx.need(p["step_s"] + 5, f"relay step {frac}")
        step = run_step(ctx, "rate", p["step_s"], peak * frac)
        step["fraction_of_peak"] = frac
        out["steps"].append(step)
        ctx.log(f"    relay: {frac:.0%} of peak -> {step['msgs_per_s']} msg/s, p50 {step['latency']['p50_ms']} "
                f"p99 {step['latency']['p99_ms']} p99.9 {step['latency']['p99_9_ms']} ms")
    probe["fraction_of_peak"] = 1.0
    out["steps"].append(probe)
    time.sleep(0.1)
    out["close"] = ctx.close_all("relay_visitors" if ctx.gateway else "relay", reset_flows=True)
    if ctx.gateway:
        out["close_agents"] = ctx.close_all("relay_agents", reset_flows=True)
    return out

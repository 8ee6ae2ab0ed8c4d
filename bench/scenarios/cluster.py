"""cluster: 1, 2 and 3 gateway nodes over one Redis (`node_counts`), one after the other in the same run.

With several nodes every message crosses nodes (visitors on node i, their agents on node i+1), under
rising load; one node over Redis shows what the Redis path costs without the crossing. The main
result (the tables) is two nodes'; `by_nodes` has each count's peak, msgs per gateway CPU-s, p99 at
half of peak and Redis commands per message, which the report tables and plots against node count.

The scenario hosts its own processes (HOSTED):
- one `redis-server` on a free 127.0.0.1 port, no persistence (`save ""`, `appendonly no`), its own
  temporary directory (removed afterwards), stopped with SIGTERM at the end;
- for each node count, that many gateway nodes (`python -m gateway serve`, GATEWAY_COORDINATOR=redis,
  GATEWAY_REDIS_URL at it, GATEWAY_BOTS_ENABLED=false, the same GATEWAY_JWT_SECRET and admin token), each
  waited for until its `/readyz` proves delivery through Redis, stopped before the next count starts.

Pinning (when the bench pins, i.e. 2+ CPUs): all nodes share the server CPU(s), so together they have
what one node has in the relay scenario and msgs per gateway CPU-s compare with it; redis-server runs on
the load generator's CPU(s). With 2 CPUs: nodes on CPU 0, Redis and the load generator on CPU 1.

Conversations: spread over the routes node i -> node i+1 (one tenant per route and worker), so every
`msg` is appended by one node (group commit: one Lua call per loop turn) and delivered to the other
participant through Redis (`SPUBLISH` to the holder's channel, batched: one publish per destination
node per flush). Steps as relay: closed-loop probe for the peak, then open-loop
steps at fractions of it. Per step: delivered msgs/s, one-way latency across nodes, gateway CPU per
message (both nodes together, and each), redis-server CPU per message (/proc/PID/stat), Redis commands
per message (INFO commandstats, script-internal calls included), commands the nodes sent per message
(counted by the nodes: `commands_sent`), and from both nodes' /admin/stats (hub.coordinator): publishes,
items delivered by them, pipelines; items per publish = what batching saves.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import urllib.request
from typing import Any

from bench import servers

from .base import Context, Skipped
from .relay import open_conversations, pair_flows, run_step

HOSTED = True  # starts redis-server and two gateway nodes itself
STATS = ("published", "delivered_items", "pipelines", "received_items", "no_holder", "commit_batches", "commit_appends",
         "catch_ups", "commands_sent")


def _ready(srv: servers.Running, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{servers.HOST}:{srv.http_port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _coord_stats(nodes: list[servers.Running]) -> list[dict[str, int]]:
    out = []
    for n in nodes:
        hub = (n.admin_stats() or {}).get("hub") or {}
        st = {**(hub.get("coordinator") or {}), "catch_ups": hub.get("catch_ups", 0)}
        out.append({k: int(st.get(k, 0)) for k in STATS})
    return out


def _redis_calls(port: int) -> dict[str, int] | None:
    """Commands Redis executed so far, by command (INFO commandstats)."""
    try:
        import redis

        r = redis.Redis(host=servers.HOST, port=port, socket_timeout=5)
        try:
            return {k.removeprefix("cmdstat_"): int(v.get("calls", 0)) for k, v in r.info("commandstats").items()}
        finally:
            r.close()
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None


def _measured_step(ctx: Context, nodes: list[servers.Running], redis_port: int, mode: str, duration: float,
                   rate: float = 0.0) -> dict[str, Any]:
    before, calls0 = _coord_stats(nodes), _redis_calls(redis_port)
    step = run_step(ctx, mode, duration, rate)
    after, calls1 = _coord_stats(nodes), _redis_calls(redis_port)
    delta = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in STATS}
    d = step["delivered"] or 0
    redis_cpu = (step.get("others_cpu_s") or {}).get("redis")
    step["coordinator"] = delta
    step["coordinator_by_node"] = [{k: a[k] - b[k] for k in STATS} for a, b in zip(after, before, strict=True)]
    step["items_per_publish"] = round(delta["delivered_items"] / delta["published"], 2) if delta["published"] else None
    step["publishes_per_msg"] = round(delta["published"] / d, 3) if d else None
    step["appends_per_commit"] = round(delta["commit_appends"] / delta["commit_batches"], 2) if delta["commit_batches"] else None
    step["items_per_pipeline"] = round(delta["delivered_items"] / delta["pipelines"], 2) if delta["pipelines"] else None
    # What the nodes asked Redis for, counted where they send it; INFO commandstats (below) also
    # counts every call the append script makes inside Redis (at least one XADD per message).
    step["node_commands_per_msg"] = round(delta["commands_sent"] / d, 3) if d else None
    step["gateway_cpu_us_per_msg"] = round(step["server_cpu_s"] * 1e6 / d, 2) if d else None
    step["gateway_cpu_us_per_msg_each"] = [round(c * 1e6 / d, 2) for c in step.get("server_cpu_each_s", [])] if d else None
    step["redis_cpu_s"] = redis_cpu
    step["redis_cpu_pct"] = round(redis_cpu / step["wall_s"] * 100, 1) if redis_cpu is not None and step["wall_s"] else None
    step["redis_cpu_us_per_msg"] = round(redis_cpu * 1e6 / d, 2) if redis_cpu is not None and d else None
    if d and calls0 is not None and calls1 is not None:
        # The INFO calls of this bench itself are left out: they are not the gateway's.
        by_cmd = {k: v - calls0.get(k, 0) for k, v in calls1.items() if k != "info" and v - calls0.get(k, 0) > 0}
        step["redis_calls_per_msg"] = round(sum(by_cmd.values()) / d, 2)
        step["redis_calls_per_msg_by_command"] = {k: round(v / d, 3) for k, v in sorted(by_cmd.items(), key=lambda kv: -kv[1])}
    else:
        step["redis_calls_per_msg"] = None
    return step


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    if shutil.which("redis-server") is None:
        raise Skipped("redis-server not installed")
    ctx.need((p["probe_s"] + p["step_s"] * len(p["fractions"]) + 10) * len(p.get("node_counts", [2])), "cluster scenario")
    lg_cpus = ctx.loadgen.cpus
    tmp = tempfile.mkdtemp(prefix="chatgw-bench-redis-")
    redis = None
    nodes: list[servers.Running] = []
    try:
        port = servers.free_port()
        redis = servers.start_aux("redis", ["redis-server", "--port", str(port), "--bind", servers.HOST, "--save", "",
                                            "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes",
                                            "--daemonize", "no", "--logfile", ""],
                                  lg_cpus, r"Ready to accept connections", port=port)
        env = {"GATEWAY_COORDINATOR": "redis", "GATEWAY_REDIS_URL": f"redis://{servers.HOST}:{port}/0",
               "GATEWAY_BOTS_ENABLED": "false", "GATEWAY_JWT_SECRET": secrets.token_urlsafe(32),
               "GATEWAY_ADMIN_TOKEN": secrets.token_urlsafe(32)}
        results: dict[int, dict[str, Any]] = {}
        for count in p.get("node_counts", [2]):
            nodes = []
            for i in range(count):
                nodes.append(servers.start("gateway", {"heartbeat_s": ctx.profile["heartbeat_s"]}, ctx.server_cpus,
                                           dict(env, GATEWAY_NODE_ID=f"bench-node-{count}{'abc'[i]}-{ctx.tag}")))
            for n in nodes:
                if not _ready(n, 20):
                    raise RuntimeError(f"node on port {n.port} not ready (/readyz) within 20 s: {''.join(n.output[-5:])}")
            ctx.server, ctx.more_servers, ctx.others = nodes[0], nodes[1:], {"redis": redis.pid}
            results[count] = _measure(ctx, nodes, port)
            for n in nodes:
                code = n.stop()
                if code not in (0, None, -15):
                    ctx.log(f"    cluster: node exit code {code}: {''.join(n.output[-5:])}")
            nodes = []
        main = results.get(2) or next(iter(results.values()))
        main["by_nodes"] = {str(k): _by_nodes(v) for k, v in results.items()}
        return main
    finally:
        for n in nodes:
            code = n.stop()
            if code not in (0, None, -15):
                ctx.log(f"    cluster: node exit code {code}: {''.join(n.output[-5:])}")
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(ctx: Context, nodes: list[servers.Running], redis_port: int) -> dict[str, Any]:
    p = ctx.params
    count = len(nodes)
    pin = (f"nodes on CPU {sorted(ctx.server_cpus)}, redis-server and load generator on CPU {sorted(ctx.loadgen.cpus)}"
           if ctx.server_cpus else "no CPU pinning")
    # Every message crosses nodes when there are several: visitors on node i, their agents on i+1.
    routes = [(0, 0)] if count == 1 else [(i, (i + 1) % count) for i in range(count)]
    ctx.log(f"    cluster: {count} node(s) (ws {', '.join(str(n.port) for n in nodes)}), redis on port {redis_port}; "
            f"{pin}; {p['pairs']} conversations over {len(routes)} route(s)")
    setup: dict[str, Any] = {}
    names = []
    for k, (v, a) in enumerate(routes):
        share = p["pairs"] // len(routes) + (1 if k < p["pairs"] % len(routes) else 0)
        name = f"r{count}{v}{a}"
        s = open_conversations(ctx, share, prefix=name, tenant=name, agents_kw={"url": nodes[a].url},
                               visitors_kw={"url": nodes[v].url})
        s.pop("tenant"), s.pop("agent_user")
        setup[f"visitors_on_{v}_agents_on_{a}"] = s
        names.append(name)
    setup.update(pair_flows(ctx))
    out: dict[str, Any] = {"setup": setup, "window": p["window"], "steps": [], "pinning": pin, "node_count": count,
                           "nodes": [{"ws_port": n.port, "pid": n.pid} for n in nodes]}
    if not setup["flows"]:
        out["error"] = f"no flows could be set up: {setup}"
        return out
    if setup["unpaired"]:
        ctx.log(f"    cluster: {setup['unpaired']} conversations never reached their agent")
    run_step(ctx, "closed", p["warmup_s"])  # warm-up, not reported
    ctx.need(p["probe_s"] + 5, "cluster probe")
    probe = _measured_step(ctx, nodes, redis_port, "closed", p["probe_s"])
    out["peak"] = probe
    ctx.log(f"    cluster: peak {_line(probe)}")
    peak = probe["msgs_per_s"] or 0
    for frac in p["fractions"]:
        ctx.need(p["step_s"] + 5, f"cluster step {frac}")
        step = _measured_step(ctx, nodes, redis_port, "rate", p["step_s"], peak * frac)
        step["fraction_of_peak"] = frac
        out["steps"].append(step)
        ctx.log(f"    cluster: {frac:.0%} of peak -> {_line(step)}")
    probe["fraction_of_peak"] = 1.0
    out["steps"].append(probe)
    out["node_stats"] = [(n.admin_stats() or {}).get("hub") for n in nodes]
    time.sleep(0.1)
    out["close"] = {name: ctx.close_all(f"{name}_visitors", reset_flows=name == names[-1]) for name in names}
    for name in names:
        ctx.close_all(f"{name}_agents", reset_flows=name == names[-1])
    return out


def _by_nodes(r: dict[str, Any]) -> dict[str, Any]:
    """One node count's figures for the by-node-count table and plot."""
    steps = {s.get("fraction_of_peak"): s for s in r.get("steps", [])}
    peak, half, quarter = steps.get(1.0) or {}, steps.get(0.5) or {}, steps.get(0.25) or {}
    return {"peak_msgs_per_s": peak.get("msgs_per_s"), "msgs_per_gateway_cpu_s": peak.get("msgs_per_cpu_s"),
            "p99_ms_at_half_peak": (half.get("latency") or {}).get("p99_ms"),
            "redis_calls_per_msg_at_peak": peak.get("redis_calls_per_msg"),
            "redis_calls_per_msg_at_quarter": quarter.get("redis_calls_per_msg"),
            "node_commands_per_msg_at_peak": peak.get("node_commands_per_msg"),
            "node_commands_per_msg_at_quarter": quarter.get("node_commands_per_msg"),
            "redis_cpu_us_per_msg_at_peak": peak.get("redis_cpu_us_per_msg"),
            "appends_per_commit_at_peak": peak.get("appends_per_commit")}


def _line(s: dict[str, Any]) -> str:
    lat = s["latency"]
    return (f"{s['msgs_per_s']} msg/s, p50 {lat['p50_ms']} p99 {lat['p99_ms']} p99.9 {lat['p99_9_ms']} ms; gateway "
            f"{s['gateway_cpu_us_per_msg']} us/msg ({s['server_cpu_pct']}% CPU), redis {s['redis_cpu_us_per_msg']} us/msg "
            f"({s['redis_cpu_pct']}% CPU, {s['redis_calls_per_msg']} calls/msg), {s['items_per_publish']} items/publish")


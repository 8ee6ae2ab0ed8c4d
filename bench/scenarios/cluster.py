"""cluster: two gateway nodes over one Redis; every message crosses nodes, under rising load.

The scenario hosts its own processes (HOSTED):
- one `redis-server` on a free 127.0.0.1 port, no persistence (`save ""`, `appendonly no`), its own
  temporary directory (removed afterwards), stopped with SIGTERM at the end;
- two gateway nodes (`python -m gateway serve`, GATEWAY_COORDINATOR=redis, GATEWAY_REDIS_URL at it,
  GATEWAY_BOTS_ENABLED=false, the same GATEWAY_JWT_SECRET and admin token), each waited for until its
  `/readyz` proves delivery through Redis.

Pinning (when the bench pins, i.e. 2+ CPUs): both nodes share the server CPU(s), so together they have
what one node has in the relay scenario and msgs per gateway CPU-s compare with it; redis-server runs on
the load generator's CPU(s). With 2 CPUs: nodes on CPU 0, Redis and the load generator on CPU 1.

Conversations: half have the visitor on node A and the agent on node B, half the other way round (one
tenant per direction and worker), so every `msg` is appended by one node (a Lua script in Redis) and
delivered to the other participant through Redis (`SPUBLISH` to the holder's channel, batched: one
publish per destination node per flush). Steps as relay: closed-loop probe for the peak, then open-loop
steps at fractions of it. Per step: delivered msgs/s, one-way latency across nodes, gateway CPU per
message (both nodes together, and each), redis-server CPU per message (/proc/PID/stat), Redis commands
per message (INFO commandstats), and from both nodes' /admin/stats (hub.coordinator): publishes,
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
STATS = ("published", "delivered_items", "pipelines", "received_items", "no_holder", "commit_batches", "commit_appends")


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
        st = ((n.admin_stats() or {}).get("hub") or {}).get("coordinator") or {}
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
    ctx.need(p["probe_s"] + p["step_s"] * len(p["fractions"]) + 30, "cluster scenario")
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
        for i in range(2):
            nodes.append(servers.start("gateway", {"heartbeat_s": ctx.profile["heartbeat_s"]}, ctx.server_cpus,
                                       dict(env, GATEWAY_NODE_ID=f"bench-node-{'ab'[i]}-{ctx.tag}")))
        for n in nodes:
            if not _ready(n, 20):
                raise RuntimeError(f"node on port {n.port} not ready (/readyz) within 20 s: {''.join(n.output[-5:])}")
        ctx.server, ctx.more_servers, ctx.others = nodes[0], nodes[1:], {"redis": redis.pid}
        return _measure(ctx, nodes, port)
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
    a, b = nodes
    pin = (f"nodes on CPU {sorted(ctx.server_cpus)}, redis-server and load generator on CPU {sorted(ctx.loadgen.cpus)}"
           if ctx.server_cpus else "no CPU pinning")
    ctx.log(f"    cluster: redis on port {redis_port}, nodes A ws {a.port} and B ws {b.port}; {pin}; "
            f"{p['pairs']} conversations, half A->B, half B->A")
    half = p["pairs"] // 2
    ab = open_conversations(ctx, p["pairs"] - half, prefix="ab", tenant="ab", agents_kw={"url": b.url},
                            visitors_kw={"url": a.url})
    ba = open_conversations(ctx, half, prefix="ba", tenant="ba", agents_kw={"url": a.url}, visitors_kw={"url": b.url})
    for s in (ab, ba):
        s.pop("tenant"), s.pop("agent_user")
    setup: dict[str, Any] = {"visitors_on_a_agents_on_b": ab, "visitors_on_b_agents_on_a": ba, **pair_flows(ctx)}
    out: dict[str, Any] = {"setup": setup, "window": p["window"], "steps": [], "pinning": pin,
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
    out["close"] = {"ab": ctx.close_all("ab_visitors"), "ba": ctx.close_all("ba_visitors", reset_flows=True)}
    ctx.close_all("ab_agents")
    ctx.close_all("ba_agents", reset_flows=True)
    return out


def _line(s: dict[str, Any]) -> str:
    lat = s["latency"]
    return (f"{s['msgs_per_s']} msg/s, p50 {lat['p50_ms']} p99 {lat['p99_ms']} p99.9 {lat['p99_9_ms']} ms; gateway "
            f"{s['gateway_cpu_us_per_msg']} us/msg ({s['server_cpu_pct']}% CPU), redis {s['redis_cpu_us_per_msg']} us/msg "
            f"({s['redis_cpu_pct']}% CPU, {s['redis_calls_per_msg']} calls/msg), {s['items_per_publish']} items/publish")


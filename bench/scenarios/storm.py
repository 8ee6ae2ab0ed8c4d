"""storm: many connections on one machine with `serve --workers N` over Redis, opening at once and leaving at once.

The scenario hosts its own processes (HOSTED): one `redis-server` (no persistence) and
`python -m gateway serve --workers N --coordinator redis` on fixed ports (the kernel spreads
connections over the workers, SO_REUSEPORT), each worker under the open-file limit. Then:

1. storm in: `connections` visitors open at once (the load generator's processes, many 127.x
   source addresses past 64k), each until its `welcome`: time, rate, and connections per
   second per worker CPU-second;
2. hold: RSS per connection summed over the workers, CPU at rest (heartbeats on), and relay
   latency for `chat_fraction` of them chatting meanwhile (visitor/agent pairs at a steady rate);
3. storm out: all leave at once (close frames), time;
4. throughout, `/readyz` polled (any 503 counted), and afterwards: nodes reaped, pool
   exhaustion and presence left behind (the workers' logs, Redis), which must all be 0.

The same run opens the same number (capped at one process's limit) on one embedded node for the
open rate per CPU to compare with.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from bench import servers
from bench.measure import rss_bytes

from .base import Context, Skipped, noise_fields
from .relay import open_conversations, pair_flows, run_step

HOSTED = True
BAD_LOG = ("is gone", "Too many connections", "MaxConnectionsError", "heartbeat gap")


class _ReadyWatch:
    """Polls /readyz every 0.2 s on a thread; counts 503s and polls that got no answer in 5 s."""

    def __init__(self, http_port: int):
        self.url = f"http://{servers.HOST}:{http_port}/readyz"
        self.polls = self.not_ready = self.no_answer = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.polls += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.not_ready += r.status != 200
            except urllib.error.HTTPError as e:
                self.not_ready += 1
                self.last_not_ready = e.read()[:200].decode(errors="replace")
            except OSError:
                self.no_answer += 1

    def __enter__(self) -> _ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def _presence_left(redis_port: int, tenant: str) -> int | None:
    try:
        import redis

        r = redis.Redis(host=servers.HOST, port=redis_port, socket_timeout=10)
        try:
            return sum(1 for _ in r.scan_iter(match=f"cg:{{p:{tenant}*", count=10_000))
        finally:
            r.close()
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    if shutil.which("redis-server") is None:
        raise Skipped("redis-server not installed")
    ctx.need(p["hold_s"] + p["chat_s"] + 20, "storm scenario")
    tmp = tempfile.mkdtemp(prefix="chatgw-bench-redis-")
    redis = workers = single = None
    try:
        port = servers.free_port()
        redis = servers.start_aux("redis", ["redis-server", "--port", str(port), "--bind", servers.HOST, "--save", "",
                                            "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes",
                                            "--daemonize", "no", "--logfile", "", "--maxclients", "100000"],
                                  ctx.loadgen.cpus, r"Ready to accept connections", port=port)
        ws_port, http_port = servers.free_port(), servers.free_port()
        env = {"GATEWAY_COORDINATOR": "redis", "GATEWAY_REDIS_URL": f"redis://{servers.HOST}:{port}/0",
               "GATEWAY_WS_PORT": str(ws_port), "GATEWAY_HTTP_PORT": str(http_port),
               "GATEWAY_NODE_ID": f"storm-{ctx.tag}"}
        workers = servers.start("gateway_workers", {"heartbeat_s": ctx.profile["heartbeat_s"], "workers": p["workers"]},
                                ctx.server_cpus, env)
        ctx.server, ctx.others = workers, {"redis": redis.pid}
        out = _storm(ctx, workers, port, http_port)
        workers.stop()
        workers = None
        # The same opening on one embedded node, for the open rate per CPU-second.
        single = servers.start("gateway", {"heartbeat_s": ctx.profile["heartbeat_s"]}, ctx.server_cpus)
        ctx.server, ctx.others = single, {}
        n = min(p["connections"], ctx.max_conns)
        opened = ctx.open_spread("single", n, p["open_deadline_s"], role="visitor", user="single")
        out["embedded_open"] = _open_figures(opened, n)
        ctx.close_all("single")
        return out
    finally:
        for s in (workers, single):
            if s is not None:
                s.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _open_figures(opened: dict[str, Any], n: int) -> dict[str, Any]:
    per_cpu_ms = opened.get("server_cpu_ms_per_conn")
    return {"requested": n, "opened": opened["opened"], "failed": opened["failed"], "errors": opened["errors"],
            "elapsed_s": opened["elapsed_s"], "rate_per_s": opened["rate_per_s"], "server_cpu_ms_per_conn": per_cpu_ms,
            "conns_per_cpu_s": round(1000 / per_cpu_ms, 1) if per_cpu_ms else None}


def _storm(ctx: Context, workers: servers.Running, redis_port: int, http_port: int) -> dict[str, Any]:
    p = ctx.params
    n = p["connections"]
    out: dict[str, Any] = {"workers": p["workers"], "connections": n, "heartbeat_s": ctx.profile["heartbeat_s"]}
    base_rss = rss_bytes(workers.pid)
    with _ReadyWatch(http_port) as ready:
        ctx.log(f"    storm: {n} visitors open at once on {p['workers']} workers")
        one_process = ctx.max_conns
        ctx.max_conns = one_process * p["workers"]  # each worker has its own open-file limit
        try:
            opened = ctx.open_spread("storm", n, p["open_deadline_s"], role="visitor", user="storm")
        finally:
            ctx.max_conns = one_process
        out["open"] = _open_figures(opened, n)
        ctx.check_server()
        pairs = max(1, int(n * p["chat_fraction"] / 2))
        setup = open_conversations(ctx, pairs, prefix="chat", tenant="chat")
        setup.update(pair_flows(ctx))
        time.sleep(p["settle_s"])  # let the opening's work finish before the rest is measured
        w = ctx.window()
        time.sleep(p["hold_s"])
        hold = w.stop()
        rss = rss_bytes(workers.pid)
        out["hold"] = {"rss_mb": round(rss / 2**20, 1), "rss_per_conn_kb": round((rss - base_rss) / max(1, opened["opened"]) / 1024, 3),
                       "cpu_at_rest_pct": round(hold.server_cpu_pct, 2), **noise_fields(hold)}
        chat = run_step(ctx, "rate", p["chat_s"], p["chat_rate"])
        out["chat"] = {"pairs": pairs, "msgs_per_s": chat.get("msgs_per_s"), "latency": chat.get("latency")}
        ctx.close_all("chat_visitors")
        ctx.close_all("chat_agents", reset_flows=True)
        ctx.log(f"    storm: all {opened['opened']} leave at once")
        t0 = time.monotonic()
        closed = ctx.close_all("storm")
        out["leave"] = {**closed, "wall_s": round(time.monotonic() - t0, 2)}
        time.sleep(p["settle_s"])  # presence writes of the leaving finish
    out["readyz"] = {"polls": ready.polls, "not_ready_503": ready.not_ready, "no_answer_in_5s": ready.no_answer,
                     "last_503": getattr(ready, "last_not_ready", None)}
    logs = "".join(workers.output)
    out["bad_log_lines"] = {k: logs.count(k) for k in BAD_LOG}
    out["presence_left"] = _presence_left(redis_port, f"{ctx.tag}-bench")  # the storm visitors' tenant
    return out


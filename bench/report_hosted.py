"""The summary's tables of the scenarios that host their own processes: bots, cluster, storm."""

from __future__ import annotations

from typing import Any

from bench.report_common import _fmt, _lat, _noise, _ratio, _status


def _hosted(results: dict[str, Any], scen: str) -> tuple[dict[str, Any] | None, str | None]:
    r = results.get("scenarios", {}).get(scen, {}).get("gateway")
    if not isinstance(r, dict):
        return None, None
    return r, _status(r)


def bot_table(results: dict[str, Any]) -> list[str]:
    r, st = _hosted(results, "bot")
    if r is None:
        return []
    if st is not None:
        return [f"- bot: {st}"]
    b = r.get("backend", {})
    loaded = r.get("with_bots") or []
    rows = [f"Backend: {b.get('kind')}; {b.get('tokens_per_answer')} tokens per answer, {b.get('token_delay_ms')} ms apart; "
            f"`coalesce_ms` {b.get('coalesce_ms')}. Humans: {_fmt(r['setup'].get('pairs'))} conversations in a group "
            f"without a bot at {_fmt(r.get('human_rate'))} msg/s (open loop) throughout.", "",
            "| bot load | human msg/s | human p50 / p99 / p99.9 ms | human p99 vs without | server CPU %: node + bot worker | "
            "loadgen CPU % | noise % (server CPU) |", "|---|---|---|---|---|---|---|"]
    steps = [("none", r.get("without"))] + [(f"{_fmt(s['bots']['conversations'])} bot conversations", s) for s in loaded] + [
        ("none, again", r.get("without_after"))]
    for label, s in steps:
        if s:
            rows.append(f"| {label} | {_fmt(s['msgs_per_s'])} | {_lat(s['latency'])} | "
                        f"{_fmt(s.get('human_p99_ratio'), 2) + 'x' if s.get('human_p99_ratio') else '-'} | "
                        f"{_fmt(s['server_cpu_pct'])}: {_split(s)} | {_fmt(s['loadgen_cpu_pct'])} | {_noise(s)} |")
    rows += ["", "| bot conversations | answers/s | answer p50 / p99 ms | first chunk p50 / p99 ms | bot_chunk frames per answer "
             "| server CPU ms per answer (node + worker) | fallbacks, handoffs | stand-in LLM CPU % |", "|---|---|---|---|---|---|---|---|"]
    for s in loaded:
        bots = s["bots"]
        fb = ", ".join(f"{k} {v}" for k, v in {**bots.get("fallbacks", {}), **bots.get("handoffs", {})}.items()) or "none"
        rows.append(f"| {_fmt(bots.get('conversations'))} | {_fmt(bots.get('answers_per_s'))} | "
                    f"{_lat(bots.get('answer_latency'), ('p50_ms', 'p99_ms'))} | {_lat(bots.get('first_chunk_latency'), ('p50_ms', 'p99_ms'))} | "
                    f"{_fmt(bots.get('chunks_per_answer'), 2)} (of {b.get('tokens_per_answer')} tokens) | "
                    f"{_fmt(s.get('server_cpu_ms_per_bot_answer'), 2)} ({_fmt(s.get('node_cpu_ms_per_bot_answer'), 2)} + "
                    f"{_fmt(_minus(s.get('server_cpu_ms_per_bot_answer'), s.get('node_cpu_ms_per_bot_answer')), 2)}) | "
                    f"{fb} | {_fmt(s.get('fake_llm_cpu_pct'))} |")
    return rows


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _split(step: dict[str, Any]) -> str:
    """Server CPU % as node + bot worker (the node's child process)."""
    node = step.get("node_cpu_pct")
    if node is None:
        return "-"
    return f"{_fmt(node)} + {_fmt(max(0.0, step['server_cpu_pct'] - node))}"


def cluster_table(results: dict[str, Any]) -> list[str]:
    r, st = _hosted(results, "cluster")
    if r is None:
        return []
    if st is not None:
        return [f"- cluster: {st}"]
    relay = results.get("scenarios", {}).get("relay", {}).get("gateway", {})
    one = (relay.get("peak") or {}).get("msgs_per_cpu_s") if isinstance(relay, dict) else None
    rows = [f"2 nodes + 1 redis-server, every message crosses nodes; {r.get('pinning')}; "
            f"{_fmt(r['setup'].get('pairs'))} conversations.", "",
            "| load | msg/s | p50 / p99 / p99.9 ms | gateway CPU % (A + B) | gateway us/msg | msgs per gateway CPU-s | "
            "Redis CPU % | Redis us/msg | Redis commands/msg | node commands/msg | items per publish | noise % (server CPU) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(r.get("steps", []), key=lambda s: s.get("fraction_of_peak") or 0):
        frac = s.get("fraction_of_peak")
        label = "peak (closed loop)" if frac == 1.0 else f"{frac:.0%} of peak"
        each = " + ".join(_fmt(c / s["wall_s"] * 100) for c in s.get("server_cpu_each_s", [])) if s.get("wall_s") else ""
        rows.append(f"| {label} | {_fmt(s['msgs_per_s'])} | {_lat(s['latency'])} | {_fmt(s['server_cpu_pct'])}"
                    f"{f' ({each})' if each else ''} | {_fmt(s.get('gateway_cpu_us_per_msg'))} | {_fmt(s.get('msgs_per_cpu_s'))} | "
                    f"{_fmt(s.get('redis_cpu_pct'))} | {_fmt(s.get('redis_cpu_us_per_msg'))} | {_fmt(s.get('redis_calls_per_msg'), 2)} | "
                    f"{_fmt(s.get('node_commands_per_msg'), 2)} | {_fmt(s.get('items_per_publish'), 2)} | {_noise(s)} |")
    pk = r.get("peak") or {}
    if one and pk.get("msgs_per_cpu_s"):
        rows += ["", f"Msgs per gateway CPU-s at peak: cluster {_fmt(pk['msgs_per_cpu_s'])} vs one node with the embedded "
                 f"coordinator {_fmt(one)} (relay, same run): {_fmt(_ratio(pk['msgs_per_cpu_s'], one), 3)}x."]
    by = r.get("by_nodes") or {}
    if by:
        two = (by.get("2") or {}).get("msgs_per_gateway_cpu_s")
        rows += ["", "By node count (one after the other in this run; with several nodes every message crosses nodes):", "",
                 "| nodes | peak msg/s | msgs per gateway CPU-s at peak | vs embedded | vs 2 nodes | p99 ms at half of peak | "
                 "Redis commands/msg at peak / at 25% | node commands/msg at peak / at 25% | Redis us/msg at peak | "
                 "appends per commit at peak |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for n, b in sorted(by.items(), key=lambda kv: int(kv[0])):
            per = b.get("msgs_per_gateway_cpu_s")
            rows.append(f"| {n} | {_fmt(b.get('peak_msgs_per_s'))} | {_fmt(per)} | {_fmt(_ratio(per, one), 3)}x | "
                        f"{_fmt(_ratio(per, two), 2)}x | {_fmt(b.get('p99_ms_at_half_peak'))} | "
                        f"{_fmt(b.get('redis_calls_per_msg_at_peak'), 2)} / {_fmt(b.get('redis_calls_per_msg_at_quarter'), 2)} | "
                        f"{_fmt(b.get('node_commands_per_msg_at_peak'), 2)} / {_fmt(b.get('node_commands_per_msg_at_quarter'), 2)} | "
                        f"{_fmt(b.get('redis_cpu_us_per_msg_at_peak'))} | {_fmt(b.get('appends_per_commit_at_peak'), 1)} |")
    return rows


def storm_table(results: dict[str, Any]) -> list[str]:
    r, st = _hosted(results, "storm")
    if r is None:
        return []
    if st is not None:
        return [f"- storm: {st}"]
    op, emb, hold, chat = r.get("open") or {}, r.get("embedded_open") or {}, r.get("hold") or {}, r.get("chat") or {}
    lat, leave, ready = chat.get("latency") or {}, r.get("leave") or {}, r.get("readyz") or {}
    bad = r.get("bad_log_lines") or {}
    return [
        f"`serve --workers {r.get('workers')}` over Redis, {_fmt(r.get('connections'))} visitors, heartbeats every "
        f"{r.get('heartbeat_s')} s.", "",
        "| figure | workers over Redis | one embedded node, same run |", "|---|---|---|",
        f"| opened at once | {_fmt(op.get('opened'))} of {_fmt(op.get('requested'))} in {op.get('elapsed_s')} s "
        f"({_fmt(op.get('rate_per_s'))}/s), {_fmt(op.get('failed'))} failed | {_fmt(emb.get('opened'))} in "
        f"{emb.get('elapsed_s')} s ({_fmt(emb.get('rate_per_s'))}/s) |",
        f"| connections per worker CPU-s while opening | {_fmt(op.get('conns_per_cpu_s'))} | {_fmt(emb.get('conns_per_cpu_s'))} |",
        f"| RSS per connection (summed over the workers) | {hold.get('rss_per_conn_kb')} KB | |",
        f"| CPU at rest | {hold.get('cpu_at_rest_pct')}% of one CPU | |",
        f"| {_fmt(chat.get('pairs'))} pairs chatting meanwhile ({_fmt(chat.get('msgs_per_s'))} msg/s) | {_lat(lat)} ms | |",
        f"| all leave at once | {_fmt(leave.get('clean'))} clean closes in {leave.get('wall_s')} s | |",
        f"| /readyz ({_fmt(ready.get('polls'))} polls) | {_fmt(ready.get('not_ready_503'))} x 503, "
        f"{_fmt(ready.get('no_answer_in_5s'))} unanswered in 5 s | |",
        f"| nodes reaped / pool exhausted / heartbeat gaps (logs) | {bad.get('is gone')} / "
        f"{(bad.get('Too many connections') or 0) + (bad.get('MaxConnectionsError') or 0)} / {bad.get('heartbeat gap')} | |",
        f"| presence left in Redis | {r.get('presence_left')} | |",
    ]

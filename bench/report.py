"""Results -> results.json, summary.md and PNG plots.

Every comparison is a ratio "gateway / peer" from the same run on the same
machine; the machine's noise during each window is printed with the figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = {
    "idle_kb_per_conn": 4.0,
    "relay_vs_picows": 0.75,
    "relay_vs_node": 1.5,
    "connections": 100_000,
    "p99_half_peak_ms": 5.0,
}


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _noise(d: dict[str, Any]) -> str:
    """Other processes' CPU: share of the whole machine (share of the server's own CPU)."""
    whole, srv = d.get("noise_pct"), d.get("noise_server_cpu_pct")
    return f"{_fmt(whole)} ({_fmt(srv)})" if srv is not None else _fmt(whole)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return round(a / b, 3)
    return None


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("PASS" if flag else "FAIL")


def _servers(results: dict[str, Any], scen: str) -> list[tuple[str, dict[str, Any]]]:
    data = results.get("scenarios", {}).get(scen, {})
    return [(n, r) for n, r in data.items() if isinstance(r, dict)]


def _label(results: dict[str, Any], name: str) -> str:
    if name == "gateway_cluster":
        return "gateway cluster (2 nodes + Redis)"
    return results.get("servers", {}).get(name, {}).get("label", name)


def _status(r: dict[str, Any]) -> str | None:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "error" in r:
        return f"error: {r['error']}"
    return None


# --- extraction -------------------------------------------------------------------------------

def idle_at(r: dict[str, Any], n: int | None = None) -> dict[str, Any] | None:
    """The idle step at `n` connections (default: the largest)."""
    steps = [s for s in r.get("steps", []) if s.get("connections")]
    if not steps:
        return None
    if n is None:
        return steps[-1]
    return min(steps, key=lambda s: abs(s["connections"] - n))


def relay_at(r: dict[str, Any], frac: float) -> dict[str, Any] | None:
    steps = [s for s in r.get("steps", []) if s.get("fraction_of_peak") is not None]
    if not steps:
        return None
    return min(steps, key=lambda s: abs(s["fraction_of_peak"] - frac))


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the project's targets are stated in, with ratios against the peers of the same run."""
    sc = results.get("scenarios", {})
    out: dict[str, Any] = {}
    idle = sc.get("idle", {})
    gw_idle = idle.get("gateway", {})
    big = idle_at(gw_idle) if isinstance(gw_idle, dict) else None
    if big:
        n = big["connections"]
        out["idle"] = {"connections": n, "gateway_kb": big.get("rss_per_conn_kb"), "peers": {}}
        for name, r in idle.items():
            if name != "gateway" and isinstance(r, dict) and (s := idle_at(r, n)):
                out["idle"]["peers"][name] = {"kb": s.get("rss_per_conn_kb"), "at": s["connections"],
                                              "ratio": _ratio(big.get("rss_per_conn_kb"), s.get("rss_per_conn_kb"))}
    relay = sc.get("relay", {})
    gw = relay.get("gateway", {})
    if isinstance(gw, dict) and gw.get("peak"):
        eff = gw["peak"].get("msgs_per_cpu_s")
        out["relay"] = {"gateway_msgs_per_cpu_s": eff, "gateway_peak_msgs_per_s": gw["peak"].get("msgs_per_s"), "peers": {}}
        half = relay_at(gw, 0.5)
        out["relay"]["gateway_p99_half_peak_ms"] = half["latency"]["p99_ms"] if half and half.get("fraction_of_peak") == 0.5 else None
        for name, r in relay.items():
            if name != "gateway" and isinstance(r, dict) and r.get("peak"):
                peer = r["peak"].get("msgs_per_cpu_s")
                out["relay"]["peers"][name] = {"msgs_per_cpu_s": peer, "ratio": _ratio(eff, peer),
                                               "peak_msgs_per_s": r["peak"].get("msgs_per_s")}
    bot = sc.get("bot", {}).get("gateway")
    if isinstance(bot, dict) and bot.get("with_bots"):
        top = bot["with_bots"][-1]  # the largest bot load
        out["bot"] = {"bot_conversations": top["bots"].get("conversations"), "human_p99_ratio": top.get("human_p99_ratio"),
                      "human_p99_without_ms": bot.get("human_p99_without_ms"), "human_p99_with_ms": top["latency"].get("p99_ms"),
                      "bot_answers_per_s": top["bots"].get("answers_per_s"),
                      "bot_answer_p99_ms": top["bots"]["answer_latency"].get("p99_ms"),
                      "chunks_per_answer": top["bots"].get("chunks_per_answer"),
                      "server_cpu_ms_per_bot_answer": top.get("server_cpu_ms_per_bot_answer")}
    cl = sc.get("cluster", {}).get("gateway")
    if isinstance(cl, dict) and cl.get("peak"):
        pk = cl["peak"]
        half = relay_at(cl, 0.5)
        out["cluster"] = {"peak_msgs_per_s": pk.get("msgs_per_s"), "msgs_per_gateway_cpu_s": pk.get("msgs_per_cpu_s"),
                          "redis_cpu_us_per_msg": pk.get("redis_cpu_us_per_msg"), "items_per_publish": pk.get("items_per_publish"),
                          "p99_half_peak_ms": half["latency"]["p99_ms"] if half and half.get("fraction_of_peak") == 0.5 else None}
    return out


# --- markdown -----------------------------------------------------------------------------------

def targets_table(results: dict[str, Any]) -> list[str]:
    h = headline(results)
    meta = results.get("meta", {})
    rows = ["| target | gateway | reference (same run) | ratio ours/theirs | verdict |", "|---|---|---|---|---|"]
    idle = h.get("idle")
    if idle:
        refs = ", ".join(f"{n} {_fmt(p['kb'], 2)} KB" for n, p in idle["peers"].items())
        kb = idle["gateway_kb"]
        node = idle["peers"].get("node", {}).get("ratio")
        rows.append(f"| idle memory <= {TARGETS['idle_kb_per_conn']:g} KB/connection | {_fmt(kb, 2)} KB at {idle['connections']:,} | "
                    f"{refs or '-'} | vs node {_fmt(node, 2)} | {_ok(kb <= TARGETS['idle_kb_per_conn'] if kb is not None else None)} |")
        reached = idle["connections"]
        cap = meta.get("max_connections")
        why = "" if reached >= TARGETS["connections"] else f" (this machine: max {cap:,}, {meta.get('max_connections_reason', '')})"
        rows.append(f"| {TARGETS['connections']:,} connections on one node | {reached:,} held{why} | - | - | "
                    f"{'PASS' if reached >= TARGETS['connections'] else 'not reached here'} |")
    relay = h.get("relay")
    if relay:
        eff = relay["gateway_msgs_per_cpu_s"]
        for peer, tgt in (("picows", TARGETS["relay_vs_picows"]), ("node", TARGETS["relay_vs_node"])):
            p = relay["peers"].get(peer)
            ratio = p["ratio"] if p else None
            rows.append(f"| relay msgs per server CPU-s >= {tgt:g}x {peer} | {_fmt(eff)} | {peer} {_fmt(p['msgs_per_cpu_s']) if p else '-'} | "
                        f"{_fmt(ratio, 2)}x | {_ok(ratio >= tgt if ratio is not None else None)} |")
        p99 = relay.get("gateway_p99_half_peak_ms")
        rows.append(f"| relay p99 < {TARGETS['p99_half_peak_ms']:g} ms at half of peak | {_fmt(p99, 2)} ms "
                    f"(peak {_fmt(relay['gateway_peak_msgs_per_s'])} msg/s) | - | - | {_ok(p99 < TARGETS['p99_half_peak_ms'] if p99 is not None else None)} |")
    return rows


def idle_table(results: dict[str, Any]) -> list[str]:
    rows = ["| server | connections | RSS KB/conn | marginal KB/conn | open rate conn/s | CPU at rest % | clean closes | "
            "noise % (server CPU) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in _servers(results, "idle"):
        if (st := _status(r)) is not None:
            rows.append(f"| {_label(results, name)} | {st} |||||||")
            continue
        for s in r.get("steps", []):
            close = r.get("close", {})
            cl = f"{close.get('clean', 0):,}/{close.get('closed', 0):,}" if s is r["steps"][-1] and close else ""
            rows.append(f"| {_label(results, name)} | {s['connections']:,} | {_fmt(s['rss_per_conn_kb'], 2)} | "
                        f"{_fmt(s.get('rss_marginal_kb'), 2)} | {_fmt(s['open']['rate_per_s'])} | "
                        f"{_fmt(s['cpu_at_rest_pct'], 2)} | {cl} | {_noise(s)} |")
    return rows


def relay_table(results: dict[str, Any]) -> list[str]:
    rows = ["| server | peak msg/s | msgs per server CPU-s | gateway / this | p50 / p99 / p99.9 ms at 50% of peak | "
            "p99 ms at peak | server / loadgen CPU % at peak | noise % (server CPU) at peak |", "|---|---|---|---|---|---|---|---|"]
    gw = results.get("scenarios", {}).get("relay", {}).get("gateway", {})
    gw_eff = (gw.get("peak") or {}).get("msgs_per_cpu_s") if isinstance(gw, dict) else None
    for name, r in _servers(results, "relay"):
        if (st := _status(r)) is not None or not r.get("peak"):
            rows.append(f"| {_label(results, name)} | {st or r.get('error', 'no result')} |||||||")
            continue
        pk = r["peak"]
        half = relay_at(r, 0.5) or {}
        lat = half.get("latency", {})
        rows.append(f"| {_label(results, name)} | {_fmt(pk['msgs_per_s'])} | {_fmt(pk['msgs_per_cpu_s'])} | "
                    f"{_fmt(_ratio(gw_eff, pk['msgs_per_cpu_s']), 2)} | {_fmt(lat.get('p50_ms'), 2)} / {_fmt(lat.get('p99_ms'), 2)} / "
                    f"{_fmt(lat.get('p99_9_ms'), 2)} | {_fmt(pk['latency']['p99_ms'], 2)} | "
                    f"{_fmt(pk['server_cpu_pct'])} / {_fmt(pk['loadgen_cpu_pct'])} | {_noise(pk)} |")
    return rows


def fanout_table(results: dict[str, Any]) -> list[str]:
    rows = ["| server | kind | recipients x rounds | delivered | deliveries per server CPU-s | gateway / this | "
            "completion p50 / max ms | noise % (server CPU) |", "|---|---|---|---|---|---|---|---|"]
    gw = results.get("scenarios", {}).get("fanout", {}).get("gateway", {})
    gw_eff = ((gw.get("broadcast") or {}).get("deliveries_per_cpu_s")) if isinstance(gw, dict) else None
    for name, r in _servers(results, "fanout"):
        if (st := _status(r)) is not None:
            rows.append(f"| {_label(results, name)} | {st} |||||||")
            continue
        for kind in ("broadcast", "queue"):
            b = r.get(kind)
            if not b:
                continue
            n = b.get("recipients", b.get("waiting"))
            comp = b.get("completion_ms") or {}
            ratio = _ratio(gw_eff, b.get("deliveries_per_cpu_s")) if kind == "broadcast" else None
            label = "multi-connection participant" if (name == "gateway" and kind == "broadcast") else (
                "queue positions" if kind == "queue" else "broadcast")
            rows.append(f"| {_label(results, name)} | {label} | {_fmt(n)} x {b.get('rounds')} | {_fmt(b.get('delivered'))}/"
                        f"{_fmt(b.get('expected'))} | {_fmt(b.get('deliveries_per_cpu_s'))} | {_fmt(ratio, 2)} | "
                        f"{_fmt(comp.get('p50'), 2)} / {_fmt(comp.get('max'), 2)} | {_noise(b)} |")
    return rows


def churn_table(results: dict[str, Any]) -> list[str]:
    rows = ["| server | cycles/s | cycles per server CPU-s | gateway / this | clean | cycle p50 / p99 ms | noise % (server CPU) |",
            "|---|---|---|---|---|---|---|"]
    gw = results.get("scenarios", {}).get("churn", {}).get("gateway", {})
    gw_eff = gw.get("cycles_per_cpu_s") if isinstance(gw, dict) else None
    for name, r in _servers(results, "churn"):
        if (st := _status(r)) is not None:
            rows.append(f"| {_label(results, name)} | {st} ||||||")
            continue
        lat = r.get("cycle_latency", {})
        rows.append(f"| {_label(results, name)} | {_fmt(r['cycles_per_s'])} | {_fmt(r['cycles_per_cpu_s'])} | "
                    f"{_fmt(_ratio(gw_eff, r['cycles_per_cpu_s']), 2)} | {r['clean']:,}/{r['cycles']:,} | "
                    f"{_fmt(lat.get('p50_ms'), 2)} / {_fmt(lat.get('p99_ms'), 2)} | {_noise(r)} |")
    return rows


def _lat(lat: dict[str, Any] | None, keys: tuple[str, ...] = ("p50_ms", "p99_ms", "p99_9_ms")) -> str:
    lat = lat or {}
    return " / ".join(_fmt(lat.get(k), 2) for k in keys)


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
            "Redis CPU % | Redis us/msg | Redis commands/msg | items per publish | noise % (server CPU) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(r.get("steps", []), key=lambda s: s.get("fraction_of_peak") or 0):
        frac = s.get("fraction_of_peak")
        label = "peak (closed loop)" if frac == 1.0 else f"{frac:.0%} of peak"
        each = " + ".join(_fmt(c / s["wall_s"] * 100) for c in s.get("server_cpu_each_s", [])) if s.get("wall_s") else ""
        rows.append(f"| {label} | {_fmt(s['msgs_per_s'])} | {_lat(s['latency'])} | {_fmt(s['server_cpu_pct'])}"
                    f"{f' ({each})' if each else ''} | {_fmt(s.get('gateway_cpu_us_per_msg'))} | {_fmt(s.get('msgs_per_cpu_s'))} | "
                    f"{_fmt(s.get('redis_cpu_pct'))} | {_fmt(s.get('redis_cpu_us_per_msg'))} | {_fmt(s.get('redis_calls_per_msg'), 2)} | "
                    f"{_fmt(s.get('items_per_publish'), 2)} | {_noise(s)} |")
    pk = r.get("peak") or {}
    if one and pk.get("msgs_per_cpu_s"):
        rows += ["", f"Msgs per gateway CPU-s at peak: cluster {_fmt(pk['msgs_per_cpu_s'])} vs one node with the embedded "
                 f"coordinator {_fmt(one)} (relay, same run): {_fmt(_ratio(pk['msgs_per_cpu_s'], one), 3)}x."]
    by = r.get("by_nodes") or {}
    if by:
        two = (by.get("2") or {}).get("msgs_per_gateway_cpu_s")
        rows += ["", "By node count (one after the other in this run; with several nodes every message crosses nodes):", "",
                 "| nodes | peak msg/s | msgs per gateway CPU-s at peak | vs embedded | vs 2 nodes | p99 ms at half of peak | "
                 "Redis commands/msg at peak / at 25% | Redis us/msg at peak | appends per commit at peak |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for n, b in sorted(by.items(), key=lambda kv: int(kv[0])):
            per = b.get("msgs_per_gateway_cpu_s")
            rows.append(f"| {n} | {_fmt(b.get('peak_msgs_per_s'))} | {_fmt(per)} | {_fmt(_ratio(per, one), 3)}x | "
                        f"{_fmt(_ratio(per, two), 2)}x | {_fmt(b.get('p99_ms_at_half_peak'))} | "
                        f"{_fmt(b.get('redis_calls_per_msg_at_peak'), 2)} / {_fmt(b.get('redis_calls_per_msg_at_quarter'), 2)} | "
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


def machine_lines(results: dict[str, Any]) -> list[str]:
    meta = results.get("meta", {})
    m = meta.get("machine", {})
    v = m.get("versions", {})
    pin = meta.get("pinning", {})
    pins = (f"server pinned to CPU {pin['server_cpus']}, load generator to CPU {pin['loadgen_cpus']}"
            if pin.get("server_cpus") else "no CPU pinning")
    return [
        f"- machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('mem_total_gib')} GiB RAM, Linux {m.get('kernel')}, "
        f"open files {m.get('nofile_limit')}",
        f"- software: Python {m.get('python')}, picows {v.get('picows')}, uvloop {v.get('uvloop')}, websockets {v.get('websockets')}, "
        f"aiohttp {v.get('aiohttp')}, Node {v.get('node') or '-'} with ws {v.get('ws') or '-'}; gateway at {m.get('git', '?')}",
        f"- {pins}; load generator: {meta.get('loadgen', {}).get('workers')} process(es) of picows clients on uvloop",
        f"- profile `{meta.get('profile')}`, started {meta.get('started')}, took {meta.get('duration_s')} s: `{meta.get('command')}`",
    ]


def summary_markdown(results: dict[str, Any]) -> str:
    lines = ["## Summary", "", *machine_lines(results), "", "### Targets", "", *targets_table(results)]
    sc = results.get("scenarios", {})
    for scen, title, fn in (("idle", "Idle connections", idle_table), ("relay", "Relay", relay_table),
                            ("fanout", "Fan-out", fanout_table), ("churn", "Churn", churn_table),
                            ("bot", "Bots (gateway only)", bot_table), ("cluster", "Cluster (gateway only)", cluster_table),
                            ("storm", "Storm (gateway only)", storm_table)):
        if scen in sc and (rows := fn(results)):
            lines += ["", f"### {title}", "", *rows]
    stubs = [f"- {s}: {r['status']}" for s, r in sc.items() if isinstance(r, dict) and "status" in r]
    if stubs:
        lines += ["", "### Not measured yet", "", *stubs]
    notes = []
    idle_g = sc.get("idle", {}).get("gateway", {})
    if isinstance(idle_g, dict) and idle_g.get("note"):
        notes.append(f"- idle: {idle_g['note']}")
    for name, srv in results.get("servers", {}).items():
        if srv.get("unavailable"):
            notes.append(f"- {name}: unavailable ({srv['unavailable']})")
    relay_g = sc.get("relay", {}).get("gateway", {})
    if isinstance(relay_g, dict) and (relay_g.get("setup") or {}).get("unpaired"):
        notes.append(f"- relay: {relay_g['setup']['unpaired']} gateway conversations never reached an agent (see results.json)")
    for scen in ("bot", "cluster"):
        g = sc.get(scen, {}).get("gateway", {})
        if isinstance(g, dict) and (g.get("setup") or {}).get("unpaired"):
            notes.append(f"- {scen}: {g['setup']['unpaired']} conversations never reached an agent (see results.json)")
    if notes:
        lines += ["", "### Notes", "", *notes]
    lines += ["", "Ratios are gateway / peer from the same run. Noise % = CPU used by other processes during the "
              "measurement window, as a share of the whole machine (in parentheses: of the server's pinned CPU). "
              "See bench/README.md for what each figure counts."]
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------------------

def make_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    relay = _servers(results, "relay")
    cl = results.get("scenarios", {}).get("cluster", {}).get("gateway")
    if isinstance(cl, dict) and cl.get("steps"):
        relay = relay + [("gateway_cluster", cl)]
    if any(r.get("steps") for _, r in relay):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
        for ax, key, title in zip(axes, ("p50_ms", "p99_ms", "p99_9_ms"), ("p50", "p99", "p99.9"), strict=True):
            for name, r in relay:
                steps = sorted((s for s in r.get("steps", []) if s.get("msgs_per_s")), key=lambda s: s["msgs_per_s"])
                xs = [s["msgs_per_s"] for s in steps if s["latency"].get(key)]
                ys = [s["latency"][key] for s in steps if s["latency"].get(key)]
                if xs:
                    ax.plot(xs, ys, marker="o", label=_label(results, name))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"relay latency {title}")
            ax.set_xlabel("delivered messages / s")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("ms (gateway: one way; peers: echo round trip)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "relay_latency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    idle = _servers(results, "idle")
    if any(r.get("steps") for _, r in idle):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, r in idle:
            steps = r.get("steps", [])
            if not steps:
                continue
            xs = [0] + [s["connections"] for s in steps]
            a1.plot(xs, [r["base_rss_mb"]] + [s["rss_mb"] for s in steps], marker="o", label=_label(results, name))
            a2.plot(xs[1:], [s["rss_per_conn_kb"] for s in steps], marker="o", label=_label(results, name))
        a1.set_title("server RSS against idle connections")
        a1.set_xlabel("connections")
        a1.set_ylabel("RSS MiB")
        a2.set_title("RSS per connection ((RSS - RSS before) / N)")
        a2.set_xlabel("connections")
        a2.set_ylabel("KB per connection")
        a2.axhline(TARGETS["idle_kb_per_conn"], color="grey", linestyle="--", linewidth=1, label="target 4 KB")
        for ax in (a1, a2):
            ax.grid(True, alpha=0.3)
        handles, labels = a2.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        paths.append(out / "idle_memory.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    by = cl.get("by_nodes") if isinstance(cl, dict) else None
    if by:
        counts = sorted(by, key=int)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot([int(n) for n in counts], [by[n].get("msgs_per_gateway_cpu_s") or 0 for n in counts], marker="o")
        a1.set_title("cluster: messages per gateway CPU-s at peak")
        a2.plot([int(n) for n in counts], [by[n].get("p99_ms_at_half_peak") or 0 for n in counts], marker="o")
        a2.set_title("cluster: p99 at half of peak (ms)")
        for ax in (a1, a2):
            ax.set_xlabel("nodes (one Redis)")
            ax.set_xticks([int(n) for n in counts])
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        paths.append(out / "cluster_nodes.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    bars = []
    for scen, title, get in (("relay", "relay: messages per server CPU-s", lambda r: (r.get("peak") or {}).get("msgs_per_cpu_s")),
                             ("fanout", "fan-out: deliveries per server CPU-s",
                              lambda r: (r.get("broadcast") or {}).get("deliveries_per_cpu_s")),
                             ("churn", "churn: cycles per server CPU-s", lambda r: r.get("cycles_per_cpu_s"))):
        vals = [(_label(results, n), get(r)) for n, r in _servers(results, scen)]
        vals = [(n, v) for n, v in vals if v]
        if vals:
            bars.append((title, vals))
    if bars:
        fig, axes = plt.subplots(1, len(bars), figsize=(5 * len(bars), 4.5), squeeze=False)
        from matplotlib.ticker import FuncFormatter

        for ax, (title, vals) in zip(axes[0], bars, strict=True):
            vals = vals[::-1]  # barh draws bottom-up: keep the gateway on top
            ax.barh([n for n, _ in vals], [v for _, v in vals], color=["tab:red" if n.startswith("gateway") else "tab:blue"
                                                                      for n, _ in vals])
            for i, (_, v) in enumerate(vals):
                ax.text(v, i, f" {v / 1000:.1f}k", va="center", fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
            ax.margins(x=0.2)
            ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        paths.append(out / "efficiency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write(out: Path, results: dict[str, Any], plots: bool = True) -> list[Path]:
    """results.json + summary.md (+ PNGs) in `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(results))
    paths = [out / "results.json", out / "summary.md"]
    if plots:
        try:
            paths += make_plots(out, results)
        except ImportError as e:
            print(f"plots skipped: {e}")
    return paths


LATEST_START = "<!-- latest-summary:start -->"
LATEST_END = "<!-- latest-summary:end -->"


def write_latest(results_dir: Path, out: Path, results: dict[str, Any], readme: Path) -> list[Path]:
    """bench/results/LATEST.md and the summary block of bench/README.md, from a complete run."""
    rel = out.relative_to(results_dir.parent.parent) if out.is_relative_to(results_dir.parent.parent) else out
    body = summary_markdown(results).replace("## Summary", f"## Latest results ({rel})", 1)
    plots = "".join(f"\n![{p.stem}]({p.relative_to(results_dir).as_posix()})" for p in sorted(out.glob("*.png"))
                    if p.is_relative_to(results_dir))
    latest = results_dir / "LATEST.md"
    latest.write_text(body + (f"\n{plots}\n" if plots else ""))
    paths = [latest]
    if readme.exists():
        text = readme.read_text()
        if LATEST_START in text and LATEST_END in text:
            head, rest = text.split(LATEST_START, 1)
            _, tail = rest.split(LATEST_END, 1)
            block = body.replace("## Latest results", "### Latest results", 1).replace("\n### ", "\n#### ")
            block = block.replace("#### Latest results", "### Latest results", 1)
            plots_readme = plots.replace("](", "](results/")
            readme.write_text(f"{head}{LATEST_START}\n{block}{plots_readme}\n{LATEST_END}{tail}")
            paths.append(readme)
    return paths

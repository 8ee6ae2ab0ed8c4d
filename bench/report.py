"""Results -> results.json, summary.md and PNG plots.

Every comparison is a ratio "gateway / peer" from the same run on the same
machine; the machine's noise during each window is printed with the figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.plots import make_plots
from bench.report_common import TARGETS, _fmt, _label, _noise, _ratio, _servers, _status
from bench.report_hosted import bot_table, cluster_table, storm_table


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("PASS" if flag else "FAIL")


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

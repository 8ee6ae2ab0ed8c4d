"""One command for the whole bench.

    python -m bench.run --quick                 # every scenario and server, under five minutes
    python -m bench.run --full                  # the full profile (steps to 100k idle connections)
    python -m bench.run --quick --scenario relay --servers gateway,picows
    python -m bench.run --quick --out bench/results/mine

Writes results.json, summary.md and PNG plots to --out (default bench/results/<UTC timestamp>).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import profiles, report, servers
from bench.loadgen import LoadGen
from bench.loadgen.net import cpu_plan, nofile_hard, pin, raise_nofile
from bench.measure import machine
from bench.scenarios import SCENARIOS, STUBS
from bench.scenarios.base import Context, Skipped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER_FD_RESERVE = 300  # descriptors a server keeps for itself
BYTES_PER_CONN_BUDGET = 48 * 1024  # client + server + kernel, generous: caps steps by available memory


def _log(t0: float) -> Any:
    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def max_connections() -> tuple[int, str]:
    by_fd = nofile_hard() - SERVER_FD_RESERVE
    avail = 0
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable"))
    except (OSError, StopIteration):
        pass
    by_mem = avail // BYTES_PER_CONN_BUDGET if avail else by_fd
    if by_fd <= by_mem:
        return by_fd, f"open-file hard limit {nofile_hard()} (raising it needs root/CAP_SYS_RESOURCE: ulimit -Hn)"
    return by_mem, f"available memory {avail / 2**30:.1f} GiB at ~{BYTES_PER_CONN_BUDGET // 1024} KB per connection"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="quick profile (default): under five minutes")
    g.add_argument("--full", action="store_true", help="full profile")
    g.add_argument("--profile", choices=sorted(profiles.PROFILES), help="profile by name")
    p.add_argument("--scenario", default="idle,relay,fanout,churn,bot,cluster", help="comma-separated scenarios")
    p.add_argument("--servers", default=",".join(servers.DEFAULT_SERVERS), help="comma-separated servers")
    p.add_argument("--out", help="results folder (default bench/results/<timestamp>)")
    p.add_argument("--workers", type=int, default=0, help="load-generator processes (default: from CPUs and connections)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator to CPUs")
    p.add_argument("--deadline", type=float, help="overall time limit in seconds (default: the profile's)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    t0 = time.monotonic()
    log = _log(t0)
    prof = profiles.get("full" if args.full else args.profile or "quick")
    deadline_s = args.deadline or prof["deadline_s"]
    deadline = t0 + deadline_s
    scen_names = [s for s in args.scenario.split(",") if s]
    srv_names = [s for s in args.servers.split(",") if s]
    for s in scen_names:
        if s not in SCENARIOS:
            print(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.UTC)
    out = Path(args.out) if args.out else RESULTS / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)

    server_cpus, lg_cpus = cpu_plan(not args.no_pin)
    pin(lg_cpus)  # this process belongs with the load generator
    raise_nofile()
    cap, cap_reason = max_connections()
    biggest = max([min(n, cap) for n in prof["idle"]["steps"]] + [prof["fanout"]["recipients"], prof["relay"]["pairs"] * 2]
                  + ([prof["storm"]["connections"]] if "storm" in args.scenario.split(",") else []))
    per_worker = LoadGen.per_worker_capacity()
    # One worker per load-generator CPU (several processes on one CPU only add scheduling delay to the
    # latencies), more when the connections need more open files than one process may have.
    lg_cpu_count = len(lg_cpus) if lg_cpus else max(1, (os.cpu_count() or 2) - 1)
    workers = args.workers or max(-(-biggest // per_worker), min(lg_cpu_count, 8))

    unavailable = {n: why for n in srv_names if (why := servers.unavailable(n))}
    for n, why in unavailable.items():
        log(f"server {n} unavailable: {why}")
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.run " + " ".join(argv),
            "profile": prof["name"],
            "params": prof,
            "started": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "pinning": {"server_cpus": sorted(server_cpus) if server_cpus else None,
                        "loadgen_cpus": sorted(lg_cpus) if lg_cpus else None},
            "loadgen": {"workers": workers, "per_worker_capacity": per_worker, "client": "picows on uvloop"},
            "max_connections": cap,
            "max_connections_reason": cap_reason,
        },
        "servers": {n: {"label": servers.SERVERS[n].label, "note": servers.SERVERS[n].note,
                        "protocol": servers.SERVERS[n].protocol, "unavailable": unavailable.get(n)}
                    for n in srv_names if n in servers.SERVERS},
        "scenarios": {},
    }
    pins = f"server on CPU {sorted(server_cpus)}, load generator on {sorted(lg_cpus)}" if server_cpus else "no CPU pinning"
    log(f"profile {prof['name']}, {workers} load workers, {pins}, max {cap} connections ({cap_reason})")
    lifetime = deadline_s + 300
    lg = LoadGen(workers, lg_cpus, lifetime)
    try:
        for scen in scen_names:
            if scen in STUBS:
                results["scenarios"][scen] = {"status": STUBS[scen]}
                log(f"{scen}: {STUBS[scen]}")
                continue
            results["scenarios"][scen] = {}
            hosted = getattr(SCENARIOS[scen], "HOSTED", False)
            for name in srv_names:
                res = results["scenarios"][scen]
                if hosted and name != "gateway":
                    continue  # gateway-only scenarios: no row for the peers
                if name in unavailable or name not in servers.SERVERS:
                    res[name] = {"skipped": unavailable.get(name, "unknown server")}
                    continue
                only = prof.get("only", {}).get(name)
                if only is not None and scen not in only:
                    res[name] = {"skipped": f"not in the {prof['name']} profile"}
                    continue
                if deadline - time.monotonic() < 10:
                    res[name] = {"skipped": "overall deadline reached"}
                    log(f"{scen}/{name}: skipped (overall deadline)")
                    continue
                log(f"{scen}/{name}: starting")
                res[name], lg = _one(scen, name, prof, lg, workers, server_cpus, lg_cpus, deadline, cap, log, lifetime, out)
            if hosted and "gateway" not in srv_names:
                results["scenarios"][scen] = {"gateway": {"skipped": "gateway only (not in --servers)"}}
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
        results["meta"]["interrupted"] = True
    finally:
        lg.close()
    results["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
    paths = report.write(out, results, plots=not args.no_plots)
    complete = (args.scenario == parse([]).scenario and args.servers == parse([]).servers and not args.deadline
                and not results["meta"].get("interrupted") and prof["name"] in ("quick", "full"))
    if complete and out.resolve().is_relative_to(RESULTS.resolve()):
        paths += report.write_latest(RESULTS, out.resolve(), results, ROOT / "bench" / "README.md")
    log(f"done in {results['meta']['duration_s']} s: " + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
                                                                    for p in paths))
    print(report.summary_markdown(results))
    return 0


def _one(scen: str, name: str, prof: dict[str, Any], lg: LoadGen, workers: int, server_cpus: set[int] | None,
         lg_cpus: set[int] | None, deadline: float, cap: int, log: Any, lifetime: float,
         out: Path) -> tuple[dict[str, Any], LoadGen]:
    # HOSTED scenarios (bot, cluster) start and stop their own servers (a config file, Redis, two nodes).
    hosted = getattr(SCENARIOS[scen], "HOSTED", False)
    srv = None
    if not hosted:
        try:
            srv = servers.start(name, {"heartbeat_s": prof["heartbeat_s"]}, server_cpus)
        except Exception as e:  # noqa: BLE001 - a server that won't start is a result, not a crash
            log(f"{scen}/{name}: did not start: {e}")
            return {"error": f"did not start: {e}"}, lg
    ctx = Context(lg, srv, prof[scen], prof, server_cpus, deadline, cap, log, tag=f"{scen}{int(time.time() * 1000) % 10**8}",
                  out=out)
    try:
        res = SCENARIOS[scen].run(ctx)
    except Skipped as e:
        res = {"skipped": str(e)}
        log(f"{scen}/{name}: {e}")
        lg = _restart(lg, workers, lg_cpus, lifetime)  # connections may still be open in the workers
    except Exception as e:  # noqa: BLE001
        res = {"error": f"{type(e).__name__}: {e}"}
        log(f"{scen}/{name}: failed: {e}\n{traceback.format_exc(limit=4)}")
        dead = [s for s in ([ctx.server] if ctx.server else []) + ctx.more_servers if not s.alive()]
        if dead:
            res["server_output"] = "".join(dead[0].output[-15:])
        lg = _restart(lg, workers, lg_cpus, lifetime)  # a worker may be stuck or hold connections
    finally:
        if srv is not None:
            code = srv.stop()
            if code not in (0, None, -15):
                log(f"{scen}/{name}: server exit code {code}")
    return res, lg


def _restart(lg: LoadGen, workers: int, cpus: set[int] | None, lifetime: float) -> LoadGen:
    lg.close()
    return LoadGen(workers, cpus, lifetime)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

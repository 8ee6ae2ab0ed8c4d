"""What every scenario gets: the load generator, the running server, the profile, the clock."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.loadgen.histogram import Merged
from bench.measure import Window, WindowResult
from bench.servers import Running


class Skipped(Exception):
    """The scenario (or the rest of it) can't run here; the message says why."""


@dataclass
class Context:
    loadgen: LoadGen
    server: Running  # None until a HOSTED scenario started its own
    params: dict[str, Any]  # this scenario's section of the profile
    profile: dict[str, Any]
    server_cpus: set[int] | None
    deadline: float  # time.monotonic() by which the whole run must be over
    max_conns: int  # connections one server can hold here (open-file limit, memory)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    tag: str = ""  # unique per scenario run: tenants and user ids never collide
    out: Path | None = None  # the run's results folder (the bot scenario writes the gateway's config file there)
    # Scenarios that start their own servers (HOSTED: bot, cluster) set these once they run:
    more_servers: list[Running] = field(default_factory=list)  # more servers under test (cluster: node B)
    others: dict[str, int] = field(default_factory=dict)  # helper processes measured apart (name -> pid)

    @property
    def gateway(self) -> bool:
        return self.server.spec.protocol == "gateway"

    def window(self) -> Window:
        pids = [self.server.pid] + [s.pid for s in self.more_servers]
        return Window(pids if self.more_servers else self.server.pid, self.loadgen.pids, self.server_cpus, self.others).start()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skipped(f"overall deadline: {what} needs ~{seconds:.0f}s, {max(0, self.left()):.0f}s left")

    def timeout(self, seconds: float) -> float:
        """A per-step deadline, never past the overall one (plus a little to clean up)."""
        return max(1.0, min(seconds, self.left() + 10))

    def check_server(self) -> None:
        for srv in [self.server, *self.more_servers]:
            if not srv.alive():
                raise RuntimeError(f"{srv.spec.name} (pid {srv.pid}) exited with {srv.proc.returncode}: "
                                   + "".join(srv.output[-10:]))

    def open_cmd(self, group: str, *, role: str = "visitor", tenant: str = "bench", user: str = "u",
                 **extra: Any) -> dict[str, Any]:
        """An `open` command for this server: echo clients for peers, protocol clients for the gateway."""
        cmd: dict[str, Any] = {"op": "open", "group": group, "url": self.server.url,
                               "conc": self.params.get("conc", 100), "timeout": 10.0}
        if self.gateway:
            cmd.update(kind="chat", role=role, tenant=f"{self.tag}-{tenant}", user=f"{self.tag}-{user}",
                       secret=self.server.secret)
        else:
            cmd.update(kind="echo")
        cmd.update(extra)
        return cmd

    def open_spread(self, group: str, n: int, deadline_s: float, **kw: Any) -> dict[str, Any]:
        """Open `n` connections spread over the workers; returns totals and the window around it."""
        if n > self.max_conns:
            self.log(f"    open {group}: {n} connections clipped to {self.max_conns} (this machine's limit)")
            n = self.max_conns
        cmd = self.open_cmd(group, deadline_s=deadline_s, **kw)
        w = self.window()
        replies = self.loadgen.each(cmd, "n", self.loadgen.split(n), timeout=self.timeout(deadline_s + 30))
        win = w.stop()
        opened = sum(r["opened"] for r in replies)
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        elapsed = max((r["elapsed_s"] for r in replies), default=0.0)
        first = {k: v for r in replies for k, v in r.get("first_error", {}).items()}
        if first:
            self.log(f"    open {group}: failures {errors}: {first}")
        return {"requested": n, "opened": opened, "failed": sum(r["failed"] for r in replies), "errors": errors,
                "elapsed_s": round(elapsed, 3), "rate_per_s": round(opened / elapsed, 1) if elapsed else None,
                "server_cpu_s": round(win.server_cpu_s, 3),
                "server_cpu_ms_per_conn": round(win.server_cpu_s * 1000 / opened, 4) if opened else None,
                "window": win.as_dict()}

    def close_all(self, group: str, timeout: float = 20.0, reset_flows: bool = False) -> dict[str, Any]:
        w = self.window()
        replies = self.loadgen.all({"op": "close", "group": group, "timeout": timeout, "reset_flows": reset_flows},
                                   timeout=self.timeout(timeout + 20))
        win = w.stop()
        out = {k: sum(r[k] for r in replies) for k in ("closed", "clean", "dropped_before_close", "forced")}
        out["elapsed_s"] = round(max((r["elapsed_s"] for r in replies), default=0.0), 3)
        out["server_cpu_s"] = round(win.server_cpu_s, 3)
        return out


def noise_fields(win: WindowResult) -> dict[str, Any]:
    """The machine-noise figures printed next to every result."""
    return {"noise_pct": round(win.noise_pct, 2), "noise_server_cpu_pct": None if win.noise_server_cpu_pct is None
            else round(win.noise_server_cpu_pct, 2), "steal_pct": round(win.steal_pct, 2),
            "loadgen_cpu_pct": round(win.loadgen_cpu_pct, 1), "server_cpu_pct": round(win.server_cpu_pct, 1)}


def latency(replies: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    return Merged(h for r in replies for k in keys if (h := r.get("hists", {}).get(k))).summary()


def per_cpu(count: float, cpu_s: float) -> float | None:
    return round(count / cpu_s, 1) if cpu_s > 0.005 else None


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


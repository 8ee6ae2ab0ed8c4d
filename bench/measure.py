"""What the bench reads from /proc: server CPU seconds and RSS, and how busy the rest of the machine was.

- Server CPU: utime+stime of the server process and every live descendant, plus
  the reaped children's cutime+cstime (/proc/PID/stat), in seconds.
- Server RSS: VmRSS of the process tree (/proc/PID/status).
- Noise: over a measurement window, the busy time of the whole machine
  (/proc/stat: user+nice+system+irq, steal and softirq reported apart) minus
  the CPU of the server, the load generator, this bench process and the
  scenario's helpers (`others`: the stand-in LLM server, redis-server, each
  reported apart). What is left is other people's work sharing the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Live descendants of `pid` (all levels)."""
    by_parent: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None:
                by_parent.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for c in by_parent.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime+stime (+ reaped children's) of `pid` and, with `tree`, its live descendants."""
    total = 0
    for i, p in enumerate([pid] + (children(pid) if tree else [])):
        f = _stat_fields(p)
        if f is None:
            continue
        # fields after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(f[11]) + int(f[12])
        if i == 0:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def rss_bytes(pid: int, tree: bool = True) -> int:
    total = 0
    for p in [pid] + (children(pid) if tree else []):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def tcp_kernel_bytes() -> int:
    """Memory the kernel charges to TCP sockets, all of them (/proc/net/sockstat `TCP ... mem` pages)."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("mem") + 1]) * PAGE
    except (OSError, ValueError):
        pass
    return 0


def _proc_stat() -> dict[str, list[int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                name, *vals = line.split()
                out[name] = [int(v) for v in vals]
    return out


def _busy(vals: list[int]) -> tuple[int, int, int, int]:
    """(busy without softirq/steal, softirq, steal, total) ticks of one /proc/stat cpu line."""
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq, softirq, steal, total


@dataclass
class WindowResult:
    wall_s: float
    server_cpu_s: float
    loadgen_cpu_s: float
    bench_cpu_s: float
    server_cpu_pct: float  # of one CPU
    loadgen_cpu_pct: float  # of one CPU
    noise_cpu_s: float  # other processes' CPU, whole machine
    noise_pct: float  # of the whole machine's capacity
    noise_server_cpu_pct: float | None  # other busy time on the server's CPU(s), % of their capacity
    softirq_pct: float
    steal_pct: float
    server_rss_bytes: int
    server_main_cpu_s: float = 0.0  # the server processes alone, without their children (the bot worker)
    server_cpu_each_s: list[float] = field(default_factory=list)  # per server process, when there are several
    others_cpu_s: dict[str, float] = field(default_factory=dict)  # the scenario's helpers, by name

    def as_dict(self) -> dict[str, Any]:
        def r(v: Any) -> Any:
            if isinstance(v, float):
                return round(v, 4)
            if isinstance(v, list):
                return [r(x) for x in v]
            if isinstance(v, dict):
                return {k: r(x) for k, x in v.items()}
            return v

        return {k: r(v) for k, v in asdict(self).items()}


class Window:
    """Measure one interval: start() ... stop() -> WindowResult."""

    def __init__(self, server_pid: int | list[int], loadgen_pids: list[int], server_cpus: set[int] | None = None,
                 others: dict[str, int] | None = None) -> None:
        self.server_pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)
        self.loadgen_pids = loadgen_pids
        self.server_cpus = server_cpus
        self.others = dict(others or {})

    def _sample(self) -> tuple[float, list[float], float, float, dict[str, list[int]], dict[str, float], float]:
        return (
            time.monotonic(),
            [cpu_seconds(p) for p in self.server_pids],
            sum(cpu_seconds(p, tree=False) for p in self.loadgen_pids),
            cpu_seconds(os.getpid(), tree=False),
            _proc_stat(),
            {k: cpu_seconds(p) for k, p in self.others.items()},
            sum(cpu_seconds(p, tree=False) for p in self.server_pids),
        )

    def start(self) -> Window:
        self._a = self._sample()
        return self

    def stop(self) -> WindowResult:
        b = self._sample()
        a = self._a
        wall = b[0] - a[0]
        each = [y - x for x, y in zip(a[1], b[1], strict=True)]
        server, loadgen, bench = sum(each), b[2] - a[2], b[3] - a[3]
        others = {k: b[5][k] - a[5][k] for k in self.others}
        busy_a, sirq_a, steal_a, tot_a = _busy(a[4]["cpu"])
        busy_b, sirq_b, steal_b, tot_b = _busy(b[4]["cpu"])
        ticks = max(1, tot_b - tot_a)
        busy_s = (busy_b - busy_a) / CLK_TCK
        noise = max(0.0, busy_s - server - loadgen - bench - sum(others.values()))
        capacity_s = ticks / CLK_TCK  # all CPUs together
        srv_noise = None
        if self.server_cpus:
            sb = sum(_busy(b[4][f"cpu{c}"])[0] - _busy(a[4][f"cpu{c}"])[0] for c in self.server_cpus if f"cpu{c}" in b[4])
            st = sum(_busy(b[4][f"cpu{c}"])[3] - _busy(a[4][f"cpu{c}"])[3] for c in self.server_cpus if f"cpu{c}" in b[4])
            srv_noise = max(0.0, (sb / CLK_TCK - server) / max(st / CLK_TCK, 1e-9) * 100)
        return WindowResult(
            wall_s=wall,
            server_cpu_s=server,
            loadgen_cpu_s=loadgen,
            bench_cpu_s=bench,
            server_cpu_pct=server / wall * 100 if wall > 0 else 0.0,
            loadgen_cpu_pct=loadgen / wall * 100 if wall > 0 else 0.0,
            noise_cpu_s=noise,
            noise_pct=noise / capacity_s * 100,
            noise_server_cpu_pct=srv_noise,
            softirq_pct=(sirq_b - sirq_a) / ticks * 100,
            steal_pct=(steal_b - steal_a) / ticks * 100,
            server_rss_bytes=sum(rss_bytes(p) for p in self.server_pids),
            server_main_cpu_s=b[6] - a[6],
            server_cpu_each_s=each if len(each) > 1 else [],
            others_cpu_s=others,
        )


def machine() -> dict[str, Any]:
    """The machine description printed with every result."""
    import platform
    import resource
    import shutil
    import subprocess

    info: dict[str, Any] = {"nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            mem = {ln.split(":")[0]: ln.split()[1] for ln in f}
        info["mem_total_gib"] = round(int(mem["MemTotal"]) / 1024**2, 1)
        info["mem_available_gib"] = round(int(mem["MemAvailable"]) / 1024**2, 1)
    except (OSError, KeyError, StopIteration):
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["nofile_limit"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            info["ephemeral_ports"] = f.read().split()
    except OSError:
        pass
    versions = {}
    for mod in ("picows", "uvloop", "websockets", "aiohttp", "orjson"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = None
    if shutil.which("node"):
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        lock = os.path.join(os.path.dirname(__file__), "peers", "node", "node_modules", "ws", "package.json")
        if os.path.exists(lock):
            import json

            with open(lock) as f:
                versions["ws"] = json.load(f).get("version")
    info["versions"] = versions
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "native", "routing", "dedup"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        info["git"] = rev + ("+dirty" if dirty else "")
    except OSError:
        pass
    return info

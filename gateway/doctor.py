"""`chatgw doctor`: how many connections this machine's limits let a node hold, and how to raise them.

A node holds one socket, so one file descriptor, per connection, plus a fixed reserve
(FD_RESERVE) for itself. Each process has its own open-file limit; the sysctls and memory
are shared by every process on the machine. `read()` takes the readings, `assess()` (pure,
a Readings in, a Verdict out) turns them into a verdict, `render()` / `as_json()` print it.

Per-connection figures, and where they come from:
- RSS_PER_CONN_BYTES: 5.738 KiB of process RSS per idle connection, summed over 6 workers
  holding 100,000 connections (bench/results/20261129T-issue12/storm-100k-summary.md; 5.66 KiB
  for one node at 10,000 in bench/results/LATEST.md). KiB as bench/scenarios/idle.py counts.
- Socket buffers: tcp_rmem[0] + tcp_wmem[0] (/proc/sys/net/ipv4/tcp_rmem, tcp_wmem; 4096 each by
  default): the floor the kernel grants a socket's receive and send buffer under memory pressure.
  An idle socket charges almost none (the bench's kernel TCP figure: 0.0-0.12 KiB per connection,
  bench/results/20261129T232915Z/results.json `kernel_tcp_per_conn_kb`), so this is the budget for
  connections that are talking, and pessimistic for idle ones.
- KERNEL_SLAB_PER_SOCKET_BYTES: the kernel's own structures for a socket (struct sock, inode, file,
  dentry, epoll item), in no RSS: /proc/meminfo `Slab` grew 4.3-4.6 KiB per socket with 4,000 and
  9,000 idle loopback socket pairs held open on the 2-vCPU bench VM (Linux 6.18).
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Descriptors a node keeps for itself: listeners, epoll, its store (SQLite and WAL), Redis
# connections, the HTTP side's clients (metrics, admin, API), the bot worker's pipes, webhooks.
# An idle embedded node opens 23; 300 is bench/run.py's SERVER_FD_RESERVE, which leaves room.
FD_RESERVE = 300
RSS_PER_CONN_BYTES = round(5.738 * 1024)
KERNEL_SLAB_PER_SOCKET_BYTES = round(4.5 * 1024)
# What a node costs before any connection: the node process (about 55 MiB RSS idle, embedded, measured
# by a new-user trial with `ps`) and its bot worker process (about 116 MiB with the FAQ index and the
# sentence embedding model). Taken off the memory budget once per process.
NODE_BASE_BYTES = (55 + 116) << 20
LISTEN_BACKLOG = 4096  # gateway/server.py's backlog=; the kernel clamps it to net.core.somaxconn
SYSCTL_FILE = "/etc/sysctl.d/60-chatgw.conf"
# cgroup v1 reports "no limit" as a huge number just under 2**63
_NO_CGROUP_LIMIT = 1 << 60


@dataclass(frozen=True)
class Readings:
    """What the machine says. Counts are counts, memory is bytes; None: not readable / not present."""

    nofile_soft: int  # RLIMIT_NOFILE of this process (what a node started the same way gets)
    nofile_hard: int  # RLIM_INFINITY is read as fs.nr_open, the kernel's ceiling for it
    nr_open: int | None = None  # fs.nr_open: the most any process's open-file limit may be
    file_max: int | None = None  # fs.file-max: open files on the whole machine
    files_in_use: int | None = None  # fs.file-nr, first field
    somaxconn: int | None = None  # net.core.somaxconn: longest accept queue
    port_range: tuple[int, int] | None = None  # net.ipv4.ip_local_port_range
    tcp_tw_reuse: int | None = None  # net.ipv4.tcp_tw_reuse
    conntrack_key: str | None = None  # the sysctl name conntrack's limit has here; None: not loaded
    conntrack_max: int | None = None
    conntrack_count: int | None = None
    mem_total: int | None = None  # /proc/meminfo MemTotal
    mem_available: int | None = None  # /proc/meminfo MemAvailable
    cgroup_limit: int | None = None  # memory.max (v2) or memory.limit_in_bytes (v1); None: unlimited
    cgroup_usage: int | None = None  # memory.current (v2) or memory.usage_in_bytes (v1)
    tcp_rmem_min: int = 4096  # tcp_rmem first field (bytes)
    tcp_wmem_min: int = 4096  # tcp_wmem first field (bytes)


@dataclass
class Limit:
    """One limit against the target: `allows` connections on the machine (None: not a cap), `needs` to meet it."""

    key: str
    name: str
    reading: str
    allows: int | None
    needs: int | None
    ok: bool
    note: str = ""
    fix: list[str] = field(default_factory=list)
    sysctl: str | None = None  # the sysctl `--apply` writes `needs` to, if this one is below target


@dataclass
class Verdict:
    connections: int
    processes: int
    per_process: int
    reserve: int
    conn_bytes: dict[str, int]
    limits: list[Limit]
    not_caps: list[str]
    cap: Limit
    ok: bool


def _sysctl_fix(key: str, value: int) -> list[str]:
    return [f"sysctl -w {key}={value}", f"echo '{key} = {value}' >> {SYSCTL_FILE}   # keeps it after a reboot"]


def assess(r: Readings, connections: int = 10_000, processes: int = 1) -> Verdict:
    """The verdict for `connections` spread over `processes` nodes on this machine; pure, from `r` alone."""
    per_process = math.ceil(connections / processes)
    reserve_all = FD_RESERVE * processes
    buffers = r.tcp_rmem_min + r.tcp_wmem_min
    conn_bytes = {"rss": RSS_PER_CONN_BYTES, "socket_buffers": buffers, "kernel_slab": KERNEL_SLAB_PER_SOCKET_BYTES}
    conn_bytes["total"] = sum(conn_bytes.values())
    fd_needs = per_process + FD_RESERVE
    limits: list[Limit] = []

    # The node raises its soft limit to the hard one at start (raise_open_files), so the hard limit is the cap.
    allows = processes * max(0, r.nofile_hard - FD_RESERVE)
    soft = "" if r.nofile_soft >= r.nofile_hard else "; a node raises its soft limit to the hard one at start"
    limits.append(Limit(
        "nofile", "open files per process (RLIMIT_NOFILE)", f"hard {r.nofile_hard}, soft {r.nofile_soft}",
        allows, fd_needs, allows >= connections,
        note=f"(hard limit {r.nofile_hard} - reserve {FD_RESERVE}) x {processes} process{'es' * (processes > 1)}{soft}",
        fix=[f"ulimit -n {fd_needs}   # in the shell that starts the node; raising the hard limit needs root",
             f"LimitNOFILE={fd_needs}   # systemd: the node's unit, [Service] section",
             f"*  soft  nofile  {fd_needs}   # /etc/security/limits.conf (`*` does not cover root)",
             f"*  hard  nofile  {fd_needs}   # /etc/security/limits.conf"]
        + ([f"# above fs.nr_open {r.nr_open}: raise fs.nr_open first"] if r.nr_open and fd_needs > r.nr_open else []),
    ))
    if r.nr_open is not None:
        allows = processes * max(0, r.nr_open - FD_RESERVE)
        limits.append(Limit("fs.nr_open", "fs.nr_open", str(r.nr_open), allows, fd_needs, allows >= connections,
                            note="the most any process's open-file limit may be raised to",
                            fix=_sysctl_fix("fs.nr_open", fd_needs), sysctl="fs.nr_open"))
    if r.file_max is not None:
        used = r.files_in_use or 0
        allows = max(0, r.file_max - used - reserve_all)
        needs = connections + reserve_all + used
        limits.append(Limit("fs.file-max", "fs.file-max", f"{r.file_max} ({used} in use)", allows, needs,
                            allows >= connections, note="open files of all processes on the machine",
                            fix=_sysctl_fix("fs.file-max", needs), sysctl="fs.file-max"))
    if r.conntrack_key is None:
        limits.append(Limit("conntrack", "nf_conntrack_max", "not loaded", None, None, True,
                            note="nf_conntrack not loaded: no connection tracking, no cap"))
    else:
        used = r.conntrack_count or 0
        allows = max(0, (r.conntrack_max or 0) - used)
        needs = connections + used
        limits.append(Limit("conntrack", r.conntrack_key,
                            f"{r.conntrack_max} ({used} in use)", allows, needs, allows >= connections,
                            note="connections the firewall tracks, whole machine; a full table drops new ones",
                            fix=_sysctl_fix(r.conntrack_key, needs),
                            sysctl=r.conntrack_key))
    budget, source = _memory_budget(r)
    if budget is not None:
        base = processes * NODE_BASE_BYTES
        allows = max(0, budget - base) // conn_bytes["total"]
        needs = connections * conn_bytes["total"] + base
        limits.append(Limit(
            "memory", "memory", source, allows, needs, allows >= connections,
            note=f"{conn_bytes['total'] / 1024:.1f} KiB per connection, after {NODE_BASE_BYTES >> 20} MiB per node "
                 "(the node and its bot worker); memory is shared by all the nodes",
            fix=["# add memory or spread the nodes over more machines",
                 f"MemoryMax={needs}   # systemd, if the unit caps memory (the connections and the nodes' own)"],
        ))
    if r.somaxconn is not None:
        ok = r.somaxconn >= LISTEN_BACKLOG
        limits.append(Limit("net.core.somaxconn", "net.core.somaxconn", str(r.somaxconn), None,
                            LISTEN_BACKLOG, ok,
                            note=f"not a cap on connections held: it bounds how many wait to be accepted; the node asks "
                                 f"for {LISTEN_BACKLOG}, and a shorter queue drops SYNs when many connect at once",
                            fix=_sysctl_fix("net.core.somaxconn", LISTEN_BACKLOG), sysctl="net.core.somaxconn"))

    for lim in limits:
        if lim.ok:
            lim.fix = []  # nothing to raise; a command would only lower a limit already high enough
    not_caps = []
    if r.port_range:
        lo, hi = r.port_range
        not_caps.append(f"net.ipv4.ip_local_port_range {lo} {hi} ({hi - lo + 1:,} ports): only outgoing connections "
                        "take a local port (the load generator, a node's connections to Redis), one per "
                        "(source address, destination) pair; incoming connections all share the node's port")
    if r.tcp_tw_reuse is not None:
        not_caps.append(f"net.ipv4.tcp_tw_reuse {r.tcp_tw_reuse} (0 off, 1 on, 2 loopback only): lets outgoing "
                        "connections reuse ports in TIME_WAIT; it does not change how many incoming ones a node holds")
    # The cap is the smallest count any limit allows; on a tie the first listed (open files) is named.
    cap = min((lim for lim in limits if lim.allows is not None), key=lambda lim: lim.allows or 0)
    return Verdict(connections, processes, per_process, FD_RESERVE, conn_bytes, limits, not_caps, cap,
                   all(lim.ok for lim in limits))


def _memory_budget(r: Readings) -> tuple[int | None, str]:
    """Bytes connections may take: MemAvailable, or what the cgroup limit leaves if that is less."""
    budget, source = r.mem_available, f"MemAvailable {_gib(r.mem_available)} of {_gib(r.mem_total)}"
    if r.cgroup_limit is not None:
        left = max(0, r.cgroup_limit - (r.cgroup_usage or 0))
        if budget is None or left < budget:
            budget, source = left, f"cgroup limit {_gib(r.cgroup_limit)}, {_gib(left)} left"
        else:
            source += f" (cgroup limit {_gib(r.cgroup_limit)})"
    return budget, source


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sysctl_path(key: str, proc_root: str = "/proc") -> Path:
    """fs.file-max -> /proc/sys/fs/file-max."""
    return Path(proc_root, "sys", *key.split("."))


def read(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> Readings:
    """Read the limits of this process and machine (sysctls and /proc/meminfo under `proc_root`)."""
    def sysctl(key: str) -> int | None:
        return _int(sysctl_path(key, proc_root))

    nr_open = sysctl("fs.nr_open")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = nr_open or 1 << 20
    soft = ceiling if soft == resource.RLIM_INFINITY else soft
    hard = ceiling if hard == resource.RLIM_INFINITY else hard
    try:
        ports = sysctl_path("net.ipv4.ip_local_port_range", proc_root).read_text().split()
        port_range: tuple[int, int] | None = (int(ports[0]), int(ports[1]))
    except (OSError, ValueError, IndexError):
        port_range = None
    # Newer kernels name it net.netfilter.nf_conntrack_max; the old name stays as an alias. Neither: not loaded.
    ct_key = next((k for k in ("net.netfilter.nf_conntrack_max", "net.nf_conntrack_max")
                   if sysctl_path(k, proc_root).exists()), None)
    meminfo: dict[str, int] = {}
    try:
        for line in Path(proc_root, "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            meminfo[name] = int(rest.split()[0]) * 1024  # kB in the file means KiB
    except (OSError, ValueError, IndexError):
        pass
    cg = Path(cgroup_root)
    limit, usage = _int(cg / "memory.max"), _int(cg / "memory.current")  # v2 ("max": no limit, reads as None)
    if limit is None and (cg / "memory").is_dir():  # v1
        limit, usage = _int(cg / "memory/memory.limit_in_bytes"), _int(cg / "memory/memory.usage_in_bytes")
    if limit is not None and limit >= _NO_CGROUP_LIMIT:
        limit = None
    return Readings(
        nofile_soft=soft, nofile_hard=hard, nr_open=nr_open, file_max=sysctl("fs.file-max"),
        files_in_use=sysctl("fs.file-nr"), somaxconn=sysctl("net.core.somaxconn"), port_range=port_range,
        tcp_tw_reuse=sysctl("net.ipv4.tcp_tw_reuse"), conntrack_key=ct_key,
        conntrack_max=sysctl(ct_key) if ct_key else None,
        conntrack_count=sysctl(ct_key.replace("_max", "_count")) if ct_key else None,
        mem_total=meminfo.get("MemTotal"), mem_available=meminfo.get("MemAvailable"),
        cgroup_limit=limit, cgroup_usage=usage if limit is not None else None,
        tcp_rmem_min=sysctl("net.ipv4.tcp_rmem") or 4096, tcp_wmem_min=sysctl("net.ipv4.tcp_wmem") or 4096,
    )


def raise_open_files() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return (old_soft, new_soft).

    A node holds one descriptor per connection, and shells and service managers often start
    processes with a soft limit of 1024 under a much higher hard one. An unlimited hard limit
    is raised to fs.nr_open, the most the kernel allows. Failing to raise it is not fatal.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = _int(Path("/proc/sys/fs/nr_open")) or 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError):
        return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def render(v: Verdict) -> str:
    """The verdict as text for a person."""
    b = v.conn_bytes
    lines = [
        f"chatgw doctor: {v.connections:,} connections on {v.processes} process{'es' * (v.processes > 1)} "
        f"({v.per_process:,} per process)",
        f"per connection: 1 file descriptor and {b['total'] / 1024:.1f} KiB of memory =",
        f"  {b['rss'] / 1024:.2f} KiB process RSS (idle, bench/results/20261129T-issue12) + "
        f"{b['socket_buffers'] / 1024:.1f} KiB socket buffers "
        f"(tcp_rmem + tcp_wmem minimum) + {b['kernel_slab'] / 1024:.1f} KiB kernel socket structures",
        f"per process: {v.reserve} file descriptors reserved for the node itself",
        "",
    ]
    rows = [("limit", "reading", "connections allowed", "value needed", "")]
    for lim in v.limits:
        rows.append((lim.name, lim.reading, "-" if lim.allows is None else f"{lim.allows:,}",
                     "-" if lim.needs is None else _gib(lim.needs) if lim.key == "memory" else f"{lim.needs:,}",
                     "ok" if lim.ok else "BELOW TARGET"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"  {lim.name}: {lim.note}" for lim in v.limits if lim.note]
    if v.not_caps:
        lines += ["", "not caps on incoming connections:"] + [f"  {n}" for n in v.not_caps]
    c = v.cap
    lines += ["", f"capped by: {c.name}: {c.allows:,} connections" + (f" = {c.note}" if c.key == "nofile" else ""),
              f"target {v.connections:,}: " + ("met" if v.ok else "NOT met")]
    below = [lim for lim in v.limits if not lim.ok]
    if below:
        lines += ["", f"to raise what is below target (needed for {v.connections:,}):"]
        for lim in below:
            lines += [f"  {lim.name}, now {lim.reading}:"] + [f"    {f}" for f in lim.fix]
    return "\n".join(lines)


def as_json(v: Verdict, r: Readings) -> dict:
    """The verdict and the readings, for scripts."""
    return {"connections": v.connections, "processes": v.processes, "per_process": v.per_process,
            "fd_reserve": v.reserve, "bytes_per_connection": v.conn_bytes, "ok": v.ok,
            "cap": {"key": v.cap.key, "name": v.cap.name, "allows": v.cap.allows},
            "limits": [asdict(lim) for lim in v.limits], "not_caps": v.not_caps, "readings": asdict(r)}


def apply(v: Verdict, proc_root: str = "/proc") -> list[dict]:
    """Write each sysctl below target (its `needs`) and raise this process's soft open-file limit. Needs root."""
    done = []
    for lim in v.limits:
        if lim.ok or lim.sysctl is None or lim.needs is None:
            continue
        path = sysctl_path(lim.sysctl, proc_root)
        try:
            path.write_text(f"{lim.needs}\n")
            done.append({"sysctl": lim.sysctl, "path": str(path), "value": lim.needs, "ok": True})
        except OSError as e:  # read-only in a container's network namespace, or a value the kernel refuses
            done.append({"sysctl": lim.sysctl, "path": str(path), "value": lim.needs, "ok": False, "error": str(e)})
    old, new = raise_open_files()
    done.append({"rlimit": "RLIMIT_NOFILE soft", "old": old, "value": new, "ok": True})
    return done


def main(connections: int, processes: int, *, do_apply: bool = False, json_out: bool = False,
         proc_root: str = "/proc") -> int:
    """`chatgw doctor`: 0 when the target is met, 1 when not (or an --apply write failed), 2 on bad use."""
    import json
    import sys

    if connections < 1 or processes < 1:
        print("chatgw doctor: --connections and --processes must be at least 1", file=sys.stderr)
        return 2
    if do_apply and os.geteuid() != 0:
        print("chatgw doctor: --apply writes kernel settings (/proc/sys) and needs root; run it with sudo. "
              "Nothing was changed.", file=sys.stderr)
        return 2
    readings = read(proc_root)
    verdict = assess(readings, connections, processes)
    applied: list[dict] = []
    if do_apply:
        applied = apply(verdict, proc_root)
        readings = read(proc_root)  # what the kernel took, which may be less than what was written
        verdict = assess(readings, connections, processes)
    if json_out:
        out = as_json(verdict, readings)
        if do_apply:
            out["applied"] = applied
        print(json.dumps(out, indent=2))
    else:
        for a in applied:
            what = a.get("sysctl") or a["rlimit"]
            if a.get("rlimit"):
                print(f"applied: {what} {a['old']} -> {a['value']} (this process; a node raises its own at start, "
                      "its hard limit comes from whatever starts it)")
            elif a["ok"]:
                print(f"applied: {what} = {a['value']} (wrote {a['path']}; add it to {SYSCTL_FILE} to keep it)")
            else:
                print(f"NOT applied: {what} = {a['value']}: {a['error']}")
        print(("\n" if applied else "") + render(verdict))
    return 0 if verdict.ok and all(a["ok"] for a in applied) else 1

"""`chatgw doctor`: real runs against this machine's limits, and the verdict from example readings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.doctor import FD_RESERVE, LISTEN_BACKLOG, NODE_BASE_BYTES, Readings, assess

ROOT = Path(__file__).resolve().parent.parent


def doctor(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "doctor", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, **kw)


def ulimit_hn() -> int:
    """The hard open-file limit as the shell reports it (an unlimited one is fs.nr_open in the kernel)."""
    out = subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True, check=True).stdout.strip()
    return int(Path("/proc/sys/fs/nr_open").read_text()) if out == "unlimited" else int(out)


def test_doctor_names_the_open_file_limit_as_the_cap_of_one_process():
    hard = ulimit_hn()
    verdict = json.loads(doctor("--connections", "1000000", "--json").stdout)
    others = {lim["key"]: lim["allows"] for lim in verdict["limits"] if lim["allows"] is not None and lim["key"] != "nofile"}
    if min(others.values()) < hard - FD_RESERVE:
        pytest.skip(f"on this machine another limit allows fewer than the open-file limit: {others}")
    run = doctor("--connections", "1000000")
    assert run.returncode == 1, run.stdout + run.stderr  # a million is past this machine's limit
    out = run.stdout
    reserve = int(re.search(r"^per process: (\d+) file descriptors reserved", out, re.M).group(1))
    m = re.search(r"^capped by: open files per process \(RLIMIT_NOFILE\): ([\d,]+) connections = "
                  r"\(hard limit (\d+) - reserve (\d+)\) x 1 process$", out, re.M)
    assert m, out
    allowed, hard_shown, reserve_shown = int(m.group(1).replace(",", "")), int(m.group(2)), int(m.group(3))
    assert hard_shown == hard
    assert reserve_shown == reserve == FD_RESERVE
    assert allowed == hard - reserve
    assert "target 1,000,000: NOT met" in out
    # the exact commands for what is below target, with the figure a million needs
    assert f"ulimit -n {1_000_000 + reserve}" in out
    assert f"LimitNOFILE={1_000_000 + reserve}" in out
    assert f"*  hard  nofile  {1_000_000 + reserve}" in out


def test_doctor_json_fields():
    run = doctor("--connections", "1000000", "--processes", "2", "--json")
    assert run.returncode in (0, 1), run.stderr
    v = json.loads(run.stdout)
    hard = ulimit_hn()
    assert v["connections"] == 1_000_000 and v["processes"] == 2 and v["per_process"] == 500_000
    assert v["fd_reserve"] == FD_RESERVE
    assert v["readings"]["nofile_hard"] == hard
    b = v["bytes_per_connection"]
    assert b["total"] == b["rss"] + b["socket_buffers"] + b["kernel_slab"]
    assert b["socket_buffers"] == v["readings"]["tcp_rmem_min"] + v["readings"]["tcp_wmem_min"]
    limits = {lim["key"]: lim for lim in v["limits"]}
    assert {"nofile", "fs.nr_open", "fs.file-max", "conntrack", "memory", "net.core.somaxconn"} <= set(limits)
    assert limits["nofile"]["allows"] == 2 * (hard - FD_RESERVE)  # each process has its own limit
    assert limits["nofile"]["needs"] == 500_000 + FD_RESERVE
    r = v["readings"]
    budget = r["mem_available"]
    if r["cgroup_limit"] is not None:
        budget = min(budget, r["cgroup_limit"] - (r["cgroup_usage"] or 0))
    assert limits["memory"]["allows"] == (budget - 2 * NODE_BASE_BYTES) // b["total"]  # each node's own first
    if r["conntrack_key"] is None:
        assert limits["conntrack"]["reading"] == "not loaded" and limits["conntrack"]["allows"] is None
    assert v["cap"]["allows"] == min(lim["allows"] for lim in v["limits"] if lim["allows"] is not None)
    assert v["ok"] == all(lim["ok"] for lim in v["limits"])
    assert all(lim["fix"] == [] for lim in v["limits"] if lim["ok"])
    assert any("ip_local_port_range" in n and "outgoing" in n for n in v["not_caps"])


def test_apply_without_root_is_refused():
    if os.geteuid() == 0:
        # Running as root: try it as nobody would see it; where nobody can't run this interpreter
        # (a venv over a Python under /root), test_apply_writes_exactly_the_sysctls_below_target covers --apply.
        try:
            run = doctor("--apply", preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)),
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        except PermissionError as e:
            pytest.skip(f"running as root, and nobody can't run {sys.executable}: {e}")
    else:
        run = doctor("--apply")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--apply" in run.stderr and "needs root" in run.stderr and "Nothing was changed" in run.stderr
    assert run.stdout == ""


def _proc_tree(root: Path, values: dict[str, str]) -> None:
    for rel, text in values.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.skipif(os.geteuid() != 0, reason="--apply needs root")
def test_apply_writes_exactly_the_sysctls_below_target(tmp_path):
    files = {
        "sys/fs/nr_open": "40000\n",  # below 50,000 + reserve: written
        "sys/fs/file-max": "30000\n",  # below: written
        "sys/fs/file-nr": "1000\t0\t30000\n",
        "sys/net/core/somaxconn": "128\n",  # below the listener's backlog: written
        "sys/net/netfilter/nf_conntrack_max": "262144\n",  # enough: left alone
        "sys/net/netfilter/nf_conntrack_count": "10\n",
        "sys/net/ipv4/ip_local_port_range": "32768\t60999\n",  # outgoing only: never written
        "sys/net/ipv4/tcp_tw_reuse": "0\n",
        "sys/net/ipv4/tcp_rmem": "4096\t131072\t6291456\n",
        "sys/net/ipv4/tcp_wmem": "4096\t16384\t4194304\n",
        "meminfo": "MemTotal:       16000000 kB\nMemAvailable:   15000000 kB\n",
    }
    _proc_tree(tmp_path, files)
    before = {rel: (tmp_path / rel).read_text() for rel in files}
    run = doctor("--connections", "50000", "--apply", "--json", "--proc-root", str(tmp_path))
    v = json.loads(run.stdout)
    after = {rel: (tmp_path / rel).read_text() for rel in files}
    changed = {rel: after[rel].strip() for rel in files if after[rel] != before[rel]}
    assert changed == {
        "sys/fs/nr_open": str(50_000 + FD_RESERVE),
        "sys/fs/file-max": str(50_000 + FD_RESERVE + 1000),
        "sys/net/core/somaxconn": str(LISTEN_BACKLOG),
    }
    written = {a["sysctl"] for a in v["applied"] if "sysctl" in a}
    assert written == {"fs.nr_open", "fs.file-max", "net.core.somaxconn"}
    limits = {lim["key"]: lim for lim in v["limits"]}  # read again after the writes
    assert limits["fs.nr_open"]["ok"] and limits["fs.file-max"]["ok"] and limits["net.core.somaxconn"]["ok"]
    # the open-file hard limit of the node's own process is not a sysctl: if it is below target it stays so
    assert run.returncode == (0 if limits["nofile"]["ok"] else 1)


def test_raise_open_files_raises_the_soft_limit_to_the_hard_one():
    code = ("import resource; s, h = resource.getrlimit(resource.RLIMIT_NOFILE);"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, h), h));"
            "from gateway.doctor import raise_open_files; print(*raise_open_files(), h)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    old, new, hard = (int(x) for x in out.split())
    assert old == min(256, hard) and new == hard


def test_a_node_raises_its_soft_open_file_limit_at_start():
    hard = ulimit_hn()
    env = dict(os.environ, GATEWAY_HTTP_PORT="0", GATEWAY_WS_PORT="0", GATEWAY_DATA_DIR="none",
               GATEWAY_BOTS_ENABLED="false", GATEWAY_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(["bash", "-c", f"ulimit -Sn 512 && exec {sys.executable} -m gateway serve"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or "websocket" in line:
                break
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft, hard_seen = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M).groups()
        assert int(hard_seen) == hard and int(soft) == hard
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# The verdict from example readings (no machine involved).

SMALL = Readings(nofile_soft=1024, nofile_hard=4096, nr_open=1 << 20, file_max=1 << 20, files_in_use=500,
                 somaxconn=4096, port_range=(32768, 60999), tcp_tw_reuse=2, conntrack_key=None,
                 mem_total=8 << 30, mem_available=6 << 30)


def test_the_hard_limit_caps_each_process_and_processes_add_up():
    v = assess(SMALL, 10_000, 1)
    assert v.cap.key == "nofile" and v.cap.allows == 4096 - FD_RESERVE and not v.ok
    nofile = v.limits[0]
    assert nofile.needs == 10_000 + FD_RESERVE
    assert f"ulimit -n {10_000 + FD_RESERVE}" in nofile.fix[0] and f"LimitNOFILE={10_000 + FD_RESERVE}" in nofile.fix[1]
    assert "raises its soft limit" in nofile.note  # soft 1024 < hard: the node raises it itself
    v3 = assess(SMALL, 10_000, 3)
    assert v3.per_process == 3334 and v3.limits[0].allows == 3 * (4096 - FD_RESERVE) and v3.ok


def test_conntrack_not_loaded_is_no_cap_and_loaded_is_one():
    v = assess(SMALL, 1000)
    ct = next(lim for lim in v.limits if lim.key == "conntrack")
    assert ct.reading == "not loaded" and ct.allows is None and ct.ok
    r = Readings(**{**SMALL.__dict__, "nofile_hard": 1 << 20, "conntrack_key": "net.netfilter.nf_conntrack_max",
                    "conntrack_max": 65536, "conntrack_count": 536})
    v = assess(r, 100_000)
    assert v.cap.key == "conntrack" and v.cap.allows == 65_000
    assert v.cap.fix[0] == "sysctl -w net.netfilter.nf_conntrack_max=100536"
    assert v.cap.fix[1].startswith("echo 'net.netfilter.nf_conntrack_max = 100536' >> /etc/sysctl.d/")


def test_memory_takes_the_cgroup_limit_when_it_leaves_less():
    per_conn = assess(SMALL).conn_bytes["total"]
    r = Readings(**{**SMALL.__dict__, "nofile_hard": 1 << 20, "cgroup_limit": 1 << 30, "cgroup_usage": 256 << 20})
    mem = next(lim for lim in assess(r, 100_000).limits if lim.key == "memory")
    assert mem.allows == ((768 << 20) - NODE_BASE_BYTES) // per_conn and "cgroup limit" in mem.reading and not mem.ok
    mem = next(lim for lim in assess(SMALL, 1000).limits if lim.key == "memory")
    assert mem.allows == ((6 << 30) - NODE_BASE_BYTES) // per_conn and mem.reading.startswith("MemAvailable")


def test_a_tie_names_the_open_file_limit_and_outgoing_only_settings_are_not_caps():
    per_conn = assess(SMALL).conn_bytes["total"]
    r = Readings(**{**SMALL.__dict__, "mem_available": (4096 - FD_RESERVE) * per_conn + NODE_BASE_BYTES})
    v = assess(r, 10_000)
    assert v.cap.key == "nofile"
    assert {lim.key for lim in v.limits if lim.allows == v.cap.allows} == {"nofile", "memory"}
    assert all("ip_local_port_range" not in lim.key and "tw_reuse" not in lim.key for lim in v.limits)
    assert any(n.startswith("net.ipv4.ip_local_port_range 32768 60999 (28,232 ports)") for n in v.not_caps)


def test_a_short_accept_queue_is_flagged_but_caps_nothing():
    r = Readings(**{**SMALL.__dict__, "nofile_hard": 1 << 20, "somaxconn": 128})
    v = assess(r, 1000)
    q = next(lim for lim in v.limits if lim.key == "net.core.somaxconn")
    assert not q.ok and q.allows is None and q.sysctl == "net.core.somaxconn" and not v.ok
    assert v.cap.key != "net.core.somaxconn"

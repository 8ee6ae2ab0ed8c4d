"""Process-level settings for the load generator: loopback-only targets, source addresses, limits, CPU pinning."""

from __future__ import annotations

import ipaddress
import os
import resource
from urllib.parse import urlsplit

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
# Ports per source address we are willing to use (the ephemeral range is ~28k on a default Linux).
CONNS_PER_SOURCE_IP = 16_000


class NotLoopback(ValueError):
    """A target or source address outside 127.0.0.0/8: the bench refuses to touch the network."""


def assert_loopback_host(host: str) -> str:
    """Return `host` if it is a literal IPv4 address in 127.0.0.0/8, else raise NotLoopback."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(f"bench targets must be literal 127.0.0.0/8 addresses, not {host!r}") from None
    if addr not in LOOPBACK:
        raise NotLoopback(f"bench targets must be in 127.0.0.0/8, not {host}")
    return host


def assert_loopback_url(url: str) -> str:
    """Return `url` if it is ws:// to a loopback address, else raise NotLoopback."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise NotLoopback(f"bench targets must be plain ws:// URLs on loopback, not {url!r}")
    assert_loopback_host(parts.hostname or "")
    return url


def source_ips(worker: int, count: int, block: int = 0) -> list[str]:
    """`count` distinct source addresses for one worker: 127.<16+block*16+worker>.x.y, never 127.0.0.1.

    Each source address has its own ephemeral port range, so many of them let one
    machine hold far more than 64k client sockets towards one server port.
    """
    second = 16 + block * 16 + worker
    if not 0 < second < 256:
        raise ValueError("too many workers for the source address plan")
    ips = []
    for i in range(count):
        third, fourth = divmod(i, 250)
        ips.append(f"127.{second}.{third}.{fourth + 1}")
    for ip in ips:
        assert_loopback_host(ip)
    return ips


def ips_for(conns: int, worker: int, block: int = 0, minimum: int = 4) -> list[str]:
    """Enough source addresses for `conns` connections from one worker."""
    need = max(minimum, -(-conns // CONNS_PER_SOURCE_IP))
    return source_ips(worker, need, block)


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file soft limit to the hard limit; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 20) if hard == resource.RLIM_INFINITY else hard


def pin(cpus: set[int] | None) -> None:
    """Restrict this process (and threads it starts later) to `cpus`; no-op when None."""
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


def cpu_plan(pin_enabled: bool = True) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-generator CPUs): the server alone on the first allowed CPU, the rest for the load."""
    allowed = sorted(os.sched_getaffinity(0))
    if not pin_enabled or len(allowed) < 2:
        return None, None
    return {allowed[0]}, set(allowed[1:])

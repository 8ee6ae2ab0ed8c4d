"""Exec a command with the open-file limit raised and the CPU affinity set (used to start servers).

    python -m bench.pinned [--cpus 0,1] -- COMMAND ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.loadgen.net import pin, raise_nofile


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cpus", default="", help="comma-separated CPU numbers (empty: no pinning)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command")
    raise_nofile()
    pin({int(c) for c in args.cpus.split(",") if c} or None)
    _die_with_parent()
    os.execvp(cmd[0], cmd)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the server when the bench that started it dies: a bench never leaves servers behind."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG survives execve
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])

"""Command line: `python -m gateway serve` runs a node; `token` mints a token with the configured secret;
`doctor` checks this machine's limits against a connection count."""

from __future__ import annotations

import argparse
import logging
import sys

from . import auth
from .config import ConfigError, load


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from .doctor import raise_open_files
    from .server import serve

    raise_open_files()  # one descriptor per connection: the hard limit, not a shell's soft default, should cap a node
    try:
        cfg = load(
            args.config,
            host=args.host,
            http_port=args.http_port,
            ws_port=args.ws_port,
            env=args.env,
            echo_endpoint=True if args.echo else None,
            coordinator=args.coordinator,
            redis_url=args.redis_url,
            data_dir=args.data_dir,
        )
    except ConfigError as e:
        print(f"chatgw: configuration refused: {e}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _workers(args, cfg)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .coordinator import Unavailable
    from .coordinator.embedded import StoreError

    try:
        uvloop.run(serve(cfg))
    except (StoreError, Unavailable) as e:
        print(f"chatgw: can't start: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a port in use, an address we can't bind
        print(f"chatgw: can't start: {e.strerror or e} ({cfg.host}, ws port {cfg.ws_port}, http port {cfg.http_port})",
              file=sys.stderr)
        return 1
    return 0


def _workers(args: argparse.Namespace, cfg) -> int:
    """N nodes on the same ports (SO_REUSEPORT: the kernel spreads connections), one per core."""
    import os
    import signal
    import subprocess

    if cfg.coordinator != "redis":
        print("chatgw: --workers > 1 needs --coordinator redis (nodes must share state)", file=sys.stderr)
        return 2
    if not cfg.ws_port or not cfg.http_port:
        print("chatgw: --workers > 1 needs fixed ports (every worker listens on the same ones)", file=sys.stderr)
        return 2
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            argv.append(a)
    procs = []
    for i in range(args.workers):
        env = dict(os.environ, GATEWAY_NODE_ID=f"{cfg.node_id}-w{i}")
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", *argv], env=env))

    def forward(sig, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # drain, stop, reload: each worker
        signal.signal(sig, forward)
    codes = [p.wait() for p in procs]
    return max(codes)


def _token(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"chatgw: configuration refused: {e}", file=sys.stderr)
        return 2
    if "jwt_secret" in cfg.generated:
        print("chatgw: no jwt_secret configured; a token would not match any running node", file=sys.stderr)
        return 2
    groups = args.groups.split(",") if args.groups else None
    print(auth.mint(cfg.jwt_secret, tenant=args.tenant, user=args.sub, role=args.role, ttl_s=args.ttl, groups=groups, capacity=args.capacity))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor

    return doctor.main(args.connections, args.processes, do_apply=args.apply, json_out=args.json,
                       proc_root=args.proc_root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chatgw", description="WebSocket gateway for live customer chat")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a node")
    s.add_argument("--config", help="TOML file (also GATEWAY_CONFIG)")
    s.add_argument("--host")
    s.add_argument("--http-port", type=int)
    s.add_argument("--ws-port", type=int)
    s.add_argument("--env", choices=["development", "production"])
    s.add_argument("--coordinator", choices=["embedded", "redis"])
    s.add_argument("--redis-url")
    s.add_argument("--data-dir", help="embedded: where the node keeps its state (default ./data; none: memory only)")
    s.add_argument("--echo", action="store_true", help="enable the /echo diagnostic endpoint")
    s.add_argument("--workers", type=int, default=1, help="run N nodes on the same ports (SO_REUSEPORT); needs redis")
    s.set_defaults(fn=_serve)
    t = sub.add_parser("token", help="mint a token with the configured secret")
    t.add_argument("--config")
    t.add_argument("--tenant", default="demo")
    t.add_argument("--sub", required=True)
    t.add_argument("--role", choices=auth.ROLES, default="visitor")
    t.add_argument("--groups")
    t.add_argument("--capacity", type=int)
    t.add_argument("--ttl", type=float, default=3600)
    t.set_defaults(fn=_token)
    d = sub.add_parser("doctor", help="check this machine's limits against a target connection count")
    d.add_argument("--connections", type=int, default=10_000, help="connections this machine should hold (default 10000)")
    d.add_argument("--processes", type=int, default=1,
                   help="nodes on this machine (default 1); each process has its own open-file limit")
    d.add_argument("--apply", action="store_true",
                   help="as root: write the sysctls below target and raise this process's soft open-file limit")
    d.add_argument("--json", action="store_true", help="print the verdict and readings as JSON")
    d.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)  # tests point it at a copy
    d.set_defaults(fn=_doctor)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

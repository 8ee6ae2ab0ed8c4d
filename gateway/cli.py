"""Command line: `python -m gateway serve` runs a node; `token` mints a token with the configured secret."""

from __future__ import annotations

import argparse
import logging
import sys

from . import auth
from .config import ConfigError, load


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from .server import serve

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
        )
    except ConfigError as e:
        print(f"chatgw: configuration refused: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(cfg))
    return 0


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
    s.add_argument("--echo", action="store_true", help="enable the /echo diagnostic endpoint")
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
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

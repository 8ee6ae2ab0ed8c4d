"""Instructions per relayed message, counted by valgrind's callgrind: a repeatable A/B figure.

    python -m bench.instructions [--messages 1000] [--pairs 4]

Starts the gateway under ``valgrind --tool=callgrind`` (embedded coordinator, bots
off), opens ``--pairs`` visitor/agent conversations, relays a warm-up, zeroes the
counters (``callgrind_control -z``), relays ``--messages`` per pair (one in flight per
pair: send, wait for the ack and the agent's copy), dumps the counters and prints the
user-space instructions per message. Kernel work (the socket syscalls) is not counted;
the figure is the same on a busy or an idle machine, so a change to the hot path can be
judged by it where the bench's rates are too noisy (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _text(env: dict) -> str:
    import orjson

    return orjson.dumps(env).decode()  # a str: websockets sends it as a text frame (JSON), not binary (msgpack)


def _launch(out_dir: str) -> tuple[subprocess.Popen[str], dict[str, int], str]:
    sys.path.insert(0, str(ROOT))
    from gateway.server import banner_ports

    secret = secrets.token_urlsafe(32)
    env = dict(os.environ, GATEWAY_JWT_SECRET=secret, GATEWAY_ADMIN_TOKEN=secrets.token_urlsafe(32),
               GATEWAY_HTTP_PORT="0", GATEWAY_WS_PORT="0", GATEWAY_HOST="127.0.0.1", GATEWAY_LOG_LEVEL="warning",
               PYTHONUNBUFFERED="1", GATEWAY_BOTS_ENABLED="false", GATEWAY_RATE_PER_S="1e9",
               GATEWAY_RATE_BURST="1e9", GATEWAY_HEARTBEAT_S="600",
               GATEWAY_DATA_DIR="none")  # memory only, as every figure before the store; SQLite's own cost: bench.store_schema
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p",
                             sys.executable, "-m", "gateway", "serve"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports: dict[str, int] = {}
    lines: list[str] = []
    while len(ports) < 2:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the gateway did not start under valgrind:\n" + "".join(lines[-20:]))
        lines.append(line)
        ports.update(banner_ports(line))
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, ports, secret


async def _relay(port: int, secret: str, pairs: int, warmup: int, messages: int, pid: int) -> None:
    import orjson
    import websockets

    from gateway import auth

    async def connect(role: str, user: str, tenant: str):
        token = auth.mint(secret, tenant=tenant, user=user, role=role)
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?v=1&token={token}", ping_interval=None)
        return ws

    async def until(ws, pred):
        while True:
            data = orjson.loads(await ws.recv())
            for env in data if isinstance(data, list) else [data]:
                if pred(env):
                    return env

    async def pair(i: int):
        agent = await connect("agent", f"a{i}", f"t{i}")
        await agent.send(_text({"t": "status", "status": "online"}))
        visitor = await connect("visitor", f"v{i}", f"t{i}")
        await visitor.send(_text({"t": "open"}))
        conv = (await until(visitor, lambda e: e["t"] == "conv"))["conv"]
        await until(agent, lambda e: e["t"] == "assigned")
        return visitor, agent, conv

    async def run(visitor, agent, conv: str, n: int, tag: str) -> None:
        for k in range(n):
            cid = f"{tag}{k}"
            await visitor.send(_text({"t": "msg", "conv": conv, "id": cid, "text": "x" * 64}))
            await until(visitor, lambda e, cid=cid: e["t"] == "ack" and e["id"] == cid)
            await until(agent, lambda e, cid=cid: e["t"] == "msg" and e["id"] == cid)

    ps = [await pair(i) for i in range(pairs)]
    await asyncio.gather(*(run(v, a, c, warmup, "w") for v, a, c in ps))
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    await asyncio.gather(*(run(v, a, c, messages, "m") for v, a, c in ps))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000, help="messages per pair, counted")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=200, help="messages per pair before counting")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as out_dir:
        proc, ports, secret = _launch(out_dir)
        try:
            asyncio.run(_relay(ports["websocket"], secret, args.pairs, args.warmup, args.messages, proc.pid))
        finally:
            proc.terminate()
            proc.wait(60)
        dump = sorted(glob.glob(f"{out_dir}/callgrind.{proc.pid}.*"))[0]
        total = next(int(line.split()[1]) for line in open(dump) if line.startswith(("summary:", "totals:")))
    n = args.messages * args.pairs
    print(f"{total / n:,.0f} instructions per relayed message (user space; {n} messages, {args.pairs} pairs, "
          f"one in flight per pair)")


if __name__ == "__main__":
    main()

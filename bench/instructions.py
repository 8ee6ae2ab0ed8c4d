"""Instructions per message, counted by valgrind's callgrind: a repeatable A/B figure.

    python -m bench.instructions [--messages 1000] [--pairs 4] [--targets relay,echo,picows]

Each target runs under ``valgrind --tool=callgrind`` and is driven the same way: ``--pairs``
clients (for the relay, visitor/agent conversations) each keep one message in flight, a warm-up,
then the counters are zeroed (``callgrind_control -z``), ``--messages`` per pair are sent, the
counters dumped, and the user-space instructions per message printed:

- ``relay``: the gateway (embedded coordinator, memory only, bots off): send a 64-byte ``msg``,
  wait for its ``ack`` and the agent's copy (two frames out per frame in);
- ``echo``: the gateway's own ``/echo`` (the same listener, no chat core): a 64-byte text frame
  and its echo;
- ``picows``: the bare picows echo server (bench/peers/picows_echo.py), same frames;
- ``relay_store``: the relay on the embedded default, its SQLite store on (a temporary data dir);
- ``relay_cluster``: two gateway nodes over one redis-server (on a free port, no persistence),
  visitors on the first, agents on the second, so every message crosses nodes; both nodes run
  under callgrind and their instructions are added (Redis's own are not counted).

The last line gives relay / picows (issue 14's bound: 2.5x, since a relay writes two frames for
the echo's one). Kernel work (the socket syscalls) is not counted; the figures are the same on a
busy or an idle machine, so a change to the hot path can be judged by them where the bench's rates
are too noisy (bench/README.md).
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


def _launch(out_dir: str, target: str, secret: str | None = None,
            extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int, str]:
    """Start `target` under callgrind; (process, WebSocket port, JWT secret). `extra`: more environment."""
    sys.path.insert(0, str(ROOT))
    from gateway.server import banner_ports

    secret = secret or secrets.token_urlsafe(32)
    env = dict(os.environ, GATEWAY_JWT_SECRET=secret, GATEWAY_ADMIN_TOKEN=secrets.token_urlsafe(32),
               GATEWAY_HTTP_PORT="0", GATEWAY_WS_PORT="0", GATEWAY_HOST="127.0.0.1", GATEWAY_LOG_LEVEL="warning",
               PYTHONUNBUFFERED="1", GATEWAY_BOTS_ENABLED="false", GATEWAY_RATE_PER_S="1e9",
               GATEWAY_RATE_BURST="1e9", GATEWAY_HEARTBEAT_S="600", GATEWAY_ECHO_ENDPOINT="true",
               GATEWAY_DRAIN_TIMEOUT_S="0", GATEWAY_DATA_DIR="none")  # memory only unless `extra` says; SQLite alone: bench.store_schema
    env.update(extra or {})
    cmd = [sys.executable, "-m", "bench.peers.picows_echo", "--port", "0"] if target == "picows" else \
        [sys.executable, "-m", "gateway", "serve"]
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p", *cmd],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports: dict[str, int] = {}
    lines: list[str] = []
    while "websocket" not in ports or (target != "picows" and len(ports) < 2):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{target} did not start under valgrind:\n" + "".join(lines[-20:]))
        lines.append(line)
        if target == "picows" and line.startswith("listening "):
            ports["websocket"] = int(line.split()[1])
        else:
            ports.update(banner_ports(line))
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, ports["websocket"], secret


async def _drive(port: int, path: str, secret: str, pairs: int, warmup: int, messages: int, pid: int,
                 agent_port: int | None = None, agent_pid: int | None = None) -> None:
    """`agent_port`, `agent_pid`: the agents' node when it is another (relay_cluster)."""
    import orjson
    import websockets

    from gateway import auth

    pids = [str(pid)] if agent_pid is None else [str(pid), str(agent_pid)]

    async def connect(role: str, user: str, tenant: str):
        token = auth.mint(secret, tenant=tenant, user=user, role=role)
        at = agent_port if role == "agent" and agent_port else port
        ws = await websockets.connect(f"ws://127.0.0.1:{at}/ws?v=1&token={token}", ping_interval=None)
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

    if path != "/ws":  # an echo: each client sends a frame and waits for it back
        clients = [await websockets.connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None) for _ in range(pairs)]

        async def echo(ws, n: int) -> None:
            for k in range(n):
                frame = f"{k:08d}" + "x" * 56  # 64 bytes, as the relay's text
                await ws.send(frame)
                assert await ws.recv() == frame

        await asyncio.gather(*(echo(ws, warmup) for ws in clients))
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        await asyncio.gather(*(echo(ws, messages) for ws in clients))
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        return

    ps = [await pair(i) for i in range(pairs)]
    await asyncio.gather(*(run(v, a, c, warmup, "w") for v, a, c in ps))
    for p in pids:
        subprocess.run(["callgrind_control", "-z", p], check=True, capture_output=True)
    await asyncio.gather(*(run(v, a, c, messages, "m") for v, a, c in ps))
    for p in pids:
        subprocess.run(["callgrind_control", "-d", p], check=True, capture_output=True)


TARGETS = {"relay": ("/ws", "relayed message (gateway)"), "echo": ("/echo", "echoed message (gateway /echo)"),
           "picows": ("/", "echoed message (bare picows)"),
           "relay_store": ("/ws", "relayed message (gateway, SQLite store on)"),
           "relay_cluster": ("/ws", "relayed message (two gateway nodes over Redis, both counted)")}


def _total(out_dir: str, pid: int) -> int:
    dump = sorted(glob.glob(f"{out_dir}/callgrind.{pid}.*"))[0]
    return next(int(line.split()[1]) for line in open(dump) if line.startswith(("summary:", "totals:")))


def _redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of its own on a free port, no persistence."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)


def _measure_cluster(out_dir: str, pairs: int, warmup: int, messages: int, keep: str | None) -> float:
    redis, redis_port = _redis(out_dir)
    secret = secrets.token_urlsafe(32)
    cluster = {"GATEWAY_COORDINATOR": "redis", "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    procs = []
    try:
        for i in range(2):
            procs.append(_launch(out_dir, "relay", secret, {**cluster, "GATEWAY_NODE_ID": f"instr-{i}"}))
        (a, a_port, _), (b, b_port, _) = procs
        asyncio.run(_drive(a_port, "/ws", secret, pairs, warmup, messages, a.pid, b_port, b.pid))
    finally:
        for proc, _, _ in procs:
            proc.terminate()
            proc.wait(60)
        redis.terminate()
        redis.wait(10)
    if keep:
        import shutil

        Path(keep).mkdir(parents=True, exist_ok=True)
        for n, (proc, _, _) in enumerate(procs):
            shutil.copy(sorted(glob.glob(f"{out_dir}/callgrind.{proc.pid}.*"))[0], Path(keep) / f"callgrind.relay_cluster.{n}")
    return sum(_total(out_dir, proc.pid) for proc, _, _ in procs) / (messages * pairs)


def measure(target: str, pairs: int, warmup: int, messages: int, keep: str | None = None) -> float:
    """User-space instructions per message for `target` (a key of TARGETS); `keep`: a folder to copy
    the callgrind dump into (for `callgrind_annotate`)."""
    with tempfile.TemporaryDirectory() as out_dir:
        if target == "relay_cluster":
            return _measure_cluster(out_dir, pairs, warmup, messages, keep)
        extra = {"GATEWAY_DATA_DIR": str(Path(out_dir) / "data")} if target == "relay_store" else None
        proc, port, secret = _launch(out_dir, target, extra=extra)
        try:
            asyncio.run(_drive(port, TARGETS[target][0], secret, pairs, warmup, messages, proc.pid))
        finally:
            proc.terminate()
            proc.wait(60)
        dump = sorted(glob.glob(f"{out_dir}/callgrind.{proc.pid}.*"))[0]
        total = _total(out_dir, proc.pid)
        if keep:
            import shutil

            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(dump, Path(keep) / f"callgrind.{target}")
    return total / (messages * pairs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000, help="messages per pair, counted")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=200, help="messages per pair before counting")
    ap.add_argument("--targets", default="relay,echo,picows", help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--keep", help="copy each callgrind dump here (callgrind.TARGET), for callgrind_annotate")
    args = ap.parse_args(argv)
    got = {}
    for target in args.targets.split(","):
        got[target] = measure(target, args.pairs, args.warmup, args.messages, args.keep)
        print(f"{got[target]:,.0f} instructions per {TARGETS[target][1]} (user space; {args.messages * args.pairs} "
              f"messages, {args.pairs} clients, one in flight each)", flush=True)
    if "relay_cluster" in got:
        for base in ("relay_store", "relay"):
            if base in got:
                print(f"relay_cluster / {base}: {got['relay_cluster'] / got[base]:.2f}x")
    if "relay" in got and "picows" in got:
        print(f"relay / picows echo: {got['relay'] / got['picows']:.2f}x"
              + (f"; gateway /echo / picows echo: {got['echo'] / got['picows']:.2f}x" if "echo" in got else ""))


if __name__ == "__main__":
    main()

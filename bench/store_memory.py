"""An embedded node's memory after many conversations, most of them closed (docs/store.md, steps 8-9).

    python -m bench.store_memory [--conversations 100000] [--messages 10] [--visitors 50] [--left-open 500]

Starts `python -m gateway serve` with its store in a fresh data directory (closed conversations
leave memory `--closed-keep-s` after they close, 600 s as the node's default, and beyond the
newest 10,000 at once), pinned to CPU 0, and drives it from this process over `websockets`: each of `--visitors`
visitors opens a conversation, sends `--messages` without waiting, waits for their acks, closes
it and opens the next, until `--conversations` are done; `--left-open` more stay open at the end
(those stay in memory). Prints the node's RSS (VmRSS) idle at start, after the traffic, and after
one eviction sweep, with the database's size on disk, the rate, the bytes of log entries the node
keeps in memory at the end against `--memory-budget-mb` (its budget), and whether the RSS after the
sweep is within that budget plus the idle RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import deque
from pathlib import Path

import websockets

from bench import servers
from gateway import auth


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def visitor(url: str, secret: str, name: str, convs: int, messages: int, leave_open: bool) -> int:
    """Open, chat, close, `convs` times (the last one left open if `leave_open`); messages acked."""
    token = auth.mint(secret, tenant="bench", user=name, role="visitor")
    acked = 0
    async with websockets.connect(f"{url}?v=1&token={token}", max_size=None, ping_interval=None) as ws:
        pending: deque[dict] = deque()  # envelopes read (a frame may batch several) and not yet looked at

        async def until(kind: str, **match: object) -> dict:
            while True:
                while pending:
                    env = pending.popleft()
                    if env.get("t") == kind and all(env.get(k) == v for k, v in match.items()):
                        return env
                data = json.loads(await ws.recv())
                pending.extend(data if isinstance(data, list) else [data])

        await until("welcome")
        for i in range(convs):
            await ws.send(json.dumps({"t": "open", "rid": f"o{i}"}))
            conv = (await until("conv", rid=f"o{i}"))["conv"]
            for m in range(messages):
                await ws.send(json.dumps({"t": "msg", "conv": conv, "id": f"{i}.{m}", "text": f"message {m} of {i}"}))
            for m in range(messages):
                await until("ack", id=f"{i}.{m}")
            acked += messages
            if leave_open and i == convs - 1:
                break
            await ws.send(json.dumps({"t": "close", "conv": conv}))
            await until("event", conv=conv, ev="closed")
    return acked


async def run(args: argparse.Namespace) -> dict:
    extra = {"GATEWAY_CLOSED_KEEP_S": str(args.closed_keep_s), "GATEWAY_RATE_PER_S": "1000000000",
             "GATEWAY_RATE_BURST": "1000000000", "GATEWAY_MEMORY_BUDGET_MB": str(args.memory_budget_mb)}
    if args.memory_only:
        extra["GATEWAY_DATA_DIR"] = "none"
    node = servers.start("gateway", {"heartbeat_s": 60.0}, {0}, extra)
    try:
        url = node.url
        secret = node.secret
        await asyncio.sleep(1.0)  # let the node settle before the idle figure
        idle = rss_kb(node.pid)
        per = args.conversations // args.visitors
        t0 = time.monotonic()
        done = await asyncio.gather(*(visitor(url, secret, f"v{i}", per, args.messages, False)
                                      for i in range(args.visitors)))
        opened = await asyncio.gather(*(visitor(url, secret, f"o{i}", 1, args.messages, True)
                                        for i in range(args.left_open)))
        took = time.monotonic() - t0
        after = rss_kb(node.pid)
        await asyncio.sleep(31)  # one eviction sweep (every 30 s at most)
        settled = rss_kb(node.pid)
        coord = ((node.admin_stats() or {}).get("hub") or {}).get("coordinator") or {}
        db = sum(p.stat().st_size for p in Path(node.data_dir or ".").glob("chatgw.sqlite3*"))
        return {"conversations": per * args.visitors + args.left_open, "left_open": args.left_open,
                "messages_acked": sum(done) + sum(opened), "seconds": round(took, 1),
                "msgs_per_s": round((sum(done) + sum(opened)) / took), "rss_idle_kb": idle,
                "rss_after_traffic_kb": after, "rss_after_closed_left_kb": settled,
                "rss_growth_kb": settled - idle, "db_bytes": db, "closed_keep_s": args.closed_keep_s,
                "store": not args.memory_only, "memory_budget_mb": args.memory_budget_mb,
                "log_bytes_at_end": coord.get("log_bytes"), "budget_sheds": coord.get("budget_sheds"),
                "within_budget_plus_idle": settled <= idle + (args.memory_budget_mb << 10)}
    finally:
        node.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=100_000)
    p.add_argument("--messages", type=int, default=10)
    p.add_argument("--visitors", type=int, default=50)
    p.add_argument("--left-open", type=int, default=500)
    p.add_argument("--closed-keep-s", type=float, default=600.0,
                   help="how long a closed conversation stays in memory (the node's default; at most 10,000 stay)")
    p.add_argument("--memory-budget-mb", type=int, default=256,
                   help="the node's budget for log entries in memory (its default: 256)")
    p.add_argument("--memory-only", action="store_true", help="--data-dir none: the same traffic without a store")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

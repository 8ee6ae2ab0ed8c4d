"""Chaos run: three nodes on one real Redis, a node SIGKILLed and Redis restarted under traffic.

    python -m bench.chaos [--conversations 6] [--messages 300] [--seed 1]

Each conversation has its visitor and its agent on different nodes. Every party sends its
messages one at a time, each with its own client id, and retries the same id after an
`unavailable` error, a lost answer or a lost connection (reconnecting to a live node and
resuming from the last seq it saw). When a third of all messages are acked, one node is
killed with SIGKILL; when each party has about two messages left, Redis is stopped, and
started again (AOF on, fsync always, so what it acked survives) once the parties have been
refused a few times. So the last messages are appended just after Redis returns, while the
nodes re-subscribe, and then the conversations go quiet: nothing later heals a hole. At the end every party resumes once more, and the log
is read back. Printed counts:

- sent (client ids), acked, delivered (entries received over all connections);
- lost: acked ids missing from the log; duplicated: ids in the log more than once;
- out of order: a connection that received a seq at or below one it had already received;
- undelivered: acked entries a party's connections had not received live, without a resume,
  10 s after the traffic stopped (a hole that only a resume would close);
- gaps: log entries a party never received on any of its connections after its last resume;
- double answers: requests (one rid per attempt) answered more than once.

The test suite runs a short version (tests/test_chaos.py); this module is also the longer one.
Nothing here stands in for a part of the gateway: nodes are `python -m gateway serve`
processes, Redis is redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import websockets

from bench import servers

ANSWER_TIMEOUT_S = 5.0


def start_redis(workdir: Path, port: int = 0) -> servers.Aux:
    """redis-server with AOF (fsync always); started again on the same `port` and data by passing it."""
    port = port or servers.free_port()
    return servers.start_aux("redis", ["redis-server", "--port", str(port), "--bind", servers.HOST, "--save", "",
                                       "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir),
                                       "--protected-mode", "no", "--daemonize", "no", "--logfile", ""],
                             None, r"Ready to accept connections", port=port)


def start_node(redis_url: str, secret: str) -> servers.Running:
    """A gateway node on the Redis coordinator, beating every 0.2 s (reaped 1 s after a SIGKILL)."""
    return servers.start("gateway", {"heartbeat_s": 20.0}, None, {
        "GATEWAY_COORDINATOR": "redis", "GATEWAY_REDIS_URL": redis_url, "GATEWAY_JWT_SECRET": secret,
        "GATEWAY_NODE_HEARTBEAT_S": "0.2", "GATEWAY_NODE_TTL_S": "1.0", "GATEWAY_RATE_PER_S": "1000",
        "GATEWAY_RATE_BURST": "1000"})


@dataclass
class Counts:
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    undelivered: int = 0
    gaps: int = 0
    double_answers: int = 0
    retries: int = 0
    reconnects: int = 0

    def line(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.__dict__.items())


class Lost(Exception):
    """The connection went away (a node killed, a close): reconnect and resume."""


class Party:
    """A visitor or an agent: one conversation, reconnecting to live nodes, retrying with the same ids."""

    def __init__(self, run: Chaos, name: str, role: str, group: str, home: int):
        self.run, self.name, self.role, self.group, self.home = run, name, role, group, home
        self.conv: str | None = None
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # rid -> its answer
        self.answers: dict[str, int] = {}  # rid -> answers received
        self.connections: list[list[int]] = []  # seqs of the conversation received, per connection
        self.acked: dict[str, int] = {}  # client id -> seq
        self.ids: list[str] = []
        self.assigned = asyncio.Event()
        self._rids = 0

    @property
    def last_seq(self) -> int:
        return max((s for c in self.connections for s in c), default=0)

    def _rid(self, what: str) -> str:
        self._rids += 1
        return f"{self.name}:{what}:{self._rids}"

    async def connect(self) -> None:
        from gateway import auth

        nodes = self.run.nodes
        for k in range(len(nodes)):
            node = nodes[(self.home + k) % len(nodes)]
            if not node.alive():
                continue
            token = auth.mint(self.run.secret, tenant=self.run.tenant, user=self.name, role=self.role, groups=[self.group])
            try:
                self.ws = await websockets.connect(f"{node.url}?v=1&token={token}", max_size=None)
            except (OSError, websockets.InvalidHandshake):
                continue
            self.home = (self.home + k) % len(nodes)
            self.connections.append([])
            welcome = orjson.loads(await self.ws.recv())
            if isinstance(welcome, list):
                welcome = welcome[0]
            for c in welcome.get("convs", []):
                self.conv = self.conv or c["conv"]
            self.reader = asyncio.create_task(self._read(self.ws, self.connections[-1]))
            return
        raise RuntimeError("no live node to connect to")

    async def _read(self, ws: Any, seen: list[int]) -> None:
        try:
            async for data in ws:
                env = orjson.loads(data)
                for e in env if isinstance(env, list) else [env]:
                    self._on(e, seen)
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(Lost())

    def _on(self, e: dict[str, Any], seen: list[int]) -> None:
        t = e.get("t")
        if t in ("msg", "event") and e.get("conv") == self.conv:
            self.run.counts.delivered += 1
            if seen and e["seq"] <= seen[-1]:
                self.run.counts.out_of_order += 1
            seen.append(e["seq"])
        elif t == "assigned":
            self.conv = e["conv"]
            if not seen:  # live entries start after it; the ones up to it came as its `history`
                seen.append(e["seq"])
            self.assigned.set()
        rid = e.get("rid")
        if rid is not None and t != "msg":
            self.answers[rid] = self.answers.get(rid, 0) + 1
            fut = self.waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(e)

    async def request(self, env: dict[str, Any], what: str) -> dict[str, Any]:
        rid = env["rid"] = self._rid(what)
        fut = self.waiting[rid] = asyncio.get_running_loop().create_future()
        try:
            await self.ws.send(orjson.dumps(env).decode())
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return await fut
        except (websockets.ConnectionClosed, TimeoutError) as e:
            raise Lost() from e
        finally:
            self.waiting.pop(rid, None)

    async def reconnect(self) -> None:
        self.run.counts.reconnects += 1
        with contextlib.suppress(Exception):
            await self.ws.close()
        while True:
            try:
                await self.connect()
                await self.resume()
                return
            except (Lost, RuntimeError, OSError):
                await asyncio.sleep(0.1)  # pacing a client's reconnects, as any client does

    async def resume(self) -> None:
        if self.conv is None:
            return
        while True:
            answer = await self.request({"t": "resume", "conv": self.conv, "after": self.last_seq}, "resume")
            if answer["t"] == "resumed":
                return
            await asyncio.sleep(0.1)  # `unavailable`: Redis is away; try again

    async def send_all(self, count: int) -> None:
        for k in range(count):
            cid = f"{self.name}-{k}"
            self.ids.append(cid)
            self.run.counts.sent += 1
            while True:
                try:
                    answer = await self.request({"t": "msg", "conv": self.conv, "id": cid, "text": f"{cid} text"}, "msg")
                except Lost:
                    await self.reconnect()
                    self.run.counts.retries += 1
                    continue
                if answer["t"] == "ack":
                    self.acked[cid] = answer["seq"]
                    self.run.on_acked()
                    break
                if answer.get("code") != "unavailable":
                    raise RuntimeError(f"{self.name}: {cid} refused: {answer}")
                self.run.counts.retries += 1
                self.run.on_refused()
                await asyncio.sleep(0.05)  # `unavailable`: a client's pause before it retries the same id


class Chaos:
    def __init__(self, conversations: int, messages: int, seed: int):
        self.conversations, self.messages = conversations, messages
        self.rng = random.Random(seed)
        self.secret = secrets.token_urlsafe(32)
        self.tenant = f"chaos{seed}"
        self.counts = Counts()
        self.nodes: list[servers.Running] = []
        self.redis: servers.Aux | None = None
        self._redis_dir: Path | None = None
        self.total = 0
        self.events: list[str] = []
        self._killed = self._stopped = self._restarted = False
        self._refused_at_stop = 0

    def on_acked(self) -> None:
        self.counts.acked += 1
        if not self._killed and self.counts.acked * 3 >= self.total:
            self._killed = True
            victim = self.nodes[2]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            self.events.append(f"SIGKILL node 2 after {self.counts.acked} acks")
        elif not self._stopped and self.counts.acked >= self.total - 2 * self.total // self.messages:
            self._stopped = True
            self._refused_at_stop = self.counts.retries
            self.redis.stop()
            self.events.append(f"Redis stopped after {self.counts.acked} acks")

    def on_refused(self) -> None:
        if self._stopped and not self._restarted and self.counts.retries - self._refused_at_stop >= self.conversations * 4:
            self._restarted = True
            self.redis = start_redis(self._redis_dir, self.redis.port)
            self.events.append(f"started again after {self.counts.retries - self._refused_at_stop} refusals")

    async def run(self) -> Counts:
        with tempfile.TemporaryDirectory(prefix="chatgw-chaos-") as tmp:
            self._redis_dir = Path(tmp)
            self.redis = start_redis(self._redis_dir)
            try:
                url = f"redis://{servers.HOST}:{self.redis.port}/0"
                self.nodes = [start_node(url, self.secret) for _ in range(3)]
                await self._traffic()
            finally:
                for n in self.nodes:
                    n.stop()
                self.redis.stop()
        return self.counts

    async def _traffic(self) -> None:
        parties: list[Party] = []
        for i in range(self.conversations):
            group = f"g{i}"
            agent = Party(self, f"agent{i}", "agent", group, (i + 1) % 3)
            visitor = Party(self, f"visitor{i}", "visitor", group, i % 3)
            await agent.connect()
            await agent.request({"t": "status", "status": "online", "capacity": 1}, "status")
            await visitor.connect()
            visitor.conv = (await visitor.request({"t": "open", "group": group}, "open"))["conv"]
            await agent.assigned.wait()
            parties += [visitor, agent]
        self.total = len(parties) * self.messages
        await asyncio.gather(*(p.send_all(self.messages) for p in parties))
        self.counts.undelivered = await self._live_holes(parties)
        for p in parties:  # a last resume on the connection each party holds now
            while True:
                try:
                    await p.resume()
                    break
                except Lost:
                    await p.reconnect()
        await self._check(parties)
        for p in parties:
            with contextlib.suppress(Exception):
                await p.ws.close()

    async def _live_holes(self, parties: list[Party], deadline_s: float = 10.0) -> int:
        """Acked entries some party has not received live (no resume) once delivery has settled."""
        last: dict[str, int] = {}
        for p in parties:
            last[p.conv] = max([last.get(p.conv, 0), *p.acked.values()])

        def holes() -> int:
            n = 0
            for p in parties:
                seen = {s for c in p.connections for s in c}
                first = min((c[0] for c in p.connections if c), default=1)
                n += sum(1 for s in range(first, last[p.conv] + 1) if s not in seen)
            return n

        deadline = time.monotonic() + deadline_s
        while holes() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling for delivery to settle, with a deadline
        return holes()

    async def _check(self, parties: list[Party]) -> None:
        by_conv: dict[str, list[Party]] = {}
        for p in parties:
            by_conv.setdefault(p.conv, []).append(p)
        reader = parties[0]
        for conv, members in by_conv.items():
            log = await self._read_log(reader, conv, members)
            ids: dict[tuple[str, str], int] = {}
            for e in log:
                if e["t"] == "msg":
                    ids[(e["from"], e["id"])] = ids.get((e["from"], e["id"]), 0) + 1
            self.counts.duplicated += sum(n - 1 for n in ids.values() if n > 1)
            for p in members:
                self.counts.lost += sum(1 for cid in p.acked if (p.name, cid) not in ids)
                seen = {s for c in p.connections for s in c}
                first_seen = min((c[0] for c in p.connections if c), default=1)
                self.counts.gaps += sum(1 for e in log if e["seq"] >= first_seen and e["seq"] not in seen)
        self.counts.double_answers = sum(1 for p in parties for n in p.answers.values() if n > 1)

    async def _read_log(self, reader: Party, conv: str, members: list[Party]) -> list[dict[str, Any]]:
        """The whole log of `conv`, read back through a participant's history requests."""
        member = members[0]
        entries: list[dict[str, Any]] = []
        before = None
        while True:
            env: dict[str, Any] = {"t": "history", "conv": conv, "limit": 100}
            if before is not None:
                env["before"] = before
            page = await member.request(env, "history")
            if page["t"] != "history":
                await asyncio.sleep(0.1)
                continue
            entries = page["msgs"] + entries
            if not page["msgs"] or page["msgs"][0]["seq"] <= page["first"]:
                return entries
            before = page["msgs"][0]["seq"]


async def main_async(args: argparse.Namespace) -> Counts:
    chaos = Chaos(args.conversations, args.messages, args.seed)
    t0 = time.monotonic()
    counts = await chaos.run()
    print(f"chaos: {args.conversations} conversations x 2 parties x {args.messages} messages, "
          f"3 nodes, 1 Redis; {'; '.join(chaos.events)}; {time.monotonic() - t0:.1f} s")
    print(counts.line())
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=6)
    p.add_argument("--messages", type=int, default=300, help="per party")
    p.add_argument("--seed", type=int, default=1)
    counts = asyncio.run(main_async(p.parse_args()))
    bad = counts.lost + counts.duplicated + counts.out_of_order + counts.undelivered + counts.gaps + counts.double_answers
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

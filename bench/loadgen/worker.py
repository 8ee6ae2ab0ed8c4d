"""One load-generator process: its own uvloop, its own source addresses, commands from the coordinator.

The coordinator sends plain dicts over a pipe (`op` names the command); the
worker answers each with a dict. Commands run one at a time; each carries its
own deadline, so a worker never waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any

import uvloop
from picows import ws_connect

from gateway import auth

from .clients import TEXT, BotClient, BotLoad, ChatClient, Client, EchoClient, Pair
from .histogram import pack
from .net import assert_loopback_url, ips_for, pin, raise_nofile
from .state import Flow, WorkerState, now_ns

CLIENT_READ_BUFFER = 4096
CLIENT_MAX_FRAME = 1 << 20


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.state = WorkerState(index)
        self.groups: dict[str, list[Client]] = {}
        self._users = itertools.count()
        self.left: set[int] = set()  # ids of queue visitors that closed their conversation
        self.bot = BotLoad()

    async def dispatch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        fn = getattr(self, "op_" + cmd["op"], None)
        if fn is None:
            raise ValueError(f"unknown op {cmd['op']!r}")
        return await fn(cmd)

    # connections

    def _factory(self, cmd: dict[str, Any]) -> tuple[Any, str]:
        url = assert_loopback_url(cmd["url"])
        st = self.state
        if cmd["kind"] == "echo":
            return (lambda: EchoClient(st)), url
        role = cmd["role"]
        user = cmd["user"] if cmd.get("same_user") else f"{cmd['user']}-w{self.index}-{next(self._users)}"
        claims: dict[str, Any] = {}
        if cmd.get("capacity") is not None:
            claims["capacity"] = cmd["capacity"]
        if cmd.get("groups"):
            claims["groups"] = cmd["groups"]
        token = auth.mint(cmd["secret"], tenant=cmd["tenant"], user=user, role=role, **claims)
        if cmd.get("client") == "bot":
            bot = self.bot
            return (lambda: BotClient(st, user, role, bot)), f"{url}?v=1&token={token}"
        return (lambda: ChatClient(st, user, role)), f"{url}?v=1&token={token}"

    async def _connect(self, cmd: dict[str, Any], ip: str, timeout: float) -> Client:
        factory, url = self._factory(cmd)
        _, client = await asyncio.wait_for(
            ws_connect(factory, url, local_addr=(ip, 0), read_buffer_init_size=CLIENT_READ_BUFFER,
                       max_frame_size=CLIENT_MAX_FRAME, websocket_handshake_timeout=timeout),
            timeout,
        )
        try:
            await asyncio.wait_for(asyncio.shield(client.ready), timeout)
        except BaseException:
            if client.transport is not None:
                client.transport.disconnect(False)
            raise
        return client

    async def op_open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open `n` connections with at most `conc` handshakes in flight; stop at the deadline."""
        loop = asyncio.get_running_loop()
        n, timeout = cmd["n"], cmd.get("timeout", 10.0)
        made = self.groups.setdefault(cmd["group"], [])
        ips = ips_for(len(made) + n, self.index, cmd.get("ip_block", 0))
        base = len(made)
        errors: Counter[str] = Counter()
        first_error: dict[str, str] = {}
        counter = itertools.count()
        deadline = loop.time() + cmd.get("deadline_s", 60.0)

        async def runner() -> None:
            while True:
                i = next(counter)
                if i >= n or loop.time() > deadline:
                    return
                try:
                    made.append(await self._connect(cmd, ips[(base + i) % len(ips)], timeout))
                except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                    errors[type(e).__name__] += 1
                    first_error.setdefault(type(e).__name__, str(e)[:200])

        t0 = time.perf_counter()
        await asyncio.gather(*(runner() for _ in range(max(1, min(cmd.get("conc", 100), n)))))
        elapsed = time.perf_counter() - t0
        return {"opened": len(made) - base, "failed": sum(errors.values()), "errors": dict(errors),
                "elapsed_s": elapsed, "total": len(made), "source_ips": len(ips), "first_error": first_error}

    async def op_alive(self, cmd: dict[str, Any]) -> dict[str, Any]:
        clients = self.groups.get(cmd["group"], [])
        return {"alive": sum(1 for c in clients if not c.done.done()), "total": len(clients)}

    async def op_close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Close a group cleanly: close frame, wait for the server's, then the socket; abort stragglers."""
        clients = self.groups.pop(cmd["group"], [])
        dropped = sum(1 for c in clients if c.done.done())
        t0 = time.perf_counter()
        for c in clients:
            c.close()
        pending = [c.done for c in clients if not c.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=cmd.get("timeout", 10.0))
        forced = 0
        for c in clients:
            if not c.done.done():
                forced += 1
                c.transport.disconnect(False)
        clean = sum(1 for c in clients if c.clean)
        if cmd.get("reset_flows"):
            self.state.flows = []
            self.state.pairs.clear()
            self.left.clear()
        return {"closed": len(clients), "clean": clean, "dropped_before_close": dropped, "forced": forced,
                "elapsed_s": time.perf_counter() - t0}

    # gateway setup

    async def op_agents_online(self, cmd: dict[str, Any]) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(c.request({"t": "status", "status": "online", "capacity": cmd["capacity"], "rid": "s"}, "status", cmd["timeout"])
              for c in self.groups.get(cmd["group"], [])),
            return_exceptions=True,
        )
        ok = sum(1 for r in replies if isinstance(r, dict) and r.get("t") == "status")
        return {"online": ok, "failed": len(replies) - ok}

    async def op_visitors_open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Each visitor of the group opens a conversation; returns how many were assigned or queued."""
        sem = asyncio.Semaphore(cmd.get("conc", 50))
        states: Counter[str] = Counter()
        convs: list[str] = []
        limit = cmd.get("limit")
        clients = self.groups.get(cmd["group"], [])[: limit if limit is not None else None]

        async def one(c: ChatClient) -> None:
            async with sem:
                req: dict[str, Any] = {"t": "open", "rid": "o"}
                if cmd.get("conv_group"):
                    req["group"] = cmd["conv_group"]
                try:
                    env = await c.request(req, "conv", cmd["timeout"])
                except Exception as e:  # noqa: BLE001
                    states["failed:" + type(e).__name__] += 1
                    return
                if env.get("t") != "conv":
                    states["error:" + str(env.get("code"))] += 1
                    return
                states[env["state"]] += 1
                convs.append(env["conv"])
                if cmd.get("pair", True):
                    pair = self.state.pairs.get(env["conv"])
                    if pair is None:
                        self.state.pairs[env["conv"]] = pair = Pair(env["conv"])
                    pair.visitor = c

        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in clients))
        return {"states": dict(states), "convs": convs[:10], "elapsed_s": time.perf_counter() - t0}

    async def op_resume_all(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Every client of the group subscribes to `conv` (`resume`) and waits for `resumed`."""
        sem = asyncio.Semaphore(cmd.get("conc", 50))
        ok = 0

        async def one(c: ChatClient) -> None:
            nonlocal ok
            async with sem:
                try:
                    env = await c.request({"t": "resume", "conv": cmd["conv"], "after": 0, "rid": "r"}, "resumed", cmd["timeout"])
                except Exception:  # noqa: BLE001
                    return
                ok += env.get("t") == "resumed"

        await asyncio.gather(*(one(c) for c in self.groups.get(cmd["group"], [])))
        return {"resumed": ok}

    async def op_pair_flows(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until every opened conversation reached its agent, then build two flows per pair."""
        st = self.state
        deadline = time.monotonic() + cmd["timeout"]
        while time.monotonic() < deadline and not all(p.ready for p in st.pairs.values()):
            await asyncio.sleep(0.01)
        flows: list[Flow] = []
        for p in st.pairs.values():
            if p.ready:
                flows.extend(p.flows(st))
        st.flows = flows
        return {"pairs": sum(1 for p in st.pairs.values() if p.ready), "unpaired": sum(1 for p in st.pairs.values() if not p.ready),
                "flows": len(flows)}

    async def op_echo_flows(self, cmd: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        st.flows = []
        for c in self.groups.get(cmd["group"], []):
            c.flow = Flow(c.send_echo, st.hists["echo"], st)
            st.flows.append(c.flow)
        return {"flows": len(st.flows)}

    # traffic

    async def op_run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One measurement step over this worker's flows.

        closed: each flow keeps `window` messages in flight (saturation);
        rate: `rate` messages/s spread round-robin over the flows (open loop, 2 ms ticks).
        Then stop sending and wait up to `drain` s for what is in flight.
        """
        st = self.state
        st.reset()
        flows = st.flows
        duration, drain = cmd["duration"], cmd.get("drain", 3.0)
        st.window = cmd.get("window", 1)
        st.closed_loop = cmd["mode"] == "closed"
        skipped = 0
        t0 = time.monotonic()
        st.running = True
        if flows:
            if st.closed_loop:
                for f in flows:
                    for _ in range(st.window):
                        f.send_one()
                await asyncio.sleep(duration)
            else:
                rate, cap = cmd["rate"], cmd.get("max_outstanding", 64)
                n, idx, total = len(flows), 0, 0
                while (el := time.monotonic() - t0) < duration:
                    due = int(rate * el) - total
                    for _ in range(due):
                        f = flows[idx % n]
                        idx += 1
                        if f.outstanding < cap:
                            f.send_one()
                        else:
                            skipped += 1
                    total += max(due, 0)
                    await asyncio.sleep(0.002)
            st.running = False
        t_send = time.monotonic()
        while time.monotonic() - t_send < drain and any(f.outstanding for f in flows):
            await asyncio.sleep(0.005)
        t_end = time.monotonic()
        return {
            "sent": sum(f.sent for f in flows),
            "delivered": sum(f.delivered for f in flows),
            "in_flight_left": sum(f.outstanding for f in flows),
            "skipped": skipped,
            "send_s": t_send - t0,
            "total_s": t_end - t0,
            "hists": st.packed_hists(),
            "counts": dict(st.counts),
            "errors": dict(st.errors),
        }

    async def op_fan_reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.state.reset()
        return {}

    async def op_fan_send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The group's first client sends one message meant for many recipients."""
        c = self.groups[cmd["group"]][0]
        t0 = now_ns()
        if isinstance(c, EchoClient):
            c.send_broadcast()
        else:
            c.send_msg(cmd["conv"].encode(), b"f", cmd["seq"])
        return {"t0": t0}

    async def op_fan_wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        deadline = time.monotonic() + cmd["timeout"]
        while st.fan_count < cmd["expected"] and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        worst, st.fan_round_max_ns = st.fan_round_max_ns, 0
        out = {"count": st.fan_count, "round_max_ms": worst / 1e6}
        if cmd.get("final"):
            out["hists"] = st.packed_hists()
            out["counts"] = dict(st.counts)
            out["errors"] = dict(st.errors)
        return out

    def _waiting(self, group: str) -> list[ChatClient]:
        return [c for c in self.groups.get(group, []) if id(c) not in self.left and c.position is not None and not c.done.done()]

    async def op_queue_trigger(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """If this worker holds the head of the queue, that visitor closes its conversation."""
        for c in self._waiting(cmd["group"]):
            if c.position == 1:
                self.left.add(id(c))
                t0 = now_ns()
                c.transport.send(TEXT, b'{"t":"close","conv":"%s","rid":"c"}' % c.conv_b)
                return {"t0": t0}
        return {"t0": None}

    async def op_queue_collect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        expected = len(self._waiting(cmd["group"]))
        deadline = time.monotonic() + cmd["timeout"]
        while len(st.queue_receipts) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        receipts, st.queue_receipts = st.queue_receipts, []
        t0 = cmd["t0"]
        h = st.hists["fanout"]
        worst = 0
        for r in receipts:
            h.record_ns(r - t0)
            worst = max(worst, r - t0)
        out = {"count": len(receipts), "expected": expected, "round_max_ms": worst / 1e6}
        if cmd.get("final"):
            out["hists"] = st.packed_hists()
            out["errors"] = dict(st.errors)
        return out

    async def op_churn(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """`conc` loops of connect -> handshake (gateway: welcome) -> clean close, for `duration` s."""
        st = self.state
        st.reset()
        ips = ips_for(0, self.index, block=1, minimum=cmd.get("source_ips", 64))
        timeout = cmd.get("timeout", 5.0)
        end = time.monotonic() + cmd["duration"]
        counts: Counter[str] = Counter()
        h = st.hists["cycle"]
        seq = itertools.count()

        async def loop_one(k: int) -> None:
            sub = dict(cmd, user=f"{cmd.get('user', 'churn')}-w{self.index}-{k}", same_user=True)
            while time.monotonic() < end:
                t = now_ns()
                try:
                    c = await self._connect(sub, ips[next(seq) % len(ips)], timeout)
                    c.close()
                    await asyncio.wait_for(asyncio.shield(c.done), timeout)
                except Exception as e:  # noqa: BLE001
                    counts["error:" + type(e).__name__] += 1
                    continue
                counts["cycles"] += 1
                counts["clean" if c.clean else "unclean"] += 1
                h.record_ns(now_ns() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop_one(k) for k in range(cmd["conc"])))
        return {"counts": dict(counts), "elapsed_s": time.perf_counter() - t0, "hists": st.packed_hists(),
                "errors": dict(st.errors)}

    # bot scenario: visitors in bot conversations asking continuously (clients.BotLoad)

    async def op_bot_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The group's first `limit` BotClients (all without it) ask; each answer triggers the next. Returns at once."""
        b = self.bot
        b.clients = [c for c in self.groups.get(cmd["group"], []) if isinstance(c, BotClient)][:cmd.get("limit")]
        b.reset()
        b.active = True
        for c in b.clients:
            c.ask()
        return {"clients": len(b.clients)}

    async def op_bot_reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Start counting afresh (questions in flight still count when answered)."""
        self.bot.reset()
        return {}

    async def op_bot_stop(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Ask no more; `answers_at_stop` is the count at once, then wait up to `drain` s for the answers in flight."""
        b = self.bot
        b.active = False
        at_stop = dict(b.counts)
        deadline = time.monotonic() + cmd.get("drain", 5.0)
        while b.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        hists = {k: pack(h) for k, h in (("bot_answer", b.answer), ("bot_first_chunk", b.first_chunk)) if h.n}
        return {"at_stop": at_stop, "counts": dict(b.counts), "errors": dict(b.errors), "hists": hists,
                "chunks_per_answer": {str(k): v for k, v in sorted(b.chunks_per_answer.items())},
                "unanswered": b.pending, "handed_off": sum(1 for c in b.clients if c.handed_off),
                "clients": len(b.clients)}

    async def op_ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"worker": self.index}


async def _serve(pipe: Any, index: int, lifetime_s: float) -> None:
    worker = Worker(index)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):  # the coordinator is gone: close everything and leave
            loop.remove_reader(pipe.fileno())
            inbox.put_nowait({"op": "exit", "orphaned": True})

    loop.add_reader(pipe.fileno(), readable)
    # However the coordinator fares, a worker never outlives the run it belongs to.
    loop.call_later(lifetime_s, lambda: inbox.put_nowait({"op": "exit", "orphaned": True}))
    while True:
        cmd = await inbox.get()
        if cmd["op"] == "exit":
            for group in list(worker.groups):
                await worker.op_close({"group": group, "timeout": 2.0})
            if not cmd.get("orphaned"):
                pipe.send({"ok": True})
            return
        try:
            reply = await worker.dispatch(cmd)
            reply["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported to the coordinator, the worker stays
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        pipe.send(reply)


def worker_main(pipe: Any, index: int, cpus: set[int] | None, lifetime_s: float = 3600.0) -> None:
    """Entry point of a worker process (multiprocessing spawn target)."""
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("picows").setLevel(logging.CRITICAL)
    pin(cpus)
    raise_nofile()
    try:
        uvloop.run(_serve(pipe, index, lifetime_s))
    except KeyboardInterrupt:
        pass

"""fan-out: one message to many recipients.

- broadcast (every server): M connections; one sender's message reaches all M.
  Echo peers: a payload starting with `B` goes to every client (websockets uses
  `websockets.broadcast`, Node `wss.clients`, aiohttp/picows a loop).
  Gateway: the protocol has no broadcast envelope; its fan-out is "every entry
  to every connection of every participant": one visitor user holds M
  connections (tabs, devices) and the agent's `msg` reaches all M.
- queue (gateway only): Q visitors wait in one group's queue with no agent;
  the head closes its conversation and every waiting visitor gets a `queue`
  update with its new position. Latency = head's close sent -> each update.

Per round the bench waits until every recipient has the message, so each
round's completion time (send -> last recipient) is measured on its own.
"""

from __future__ import annotations

import time
from typing import Any

from .base import Context, latency, noise_fields, per_cpu


def _rounds(ctx: Context, rounds: int, per_worker: list[int], send: Any) -> tuple[list[float], list[dict[str, Any]], Any]:
    """Send `rounds` messages one at a time; each round waits until every recipient has it."""
    lg = ctx.loadgen
    lg.all({"op": "fan_reset"}, ctx.timeout(10))
    completion: list[float] = []
    w = ctx.window()
    replies: list[dict[str, Any]] = []
    for k in range(1, rounds + 1):
        send(k)
        final = k == rounds
        replies = lg.each({"op": "fan_wait", "timeout": ctx.timeout(ctx.params["round_timeout_s"]), "final": final},
                          "expected", [k * n for n in per_worker], ctx.timeout(ctx.params["round_timeout_s"] + 10))
        completion.append(max(r["round_max_ms"] for r in replies))
        got = sum(r["count"] for r in replies)
        if got < k * sum(per_worker) and not final:
            ctx.log(f"    fanout: round {k} incomplete ({got}/{k * sum(per_worker)} so far): stopping")
            replies = lg.each({"op": "fan_wait", "timeout": 0, "final": True}, "expected", [k * n for n in per_worker], 30)
            break
    win = w.stop()
    return completion, replies, win


def _summary(ctx: Context, m: int, rounds: int, completion: list[float], replies: list[dict[str, Any]], win: Any) -> dict[str, Any]:
    got = sum(r["count"] for r in replies)
    completion.sort()
    out = {
        "recipients": m,
        "rounds": rounds,
        "expected": m * rounds,
        "delivered": got,
        "deliveries_per_s": round(got / win.wall_s, 1) if win.wall_s else None,
        "deliveries_per_cpu_s": per_cpu(got, win.server_cpu_s),
        "server_cpu_ms_per_round": round(win.server_cpu_s * 1000 / rounds, 3),
        "completion_ms": {"p50": completion[len(completion) // 2], "max": completion[-1]},
        "latency": latency(replies, "fanout"),
        **noise_fields(win),
    }
    errors = {k: v for r in replies for k, v in r.get("errors", {}).items()}
    if errors:
        out["errors"] = errors
    return out


def _broadcast(ctx: Context) -> dict[str, Any]:
    p, lg = ctx.params, ctx.loadgen
    m, rounds = p["recipients"], p["rounds"]
    if ctx.gateway:
        # The agent in worker 0; the M connections all belong to one visitor user (tabs, devices).
        # The first opens the conversation, then every connection subscribes to it with `resume`.
        rest = [None] * (lg.n - 1)
        lg.call([ctx.open_cmd("fan_agent", role="agent", user="fan-agent", tenant="fan", n=1, capacity=1)] + rest, ctx.timeout(30))
        lg.call([{"op": "agents_online", "group": "fan_agent", "capacity": 1, "timeout": 10}] + rest, ctx.timeout(30))
        opened = ctx.open_spread("fan", m, p.get("open_deadline_s", 60), role="visitor", user="fan-visitor", tenant="fan",
                                 same_user=True)
        ctx.log(f"    fanout: {opened['opened']} connections of one visitor open in {opened['elapsed_s']} s")
        conv = lg.call([{"op": "visitors_open", "group": "fan", "limit": 1, "pair": False, "timeout": 10}] + rest,
                       ctx.timeout(30))[0]["convs"][0]
        resumed = sum(r["resumed"] for r in lg.all({"op": "resume_all", "group": "fan", "conv": conv, "timeout": 20},
                                                   ctx.timeout(60)))
        ctx.log(f"    fanout: {resumed}/{opened['opened']} connections subscribed to the conversation")
        time.sleep(0.3)  # let replays and events land before counting starts

        def send(k: int) -> Any:
            return lg.call([{"op": "fan_send", "group": "fan_agent", "conv": conv, "seq": k}] + rest, 10)
    else:
        opened = ctx.open_spread("fan", m, p.get("open_deadline_s", 60))

        def send(k: int) -> Any:
            return lg.call([{"op": "fan_send", "group": "fan"}] + [None] * (lg.n - 1), 10)

    per_worker = [r["alive"] for r in lg.all({"op": "alive", "group": "fan"}, 30)]
    m = sum(per_worker)
    completion, replies, win = _rounds(ctx, rounds, per_worker, send)
    out = _summary(ctx, m, len(completion), completion, replies, win)
    out["open_failed"] = opened["failed"]
    out["close"] = ctx.close_all("fan")
    if ctx.gateway:
        ctx.close_all("fan_agent")
    return out


def _queue(ctx: Context) -> dict[str, Any]:
    p, lg = ctx.params, ctx.loadgen
    q, rounds = p["queue_visitors"], p["queue_rounds"]
    opened = ctx.open_spread("queue", q, p.get("open_deadline_s", 60), role="visitor", user="q", tenant="queue")
    w = ctx.window()
    joined = lg.all({"op": "visitors_open", "group": "queue", "pair": False, "timeout": 30, "conc": 20}, ctx.timeout(120))
    join_win = w.stop()
    states: dict[str, int] = {}
    for r in joined:
        for k, v in r["states"].items():
            states[k] = states.get(k, 0) + v
    time.sleep(0.3)
    lg.all({"op": "fan_reset"}, 10)
    completion: list[float] = []
    delivered = expected = 0
    w = ctx.window()
    replies: list[dict[str, Any]] = []
    for k in range(1, rounds + 1):
        t0s = [r["t0"] for r in lg.all({"op": "queue_trigger", "group": "queue"}, 10) if r["t0"] is not None]
        if not t0s:
            break
        replies = lg.all({"op": "queue_collect", "group": "queue", "t0": t0s[0], "timeout": ctx.timeout(p["round_timeout_s"]),
                          "final": k == rounds}, ctx.timeout(p["round_timeout_s"] + 10))
        delivered += sum(r["count"] for r in replies)
        expected += sum(r["expected"] for r in replies)
        completion.append(max(r["round_max_ms"] for r in replies))
    win = w.stop()
    completion.sort()
    out = {
        "waiting": states.get("queued", 0),
        "open_failed": opened["failed"],
        "join_s": round(join_win.wall_s, 3),
        "join_server_cpu_s": round(join_win.server_cpu_s, 3),
        "join_cpu_ms_per_visitor": round(join_win.server_cpu_s * 1000 / max(1, q), 3),
        "rounds": len(completion),
        "expected": expected,
        "delivered": delivered,
        "deliveries_per_s": round(delivered / win.wall_s, 1) if win.wall_s else None,
        "deliveries_per_cpu_s": per_cpu(delivered, win.server_cpu_s),
        "server_cpu_ms_per_round": round(win.server_cpu_s * 1000 / max(1, len(completion)), 3),
        "completion_ms": {"p50": completion[len(completion) // 2], "max": completion[-1]} if completion else None,
        "latency": latency(replies, "fanout"),
        "conv_states": states,
        **noise_fields(win),
    }
    out["close"] = ctx.close_all("queue", reset_flows=True)
    return out


def run(ctx: Context) -> dict[str, Any]:
    ctx.log(f"    fanout: broadcast to {ctx.params['recipients']} x {ctx.params['rounds']}")
    out: dict[str, Any] = {"broadcast": _broadcast(ctx)}
    b = out["broadcast"]
    ctx.log(f"    fanout: {b['delivered']}/{b['expected']} delivered, {b['deliveries_per_cpu_s']}/CPU-s, "
            f"completion p50 {b['completion_ms']['p50']:.2f} ms")
    if ctx.gateway and ctx.params.get("queue_visitors"):
        ctx.log(f"    fanout: queue positions, {ctx.params['queue_visitors']} waiting")
        out["queue"] = _queue(ctx)
        qd = out["queue"]
        ctx.log(f"    fanout: queue joined in {qd['join_s']} s; {qd['delivered']}/{qd['expected']} updates, "
                f"completion {qd['completion_ms']}")
    return out

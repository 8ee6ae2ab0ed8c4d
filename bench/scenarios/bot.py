"""bot: conversations answered by a streaming LLM backend while humans chat; does the human relay suffer?

The scenario hosts its own processes (HOSTED):
- a local stand-in LLM server (`bench/peers/fake_llm.py`): the OpenAI chat-completions streaming wire
  format (SSE `chat.completion.chunk` events, `[DONE]`), `tokens` words `token_delay_ms` apart; canned
  text, no model. Pinned with the load generator, its CPU is measured apart (not server CPU).
- the gateway, with `GATEWAY_CONFIG` = a TOML file written into the run folder (`bot-gateway.toml`):
  `[bots] default = "llm"` (an `openai` backend at the stand-in), `coalesce_ms`, the answer cache off,
  and for every bench tenant `[bots.tenants.T.groups] humans = ""`: the `humans` group has no bot.

Two kinds of conversations on the one gateway:
- human: `human_pairs` visitors open in group `humans` and are assigned to bench agents (groups claim
  `["humans"]`); visitor->agent and agent->visitor messages at a fixed open-loop rate `human_rate`
  (as relay's steps: latency = send to receipt, one way).
- bot: `bot_convs` visitors open in the default group, so the bot answers; each asks a question (unique
  text, no handoff phrase), waits for the bot's answer (`msg`, role `bot`) and asks the next at once
  (closed loop, one question in flight per conversation).

Steps: warm-up (both kinds), humans at `human_rate` WITHOUT bot load, the same rate WITH bot load from
each of `bot_levels` conversations (first few, then all), then without again (shows drift). Reported:
human p50/p99/p99.9 in each step and the ratios with / without (without = the mean of the two steps
without); per bot level: answers/s, answer latency (question sent -> the bot's `msg`), time to the first
`bot_chunk`, `bot_chunk` frames per answer (against the tokens per answer: what coalescing saves),
fallbacks and handoffs, server CPU and the server CPU per bot answer (the step's server CPU minus the
without-steps' rate over the same time, / answers).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

from bench import servers

from .base import Context, latency, per_cpu
from .relay import open_conversations, pair_flows, run_step

HOSTED = True  # starts its own gateway (with a config file) and the stand-in LLM server
HUMAN_GROUP = "humans"


def _config(ctx: Context, llm_port: int) -> str:
    p = ctx.params
    tenants = [f"{ctx.tag}-bench-w{i}" for i in range(ctx.loadgen.n)]
    lines = [
        "# Written by bench/scenarios/bot.py for one run: the bot scenario's gateway configuration.",
        "[bots]",
        "enabled = true",
        'default = "llm"',
        f"coalesce_ms = {p['coalesce_ms']}",
        'fallback_faq = ""               # no FAQ fallback: every answer comes from the backend',
        "",
        "[bots.cache]",
        "enabled = false                 # every question reaches the backend",
        "",
        "[bots.backends.llm]",
        'type = "openai"',
        f'base_url = "http://{servers.HOST}:{llm_port}/v1"   # the local stand-in (bench/peers/fake_llm.py), not a model',
        'model = "bench"',
        f"max_concurrency = {max(16, p['bot_convs'])}          # one call per bot conversation in flight",
        f"max_queue = {max(64, p['bot_convs'])}",
    ]
    for t in tenants:
        lines += ["", f'[bots.tenants."{t}".groups]', f'{HUMAN_GROUP} = ""                    # human conversations: no bot']
    return "\n".join(lines) + "\n"


def _llm_stats(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{servers.HOST}:{port}/stats", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _bot_summary(replies: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    at_stop = 0
    chunks: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in replies:
        at_stop += r["at_stop"].get("answers", 0)
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in r["chunks_per_answer"].items():
            chunks[k] = chunks.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    answers = counts.get("answers", 0)
    out = {
        "conversations": sum(r["clients"] for r in replies),
        "answers": answers,
        "answers_in_window": at_stop,
        "answers_per_s": round(at_stop / wall_s, 1) if wall_s else None,
        "answer_latency": latency(replies, "bot_answer"),
        "first_chunk_latency": latency(replies, "bot_first_chunk"),
        "bot_chunks": counts.get("chunks", 0),
        "chunks_per_answer": round(counts.get("chunks", 0) / answers, 2) if answers else None,
        "chunks_per_answer_hist": chunks,
        "fallbacks": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("fallback:")},
        "handoffs": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("handoff:")},
        "handed_off_convs": sum(r["handed_off"] for r in replies),
        "unanswered_at_end": sum(r["unanswered"] for r in replies),
        "asked": counts.get("asked", 0),
    }
    if errors:
        out["errors"] = errors
    return out


def _human(step: dict[str, Any]) -> str:
    lat = step["latency"]
    return (f"{step['msgs_per_s']} msg/s, p50 {lat['p50_ms']} p99 {lat['p99_ms']} p99.9 {lat['p99_9_ms']} ms, "
            f"server CPU {step['server_cpu_pct']}%")


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    lg_cpus = ctx.loadgen.cpus
    ctx.need(p["step_s"] * 3 + 25, "bot scenario")
    delay = p["token_delay_ms"]
    llm = servers.start_aux("fake_llm", [sys.executable, "-m", "bench.peers.fake_llm", "--host", servers.HOST, "--port", "0",
                                         "--tokens", str(p["tokens"]), "--delay-ms", delay, "--idle"], lg_cpus, r"^listening (\d+)")
    srv = None
    try:
        assert ctx.out is not None
        cfg = ctx.out / "bot-gateway.toml"
        cfg.write_text(_config(ctx, llm.port))
        srv = servers.start("gateway", {"heartbeat_s": ctx.profile["heartbeat_s"]}, ctx.server_cpus,
                            {"GATEWAY_CONFIG": str(cfg), "GATEWAY_BOTS_ENABLED": "true"})
        ctx.server = srv
        ctx.others = {"fake_llm": llm.pid}
        return _measure(ctx, llm, cfg.name)
    finally:
        if srv is not None:
            code = srv.stop()
            if code not in (0, None, -15):
                ctx.log(f"    bot: gateway exit code {code}: {''.join(srv.output[-5:])}")
        llm.stop()


def _measure(ctx: Context, llm: servers.Aux, cfg_name: str) -> dict[str, Any]:
    p, lg = ctx.params, ctx.loadgen
    out: dict[str, Any] = {
        "backend": {"kind": "local stand-in speaking the OpenAI streaming wire format (bench/peers/fake_llm.py), not a model",
                    "tokens_per_answer": p["tokens"], "token_delay_ms": p["token_delay_ms"], "coalesce_ms": p["coalesce_ms"],
                    "config_file": cfg_name},
        "human_rate": p["human_rate"],
    }
    ctx.log(f"    bot: {p['human_pairs']} human conversations (group {HUMAN_GROUP!r}, no bot), {p['bot_convs']} bot "
            f"conversations; stand-in LLM: {p['tokens']} tokens {p['token_delay_ms']} ms apart")
    setup = open_conversations(ctx, p["human_pairs"], prefix="human", agents_kw={"groups": [HUMAN_GROUP]},
                               conv_group=HUMAN_GROUP)
    setup.pop("tenant"), setup.pop("agent_user")
    setup.update(pair_flows(ctx))
    base = ctx.open_cmd("bot_visitors", role="visitor", user="botvisitor", client="bot", deadline_s=60)
    opened = lg.call([dict(base, n=n, tenant=f"{base['tenant']}-w{i}") if n else None
                      for i, n in enumerate(lg.split(p["bot_convs"]))], ctx.timeout(60))
    states = lg.all({"op": "visitors_open", "group": "bot_visitors", "timeout": 10, "conc": 50, "pair": False}, ctx.timeout(60))
    setup["bot_visitors"] = sum(r["opened"] for r in opened if r)
    setup["bot_conv_states"] = {}
    for r in states:
        for k, v in r["states"].items():
            setup["bot_conv_states"][k] = setup["bot_conv_states"].get(k, 0) + v
    out["setup"] = setup
    if not setup["flows"] or not setup["bot_conv_states"].get("bot"):
        out["error"] = f"setup failed: {setup}"
        return out
    t = ctx.timeout(60)
    rate = p["human_rate"]
    levels = sorted({min(n, p["bot_convs"]) for n in p["bot_levels"]})

    # warm-up: both kinds of traffic (HTTP connections to the backend, code paths), not reported
    lg.all({"op": "bot_start", "group": "bot_visitors"}, t)
    run_step(ctx, "rate", p["warmup_s"], rate)
    lg.all({"op": "bot_stop", "drain": p["bot_drain_s"]}, ctx.timeout(p["bot_drain_s"] + 30))

    ctx.need(p["step_s"] * (2 + len(levels)) + 10, "bot steps")
    without = run_step(ctx, "rate", p["step_s"], rate)
    ctx.log(f"    bot: humans without bot load: {_human(without)}")
    loaded = []
    for n in levels:
        ctx.need(p["step_s"] + p["bot_drain_s"] + 5, f"bot step with {n} conversations")
        lg.each({"op": "bot_start", "group": "bot_visitors"}, "limit", lg.split(n), t)
        time.sleep(p["ramp_s"])
        lg.all({"op": "bot_reset"}, t)
        t0 = time.monotonic()
        step = run_step(ctx, "rate", p["step_s"], rate)
        bot_wall = time.monotonic() - t0
        stop = lg.all({"op": "bot_stop", "drain": p["bot_drain_s"]}, ctx.timeout(p["bot_drain_s"] + 30))
        step["bots"] = bots = _bot_summary(stop, bot_wall)
        bots["bot_window_s"] = round(bot_wall, 3)
        fake_cpu = (step.get("others_cpu_s") or {}).get("fake_llm")
        step["fake_llm_cpu_pct"] = round(fake_cpu / step["wall_s"] * 100, 1) if fake_cpu is not None and step["wall_s"] else None
        loaded.append(step)
        ctx.log(f"    bot: humans with {n} bot conversations: {_human(step)}")
        ctx.log(f"    bot: {bots['answers_per_s']} answers/s, answer p50 {bots['answer_latency']['p50_ms']} p99 "
                f"{bots['answer_latency']['p99_ms']} ms, {bots['chunks_per_answer']} bot_chunk frames per answer of "
                f"{p['tokens']} tokens, fallbacks {bots['fallbacks'] or 0}, handoffs {bots['handoffs'] or 0}")
        time.sleep(0.2)  # let the answers' tails settle
    after = run_step(ctx, "rate", p["step_s"], rate)
    ctx.log(f"    bot: humans without bot load again: {_human(after)}")

    refs = (without, after)
    base_cpu = (without["server_cpu_s"] / without["wall_s"] + after["server_cpu_s"] / after["wall_s"]) / 2
    base_node = (without["node_cpu_s"] / without["wall_s"] + after["node_cpu_s"] / after["wall_s"]) / 2
    for step in loaded:
        b = step["bots"]
        step["human_p99_ratio"] = _ratio_of(step, refs, "p99_ms")
        step["human_p50_ratio"] = _ratio_of(step, refs, "p50_ms")
        step["human_p99_9_ratio"] = _ratio_of(step, refs, "p99_9_ms")
        # extra server CPU over the steps without bots (per second of window), per bot answer
        extra = step["server_cpu_s"] - base_cpu * step["wall_s"]
        extra_node = step["node_cpu_s"] - base_node * step["wall_s"]
        n = b["answers_in_window"]
        step["server_cpu_ms_per_bot_answer"] = round(extra * 1000 / n, 3) if n else None
        step["node_cpu_ms_per_bot_answer"] = round(extra_node * 1000 / n, 3) if n else None
        step["bot_answers_per_server_cpu_s"] = per_cpu(b["answers_in_window"], step["server_cpu_s"])
    top = loaded[-1] if loaded else None
    base_p99 = [s["latency"]["p99_ms"] for s in refs if s["latency"].get("p99_ms")]
    out.update({
        "without": without, "with_bots": loaded, "without_after": after,
        "human_p99_without_ms": round(sum(base_p99) / len(base_p99), 3) if base_p99 else None,
        # the headline figures: at the largest bot load
        "human_p99_ratio": top["human_p99_ratio"] if top else None,
        "server_cpu_ms_per_bot_answer": top["server_cpu_ms_per_bot_answer"] if top else None,
        "fake_llm_stats": _llm_stats(llm.port),
        "gateway_stats": (ctx.server.admin_stats() or {}).get("hub"),
    })
    ctx.log(f"    bot: human p99 with/without bots {[s['human_p99_ratio'] for s in loaded]} at {levels} conversations, "
            f"server CPU per bot answer {[s['server_cpu_ms_per_bot_answer'] for s in loaded]} ms")
    out["close"] = ctx.close_all("human_visitors", reset_flows=True)
    ctx.close_all("human_agents", reset_flows=True)
    ctx.close_all("bot_visitors")
    return out


def _ratio_of(step: dict[str, Any], refs: tuple[dict[str, Any], ...], key: str) -> float | None:
    """step's latency percentile / the mean of the reference steps'."""
    vals = [r["latency"][key] for r in refs if r["latency"].get(key)]
    v = step["latency"].get(key)
    return round(v / (sum(vals) / len(vals)), 3) if vals and v else None


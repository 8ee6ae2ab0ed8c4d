"""The bot bridge's worker process (docs/bots.md, "The worker process"): a real node, its real child
process, and a local HTTP server speaking OpenAI's streaming wire format in place of a hosted model."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest

from .bot_servers import State, openai_server, serve
from .support import start_gateway, uid, wait_for
from .test_bot_e2e import bot_conversation, bot_node, write_config


async def bot_admin(gw) -> dict:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s, \
            s.get(gw.http_url + "/admin/bots") as r:
        assert r.status == 200
        return await r.json()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_killed_worker_gives_the_fallback_and_comes_back(gateway_factory, tmp_path):
    state = State(mode="slow", chunks=["Back ", "again."])
    async with serve(openai_server.make_app(state), state) as url:
        gw = bot_node(gateway_factory, tmp_path, "openai", "first_chunk_timeout_s = 60\ntotal_timeout_s = 120\n"
                      'holding_message = "One moment please."', base_url=f"{url}/v1", model="m")
        first = (await bot_admin(gw))["worker"]
        assert first["up"] and first["pid"] != gw.proc.pid and alive(first["pid"])
        v, conv = await bot_conversation(gw, uid("t"))
        q1 = await v.msg(conv, "a question the worker dies on")
        await wait_for(state.stalled.is_set, what="the bot call to be running in the worker")

        os.kill(first["pid"], signal.SIGKILL)
        answer = await v.next("msg", lambda e: e["role"] == "bot")
        assert answer["fallback"] == "bot_worker_error" and answer["text"] == "One moment please."
        assert answer["reply_to"] == q1["seq"] and answer["seq"] == q1["seq"] + 1  # logged once, in order
        assert gw.alive()

        async def restarted() -> bool:
            w = (await bot_admin(gw))["worker"]
            return w["up"] and w["pid"] != first["pid"] and w["restarts"] == 1

        await wait_for(restarted, what="a new worker")
        state.mode = "ok"
        v2, conv2 = await bot_conversation(gw, uid("t"))
        await v2.msg(conv2, "and now?")
        answer = await v2.next("msg", lambda e: e["role"] == "bot")
        assert answer["text"] == "Back again." and "fallback" not in answer


def test_a_backend_that_cannot_be_built_stops_the_node_at_start(tmp_path):
    cfg = write_config(tmp_path, '[bots]\ndefault = "x"\n[bots.backends.x]\ntype = "no_such_module_xyz:Factory"\n')
    with pytest.raises(RuntimeError) as err:
        start_gateway(config=cfg, bots_enabled="true")
    assert "bot worker failed to start" in str(err.value) and "no_such_module_xyz" in str(err.value)


async def test_the_worker_ends_with_its_node(gateway_factory):
    gw = gateway_factory(bots_enabled="true")
    pid = (await bot_admin(gw))["worker"]["pid"]
    assert alive(pid)
    gw.proc.kill()  # no clean shutdown: the worker sees its socket close
    gw.proc.wait()
    await wait_for(lambda: not alive(pid), what="the worker to exit after its node died")


async def test_a_starved_worker_does_not_hold_the_conversation(gateway_factory, tmp_path):
    state = State()
    async with serve(openai_server.make_app(state), state) as url:
        gw = bot_node(gateway_factory, tmp_path, "openai", "first_chunk_timeout_s = 0.5\ntotal_timeout_s = 1\n"
                      'cancel_timeout_s = 0.5\nhandoff_on_fallback = false\nholding_message = "One moment please."\n[bots.concurrency]\nqueue_wait_s = 0.1',
                      base_url=f"{url}/v1", model="m")
        pid = (await bot_admin(gw))["worker"]["pid"]
        v, conv = await bot_conversation(gw, uid("t"))
        os.kill(pid, signal.SIGSTOP)  # what a saturated core does to an idle-priority process, at the extreme
        try:
            q = await v.msg(conv, "anyone there?")
            answer = await v.next("msg", lambda e: e["role"] == "bot")
            assert answer["fallback"] == "bot_worker_stalled" and answer["reply_to"] == q["seq"]
        finally:
            os.kill(pid, signal.SIGCONT)
        # The woken worker finishes the abandoned call late; the node must not log a second answer to it.
        q2 = await v.msg(conv, "still there?")
        await v.next("msg", lambda e: e["role"] == "bot" and e["reply_to"] == q2["seq"])
        hist = await v.request({"t": "history", "conv": conv}, "history")
        assert [e["reply_to"] for e in hist["msgs"] if e.get("role") == "bot"] == [q["seq"], q2["seq"]]

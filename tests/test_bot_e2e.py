"""Bots in front of people, end to end: a real node, real sockets, and local HTTP servers that
speak the vendors' documented wire formats (tests/bot_servers) in place of services we can't reach."""

from __future__ import annotations

import aiohttp

from .bot_servers import State, dify_server, openai_server, serve
from .support import Client, uid, wait_for


def write_config(tmp_path, toml: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return str(path)


def bot_node(gateway_factory, tmp_path, backend: str, bots: str = "", **backend_opts: str):
    """A node whose default bot is backend `llm` of type `backend`, plus extra [bots] lines."""
    opts = "".join(f'{k} = "{v}"\n' for k, v in backend_opts.items())
    cfg = write_config(tmp_path, f'[bots]\ndefault = "llm"\n{bots}\n[bots.backends.llm]\ntype = "{backend}"\n{opts}')
    return gateway_factory(config=cfg, bots_enabled="true")


async def bot_conversation(gw, tenant: str):
    v = await Client.connect(gw, "visitor", uid("v"), tenant)
    conv = await v.request({"t": "open"}, "conv")
    assert conv["state"] == "bot"
    await v.next("event", lambda e: e["ev"] == "bot")
    return v, conv["conv"]


async def test_visitor_gets_a_streamed_bot_answer(gateway_factory, tmp_path):
    state = State(chunks=["Our ", "shop ", "ships ", "worldwide ", "within ", "three ", "days."])
    async with serve(openai_server.make_app(state), state) as url:
        gw = bot_node(gateway_factory, tmp_path, "openai", "coalesce_ms = 1\ncoalesce_chars = 1",
                      base_url=f"{url}/v1", model="test-model")
        v, conv = await bot_conversation(gw, uid("t"))
        ack = await v.msg(conv, "Do you ship abroad?")
        answer = await v.next("msg", lambda e: e["role"] == "bot")
        assert answer["text"] == "Our shop ships worldwide within three days."
        assert answer["reply_to"] == ack["seq"] and answer["seq"] == ack["seq"] + 1
        chunks = [e["text"] for e in v.seen if e["t"] == "bot_chunk"]
        assert chunks and "".join(chunks) == answer["text"]  # streamed, then one ordinary message
        assert state.requests[-1]["json"]["messages"][-1]["content"] == "Do you ship abroad?"
        hist = await v.request({"t": "history", "conv": conv}, "history")
        assert [e["text"] for e in hist["msgs"] if e["t"] == "msg"] == ["Do you ship abroad?", answer["text"]]


async def test_slow_backend_gets_the_fallback_at_the_first_deadline(gateway_factory, tmp_path):
    state = State(mode="slow")
    async with serve(openai_server.make_app(state), state) as url:
        gw = bot_node(gateway_factory, tmp_path, "openai", 'first_chunk_timeout_s = 0.3\nholding_message = "One moment please."',
                      base_url=f"{url}/v1", model="test-model")
        v, conv = await bot_conversation(gw, uid("t"))
        await v.msg(conv, "zzz unrelated question qqq")
        answer = await v.next("msg", lambda e: e["role"] == "bot")
        assert answer["fallback"] == "first_chunk_timeout" and answer["text"] == "One moment please."
        await v.next("event", lambda e: e["ev"] == "handoff")
        assert state.stalled.is_set()


async def test_dead_backend_opens_the_breaker_and_the_secondary_answers(gateway_factory, tmp_path):
    state = State(mode="http_error")
    async with serve(openai_server.make_app(state), state) as url:
        cfg = write_config(tmp_path, f"""
[bots]
default = "llm"
[bots.breaker]
failures = 2
cooldown_s = 600
[bots.backends.llm]
type = "openai"
base_url = "{url}/v1"
model = "test-model"
secondary = "faq"
[bots.backends.faq]
type = "faq"
""")
        gw = gateway_factory(config=cfg, bots_enabled="true")
        tenant = uid("t")
        for _ in range(3):
            v, conv = await bot_conversation(gw, tenant)
            await v.msg(conv, "How long does shipping take?")
            answer = await v.next("msg", lambda e: e["role"] == "bot")
            assert answer["backend"] == "faq" and "ship" in answer["text"].lower()
        calls = len(state.requests)
        assert calls == 2  # the third question never reached the dead backend: the breaker is open
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s, \
                s.get(gw.http_url + "/admin/bots") as r:
            assert (await r.json())["breakers"]["llm"] == "open"


async def test_low_confidence_hands_off_to_an_agent_who_sees_the_history(gateway_factory, tmp_path):
    cfg = write_config(tmp_path, "[bots]\nconfidence_threshold = 0.9\n")  # the built-in FAQ bot
    gw = gateway_factory(config=cfg, bots_enabled="true")
    tenant = uid("t")
    agent = await Client.connect(gw, "agent", "a1", tenant)
    await agent.request({"t": "status", "status": "online"}, "status")
    v, conv = await bot_conversation(gw, tenant)
    await v.msg(conv, "Can I return a gift without a receipt?")
    await v.next("event", lambda e: e["ev"] == "handoff")
    got = await agent.next("assigned", lambda e: e["conv"] == conv)
    texts = [e.get("text") for e in got["history"] if e["t"] == "msg"]
    assert "Can I return a gift without a receipt?" in texts
    assert got["bot"]["reason"] == "low_confidence" and got["bot"]["confidence"] < 0.9
    handoff_line = [e for e in got["history"] if e.get("handoff")]
    assert handoff_line and got["bot"]["text"] and got["bot"]["text"] != handoff_line[0]["text"]  # the answer, not the line
    # From now on people talk: the agent's reply reaches the visitor, the bot stays quiet.
    reply = await agent.msg(conv, "Hi, I can help with that.")
    await v.next("msg", lambda e: e["seq"] == reply["seq"])
    await v.msg(conv, "thanks")
    await agent.next("msg", lambda e: e["text"] == "thanks")
    assert [e for e in v.seen if e["t"] == "msg" and e["role"] == "bot" and e["seq"] > reply["seq"]] == []


async def test_visitor_asking_for_a_human_skips_the_bot(gateway_factory, tmp_path):
    gw = gateway_factory(bots_enabled="true")
    tenant = uid("t")
    v, conv = await bot_conversation(gw, tenant)
    await v.msg(conv, "I want to talk to a human")
    ev = await v.next("event", lambda e: e["ev"] == "handoff")
    assert ev["reason"] == "visitor_asked"
    await v.next("queue", lambda e: e["position"] == 1)


async def test_visitor_leaving_cancels_the_running_bot_call(gateway_factory, tmp_path):
    state = State(mode="slow")
    async with serve(dify_server.make_app(state), state) as url:
        gw = bot_node(gateway_factory, tmp_path, "dify", "first_chunk_timeout_s = 60\ntotal_timeout_s = 120",
                      base_url=f"{url}/v1", api_key=dify_server.API_KEY)
        v, conv = await bot_conversation(gw, uid("t"))
        await v.msg(conv, "a question the bot takes forever on")
        await wait_for(state.stalled.is_set, what="the bot call to be running")
        await v.send({"t": "close", "conv": conv})
        await v.next("event", lambda e: e["ev"] == "closed")
        await wait_for(lambda: state.cancels, what="Dify's stop endpoint to be called")
        assert state.cancels[0]["task_id"] == state.extra["last_task_id"]

"""Prometheus metrics of a real node, and the Grafana dashboard in docs/grafana/chatgw.json.

- Traffic moves what it should: connections by role, acks (the latency histogram counts each),
  queue length, queue wait and assignment latency, bot first-chunk and answer latency and the
  breaker's state, Redis round trips and commands (cluster mode).
- Every query of every dashboard panel names metrics the node exports (a dashboard that reads
  a renamed metric shows an empty panel, silently).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .support import Client, metric, scrape, uid, wait_for

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "chatgw.json"
_SUFFIXES = ("_bucket", "_sum", "_count")


def _families(text: str) -> dict[str, str]:
    """Exported metric family -> type, from the exposition's TYPE lines (labelled families with no
    sample yet still have theirs)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def _exported(name: str, families: dict[str, str]) -> bool:
    if name in families:
        return True
    for suffix in _SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == "histogram":
            return True
    return False


async def test_dashboard_panels_query_only_exported_metrics(gateway_factory):
    gw = gateway_factory()
    families = _families(scrape(gw))
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has panels"
    for panel in dashboard["panels"]:
        names = {n for t in panel["targets"] for n in re.findall(r"\b((?:chatgw|process)_[a-z0-9_]+)\b", t["expr"])}
        assert names, f"panel {panel['title']!r} queries no metric of ours"
        missing = sorted(n for n in names if not _exported(n, families))
        assert not missing, f"panel {panel['title']!r} queries metrics the node does not export: {missing}"


async def test_traffic_moves_connections_acks_queue_and_assignment_metrics(gateway_factory):
    gw = gateway_factory()
    tenant = uid("t")
    agent = await Client.connect(gw, "agent", uid("a"), tenant)
    await agent.request({"t": "status", "status": "online"}, "status")
    v = await Client.connect(gw, "visitor", uid("v"), tenant)
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    await agent.next("assigned", lambda e: e["conv"] == conv)
    before = metric(scrape(gw), "chatgw_ack_seconds_count")
    for i in range(5):
        await v.msg(conv, f"hello {i}")
    text = scrape(gw)
    assert metric(text, "chatgw_ack_seconds_count") == before + 5
    assert metric(text, 'chatgw_ack_seconds_bucket{le="+Inf"}') == metric(text, "chatgw_ack_seconds_count")
    assert metric(text, 'chatgw_connections{role="visitor"}') == 1 and metric(text, 'chatgw_connections{role="agent"}') == 1
    assert metric(text, "chatgw_queue_wait_seconds_count") >= 1
    assert metric(text, "chatgw_assignment_seconds_count") >= 1
    # A second visitor with the agent away waits: the queue's length says so.
    await agent.request({"t": "status", "status": "away"}, "status")
    v2 = await Client.connect(gw, "visitor", uid("v"), tenant)
    await v2.request({"t": "open"}, "conv")
    await wait_for(lambda: 'chatgw_queue_length{group="default"} 1.0' in scrape(gw),  # the node is this test's own
                   what="the queue length to count the waiting visitor")
    await agent.request({"t": "status", "status": "online"}, "status")
    await agent.next("assigned")
    await wait_for(lambda: 'chatgw_queue_length{group="default"} 0.0' in scrape(gw), what="the queue emptied")


async def test_bot_latency_and_breaker_metrics(gateway_factory):
    gw = gateway_factory(bots_enabled="true")  # the built-in FAQ bot
    v = await Client.connect(gw, "visitor", uid("v"), uid("t"))
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    await v.msg(conv, "How long does shipping take?")
    answer = await v.next("msg", lambda e: e["role"] == "bot")
    text = scrape(gw)
    backend = answer["backend"]
    assert metric(text, f'chatgw_bot_answer_seconds_count{{backend="{backend}"}}') >= 1
    assert metric(text, f'chatgw_bot_breaker_state{{backend="{backend}"}}') == 0  # closed


async def test_redis_round_trips_and_commands_are_counted(gateway_factory, redis_server):
    gw = gateway_factory(coordinator="redis", redis_url=redis_server.url)
    v = await Client.connect(gw, "visitor", uid("v"), uid("t"))
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    before = scrape(gw)
    for i in range(3):
        await v.msg(conv, f"m{i}")
    after = scrape(gw)
    trips = metric(after, "chatgw_redis_round_trips_total") - metric(before, "chatgw_redis_round_trips_total")
    commands = metric(after, "chatgw_redis_commands_total") - metric(before, "chatgw_redis_commands_total")
    assert trips >= 3 and commands >= trips  # at least one append each; a round trip carries one command or more

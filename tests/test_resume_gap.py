"""Resume where the log no longer reaches back: an explicit gap, never a silent one."""

from __future__ import annotations

from .support import Client, uid


async def _ten_messages_then_resume_after_1(gw):
    """A visitor sends ten messages and leaves; a new connection of theirs resumes after seq 1."""
    tenant, name = uid("t"), uid("v")
    v = await Client.connect(gw, "visitor", name, tenant)
    conv = (await v.request({"t": "open"}, "conv"))["conv"]
    acks = [await v.msg(conv, f"m{i}") for i in range(10)]
    await v.close()
    v2 = await Client.connect(gw, "visitor", name, tenant)
    await v2.send({"t": "resume", "conv": conv, "after": 1})
    return v2, conv, acks


async def test_resume_beyond_retention_reports_gap_then_continues(gateway_factory):
    # Memory only: with a store (the default) nothing is trimmed, see the test after this one.
    v2, conv, acks = await _ten_messages_then_resume_after_1(gateway_factory(history_keep=5, data_dir="none"))
    gap = await v2.next("gap")
    done = await v2.next("resumed")
    got = [e["seq"] for e in v2.entries(conv)]
    assert gap["first"] == got[0] == done["seq"] - 4
    assert got == list(range(gap["first"], done["seq"] + 1)) and done["seq"] == acks[-1]["seq"]
    # Resuming from a point still in the log: no gap frame.
    await v2.send({"t": "resume", "conv": conv, "after": done["seq"] - 2, "rid": "r2"})
    await v2.next("resumed", lambda e: e.get("rid") == "r2")
    assert not [e for e in v2.seen if e["t"] == "gap" and e is not gap]


async def test_with_a_store_a_resume_past_memory_reads_the_disk_and_has_no_gap(gateway_factory):
    # Memory keeps 5 entries; the store keeps all.
    v2, conv, acks = await _ten_messages_then_resume_after_1(gateway_factory(history_keep=5))
    done = await v2.next("resumed")
    assert [e["seq"] for e in v2.entries(conv)] == list(range(2, acks[-1]["seq"] + 1))
    assert [e["text"] for e in v2.entries(conv) if e["t"] == "msg"] == [f"m{i}" for i in range(10)]
    assert done["seq"] == acks[-1]["seq"] and not [e for e in v2.seen if e["t"] == "gap"]

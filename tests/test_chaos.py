"""Chaos in the suite (issue 12): three nodes on one real Redis, continuous traffic with client
retries, one node SIGKILLed and Redis restarted meanwhile (bench/chaos.py; `python -m bench.chaos`
is the longer run). Every acked message is in the log exactly once, every connection saw each
entry at most once and in order, every acked entry reached the connected parties without a
resume, the resumes closed every gap, and no request got two answers.
"""

from __future__ import annotations

from bench.chaos import Chaos


async def test_node_kill_and_redis_restart_lose_and_repeat_nothing():
    chaos = Chaos(conversations=6, messages=30, seed=7)
    counts = await chaos.run()
    print("chaos:", "; ".join(chaos.events), "|", counts.line())
    assert len(chaos.events) == 3, chaos.events  # the kill, Redis stopped, Redis back: during the traffic
    assert counts.acked == counts.sent == 6 * 2 * 30
    assert (counts.lost, counts.duplicated, counts.out_of_order, counts.undelivered, counts.gaps,
            counts.double_answers) == (0, 0, 0, 0, 0, 0), counts.line()

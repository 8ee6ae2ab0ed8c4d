"""Every program in examples/ runs as a user would run it, and does what it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import ROOT


def run_example(name: str, *args: str) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                       timeout=120, cwd="/")  # from anywhere, as an installed gateway would be
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_embedded_node_relays_both_ways():
    out = run_example("embedded_node.py")
    assert "agent got seq 3: 'Where is my order?' (visitor's ack: seq 3)" in out
    assert "visitor got seq 4: 'It ships today.'" in out and out.rstrip().endswith("node stopped")


def test_custom_bot_answers_then_hands_off():
    out = run_example("custom_bot.py")
    assert "bot (orders, confidence 0.95): Hello! Order 1001 is shipped on Monday, arriving Thursday." in out
    assert "handed to a person: not_an_order_question" in out


@pytest.mark.parametrize("messages", ["6", "20"])
def test_resuming_client_loses_and_repeats_nothing(gateway, messages):
    out = run_example("resuming_client.py", "--http", gateway.http_url, "--messages", messages)
    assert "connection lost with" in out
    assert f"sent {messages}, acked {messages}, saw seqs 1..{int(messages) + 1}, repeats 0, no gap" in out

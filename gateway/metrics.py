"""Prometheus metrics of one node (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily


class Hot:
    """Counters bumped per message: plain integers (no lock, no label lookup), read at scrape time."""

    __slots__ = ("envelopes_in", "messages", "duplicates", "catch_ups")
    HELP = {
        "envelopes_in": "Envelopes accepted from clients",
        "messages": "Messages appended to conversation logs",
        "duplicates": "Retried messages acked with their first seq",
        "catch_ups": "Entries that arrived ahead of a connection's cursor, so it was caught up from the log",
    }

    def __init__(self) -> None:
        self.envelopes_in = 0
        self.messages = 0
        self.duplicates = 0
        self.catch_ups = 0

    def collect(self):
        for name, doc in self.HELP.items():
            metric = "chatgw_duplicate_messages" if name == "duplicates" else f"chatgw_{name}"
            yield CounterMetricFamily(metric, doc, value=getattr(self, name))


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("chatgw_connections", "Open WebSocket connections", ["role"], registry=r)
        self.hot = Hot()
        r.register(self.hot)
        self.conversations_opened = Counter("chatgw_conversations_opened_total", "Conversations opened", registry=r)
        self.assignments = Counter("chatgw_assignments_total", "Conversations assigned or transferred to an agent", registry=r)
        self.requeued = Counter("chatgw_requeued_total", "Conversations returned to the queue after agent loss", registry=r)
        self.heartbeat_timeouts = Counter("chatgw_heartbeat_timeouts_total", "Connections dropped for not answering pings", registry=r)
        self.slow_readers = Counter("chatgw_slow_readers_total", "Connections dropped for not reading", registry=r)
        self.bot_answers = Counter("chatgw_bot_answers_total", "Bot turns by backend and outcome", ["backend", "outcome"], registry=r)
        self.bot_handoffs = Counter("chatgw_bot_handoffs_total", "Conversations handed from a bot to people", ["reason"], registry=r)
        self.bot_cancelled = Counter("chatgw_bot_cancelled_total", "Bot calls cancelled (visitor left, agent took over)", registry=r)
        self.auth_failures = Counter("chatgw_auth_failures_total", "Upgrades refused with 401 and token refreshes refused", registry=r)
        self.retried_steps = Counter("chatgw_retried_steps_total", "Steps after an answer or an append tried again because shared state was away", ["step"], registry=r)
        self.tokens_expired = Counter("chatgw_tokens_expired_total", "Connections closed because their token expired unrefreshed", registry=r)


METRICS = _Metrics()

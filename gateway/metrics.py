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
        # Operations (docs/operations.md).
        self.client_faults = Counter("chatgw_client_faults_total", "Connections a client's fault ended or refused (protocol error, flood, handshake timeout, oversize request)", ["kind"], registry=r)
        self.upgrades_refused = Counter("chatgw_upgrades_refused_total", "WebSocket upgrades answered with an HTTP error, by status", ["status"], registry=r)
        self.memory_rss = Gauge("chatgw_memory_rss_bytes", "Resident set size at the memory guard's last check", registry=r)
        self.memory_guard_state = Gauge("chatgw_memory_guard_state", "Memory guard: 0 ok, 1 soft (upgrades refused), 2 hard (idlest connections closed)", registry=r)
        self.memory_guard_closed = Counter("chatgw_memory_guard_closed_total", "Connections the memory guard closed with 1013", registry=r)
        self.config_reloads = Counter("chatgw_config_reloads_total", "Configuration reloads (SIGHUP), by outcome", ["outcome"], registry=r)
        self.draining = Gauge("chatgw_draining", "1 while the node drains (readiness false, upgrades refused)", registry=r)


METRICS = _Metrics()

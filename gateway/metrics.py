"""Prometheus metrics of one node (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("chatgw_connections", "Open WebSocket connections", ["role"], registry=r)
        self.envelopes_in = Counter("chatgw_envelopes_in_total", "Envelopes accepted from clients", registry=r)
        self.messages = Counter("chatgw_messages_total", "Messages appended to conversation logs", registry=r)
        self.duplicates = Counter("chatgw_duplicate_messages_total", "Retried messages acked with their first seq", registry=r)
        self.conversations_opened = Counter("chatgw_conversations_opened_total", "Conversations opened", registry=r)
        self.assignments = Counter("chatgw_assignments_total", "Conversations assigned or transferred to an agent", registry=r)
        self.requeued = Counter("chatgw_requeued_total", "Conversations returned to the queue after agent loss", registry=r)
        self.heartbeat_timeouts = Counter("chatgw_heartbeat_timeouts_total", "Connections dropped for not answering pings", registry=r)
        self.slow_readers = Counter("chatgw_slow_readers_total", "Connections dropped for not reading", registry=r)
        self.bot_answers = Counter("chatgw_bot_answers_total", "Bot turns by backend and outcome", ["backend", "outcome"], registry=r)
        self.bot_handoffs = Counter("chatgw_bot_handoffs_total", "Conversations handed from a bot to people", ["reason"], registry=r)
        self.bot_cancelled = Counter("chatgw_bot_cancelled_total", "Bot calls cancelled (visitor left, agent took over)", registry=r)
        self.auth_failures = Counter("chatgw_auth_failures_total", "Upgrades refused with 401", registry=r)


METRICS = _Metrics()

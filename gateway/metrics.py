"""Prometheus metrics of one node (served at /metrics)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


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


class HotHistogram(Collector):
    """A histogram observed on the message path: a bisect and an increment, no lock (the loop's
    thread is the only writer), cumulated at scrape time. prometheus_client's Histogram takes a
    lock and walks its buckets per observation, about 2 us; this about 0.2 us."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1  # le: the first bound at or above it
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, out = 0, []
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            cumulative += n
            out.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.doc, buckets=out, sum_value=self.sum)


class Sampled(Collector):
    """Gauges and counters read from elsewhere at scrape time (`read()` -> {name: (kind, doc, value)})."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        for name, (kind, doc, value) in self.read().items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc, value=value)


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)


def _redis_sent() -> dict[str, tuple[str, str, float]]:
    from .coordinator.redis.pipe import Sent

    return {"chatgw_redis_commands": ("counter", "Commands this node sent to Redis (not the calls its scripts make)",
                                      Sent.commands),
            "chatgw_redis_round_trips": ("counter", "Writes to Redis sockets, each a command or a batch: round trips",
                                         Sent.writes)}


disable_created_metrics()  # a `_created` gauge per counter doubles the series for nothing a dashboard reads


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds
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
        self.memory_guard_state = Gauge("chatgw_memory_guard_state", "Memory guard: 0 ok, 1 soft (upgrades refused), 2 hard (idlest connections closed)", registry=r)
        self.memory_guard_closed = Counter("chatgw_memory_guard_closed_total", "Connections the memory guard closed with 1013", registry=r)
        self.config_reloads = Counter("chatgw_config_reloads_total", "Configuration reloads (SIGHUP), by outcome", ["outcome"], registry=r)
        self.ack_latency = HotHistogram("chatgw_ack_seconds", "From a message's frame (the sender's last data frame "
                                        "read) to its ack being queued: the log's append, and with a store its commit",
                                        LATENCY_BUCKETS)
        r.register(self.ack_latency)
        r.register(Sampled(_redis_sent))
        self.queue_length = Gauge("chatgw_queue_length", "Conversations waiting in a group's queues, all tenants "
                                  "(as this node last saw them)", ["group"], registry=r)
        self.queue_wait = Histogram("chatgw_queue_wait_seconds", "From joining a queue to being assigned an agent",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.assignment_latency = Histogram("chatgw_assignment_seconds", "One assignment: from taking the queue's head "
                                            "to the agent being told", buckets=LATENCY_BUCKETS, registry=r)
        self.bot_first_chunk = Histogram("chatgw_bot_first_chunk_seconds", "From a bot turn's start to the first "
                                         "streamed chunk", ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.bot_answer = Histogram("chatgw_bot_answer_seconds", "From a bot turn's start to its whole answer",
                                    ["backend"], buckets=LATENCY_BUCKETS + (10.0, 30.0, 60.0), registry=r)
        self.bot_breaker = Gauge("chatgw_bot_breaker_state", "A bot backend's circuit breaker: 0 closed, 1 half open, "
                                 "2 open (read from the bot worker at scrape time)", ["backend"], registry=r)
        self.draining = Gauge("chatgw_draining", "1 while the node drains (readiness false, upgrades refused)", registry=r)


METRICS = _Metrics()

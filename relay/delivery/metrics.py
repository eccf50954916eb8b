"""What a relay counts: changes matched, deliveries by outcome, lag, backlog, paused webhooks.

Each Worker has its own registry (several in one process, as in tests, do not share counts);
relay/service/endpoint.py serves it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    """One Worker's Prometheus metrics, in a registry of its own: several Workers in one process (as
    in tests) keep separate counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.changes = Counter(
            "relay_changes_total",
            "Changes matched against the rules, by result (matched, skipped, failed).",
            ["result"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "relay_deliveries_total",
            "Delivery attempts by webhook and outcome (delivered, retry, failed).",
            ["webhook", "outcome"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "relay_attempt_duration_seconds",
            "Time from sending a request to its answer (or error), by webhook.",
            ["webhook"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lag_seconds = Histogram(
            "relay_delivery_lag_seconds",
            "From the change's transaction to its delivery, by webhook.",
            ["webhook"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backlog = Gauge(
            "relay_backlog_changes",
            "Changes not yet delivered, failed or skipped (whole database).",
            registry=self.registry,
        )
        self.oldest_pending = Gauge(
            "relay_oldest_pending_seconds",
            "Age of the oldest pending change (0 when none).",
            registry=self.registry,
        )
        self.held_bytes = Gauge(
            "relay_held_bytes",
            "Memory this relay counts for the changes it holds (claimed, being matched or sent):"
            " three times their JSON; claims wait while it is near RELAY_MAX_HELD_BYTES.",
            registry=self.registry,
        )
        self.paused = Gauge(
            "relay_webhook_paused",
            "1 while the circuit breaker holds a webhook back, else 0.",
            ["webhook"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format, as /metrics serves it."""
        return generate_latest(self.registry)

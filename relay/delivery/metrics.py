"""What a relay counts: changes matched, deliveries by outcome, lag, backlog, webhooks' states.

Each Worker has its own registry (several in one process, as in tests, do not share counts);
relay/service/endpoint.py serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from relay.store import WebhookGauge

STATES = ("active", "failing", "paused", "dead", "disabled")
"""A webhook's states, as ``relay status`` names them (the query webhook_gauges)."""

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

        self.dead_pauses = Counter(
            "relay_webhook_dead_pauses_total",
            "Webhooks this relay paused as dead: their endpoint failed for longer than "
            "dead_after without one success.",
            ["webhook"],
            registry=self.registry,
        )
        self.webhook_pending = Gauge(
            "relay_webhook_pending",
            "Pending deliveries per webhook (whole database).",
            ["webhook"],
            registry=self.registry,
        )
        self.webhook_in_flight = Gauge(
            "relay_webhook_in_flight",
            "Deliveries per webhook leased now by some relay (being sent).",
            ["webhook"],
            registry=self.registry,
        )
        self.webhook_oldest_pending = Gauge(
            "relay_webhook_oldest_pending_seconds",
            "Age of the change of the webhook's oldest pending delivery (0 when none).",
            ["webhook"],
            registry=self.registry,
        )
        self.webhook_state = Gauge(
            "relay_webhook_state",
            "1 for the webhook's state (active, failing, paused, dead, disabled), else 0.",
            ["webhook", "state"],
            registry=self.registry,
        )

    def webhooks(self, gauges: Sequence[WebhookGauge]) -> None:
        """Set the per-webhook gauges from one reading; webhooks gone since lose theirs."""
        seen = {gauge.name for gauge in gauges}
        for metric in (self.webhook_pending, self.webhook_in_flight, self.webhook_oldest_pending):
            for labels in _labels(metric):
                if labels[0] not in seen:
                    metric.remove(*labels)
        for labels in _labels(self.webhook_state):
            if labels[0] not in seen:
                self.webhook_state.remove(*labels)
        for gauge in gauges:
            self.webhook_pending.labels(gauge.name).set(gauge.pending)
            self.webhook_in_flight.labels(gauge.name).set(gauge.in_flight)
            self.webhook_oldest_pending.labels(gauge.name).set(gauge.oldest_pending_seconds)
            for state in STATES:
                self.webhook_state.labels(gauge.name, state).set(int(gauge.state == state))

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format, as /metrics serves it."""
        return generate_latest(self.registry)


def _labels(metric: Gauge) -> list[tuple[str, ...]]:
    """The label values the gauge has children for."""
    return [tuple(labels) for labels in metric._metrics]  # keyed by their label values

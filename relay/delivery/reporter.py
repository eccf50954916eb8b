"""What the relay says about its attempts: log lines, metrics and the breaker's turns.

The worker and the executor decide; this module only tells. Every attempt's line, its outcome's
word (delivered, retrying, failed) and its level are written here once, for a delivery alone
and for a batch, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from relay.delivery.breaker import Breaker, Turn
from relay.delivery.metrics import Metrics
from relay.delivery.record import Result
from relay.delivery.send import Outcome
from relay.reasons import describe

if TYPE_CHECKING:
    from relay.store import Claimed, DeadPause

log = structlog.get_logger("relay.worker")


class Reporter:
    """Logs, counts and turns the breaker for one relay process. ``names`` gives what the log
    calls a webhook (its name, or its id once no enabled rule has it)."""

    def __init__(self, names: Callable[[int], str], metrics: Metrics, breaker: Breaker) -> None:
        self.names = names
        self.metrics = metrics
        self.breaker = breaker

    def attempt(self, item: Claimed, result: Result) -> None:
        """One line per attempt: delivered, retrying (and when), or failed for good."""
        fields: dict[str, Any] = {
            "outbox_id": item.outbox_id,
            "webhook": self.names(item.webhook_id),
            "attempt": item.number,
        }
        _say("delivery", fields, result)

    def batch(self, items: list[Claimed], result: Result) -> None:
        """One line per attempt at a batch: which changes it carried, and what became of it."""
        fields: dict[str, Any] = {
            "batch_id": items[0].batch_id,
            "changes": len(items),
            "first_outbox_id": items[0].outbox_id,
            "last_outbox_id": items[-1].outbox_id,
            "webhook": self.names(items[0].webhook_id),
            "attempt": items[0].number,
        }
        _say("batch", fields, result)

    def exhausted(self, item: Claimed, why: str) -> None:
        """A delivery claimed past its max attempts fails unsent: its last attempt, logged."""
        log.error(
            "delivery",
            outbox_id=item.outbox_id,
            webhook=self.names(item.webhook_id),
            attempt=item.number - 1,
            outcome="failed",
            error=why,
        )

    def turned(self, webhook_id: int, outcome: Outcome) -> None:
        """Count the outcome in the webhook's breaker; log and show when it turns."""
        turn = self.breaker.record(webhook_id, ok=outcome.ok, sent=outcome.sent)
        if turn is Turn.RESUMED:
            log.info("webhook resumed", webhook=self.names(webhook_id), by="circuit breaker")
            self.metrics.paused.labels(self.names(webhook_id)).set(0)
        elif turn is Turn.PAUSED:
            log.warning(
                "webhook paused",
                webhook=self.names(webhook_id),
                by="circuit breaker",
                failures=self.breaker.consecutive(webhook_id),
                seconds=self.breaker.cooldown,
                error=outcome.error,
            )
        if self.breaker.paused_for(webhook_id) > 0:
            self.metrics.paused.labels(self.names(webhook_id)).set(1)

    def counted(self, item: Claimed, result: Result, *, timed: bool = True) -> None:
        """Count a delivery's outcome once it is written; ``timed``: observe its attempt's
        duration too (once per request: a batch's changes share one)."""
        if not result.counted:
            return
        name = self.names(item.webhook_id)
        outcome = "retry" if result.status == "pending" else result.status
        self.metrics.deliveries.labels(name, outcome).inc()
        if result.outcome.sent and timed:
            self.metrics.attempt_seconds.labels(name).observe(result.outcome.duration)
        if result.status == "delivered":
            lag = time.time() - item.change.created_at.timestamp()
            self.metrics.lag_seconds.labels(name).observe(max(lag, 0.0))

    @staticmethod
    def not_recorded(item: Claimed, error: BaseException) -> None:
        """An outcome the recorder could not write: the lease expires and another attempt
        follows."""
        log.error("could not record outcome", outbox_id=item.outbox_id, error=describe(error))

    def dead(self, paused: DeadPause) -> None:
        """The recorder paused a webhook as dead: say so once, at warning, with how to resume,
        and count it."""
        log.warning(
            "webhook paused as dead",
            webhook=paused.name,
            failing_since=paused.failing_since.isoformat(),
            dead_after_s=paused.dead_after_seconds,
            error=paused.last_error,
            resume=f"relay webhook resume {paused.name} (its pending deliveries then go out, "
            "in order)",
        )
        self.metrics.dead_pauses.labels(paused.name).inc()


def _say(event: str, fields: dict[str, Any], result: Result) -> None:
    """The line of an attempt (a delivery's or a batch's) at its level: info when delivered,
    warning for a failed attempt that will be retried, error for a change that failed for good
    (to that webhook)."""
    outcome = result.outcome
    fields["status_code"] = outcome.status
    fields["duration_ms"] = round(outcome.duration * 1000, 1)
    if result.status == "pending":
        fields["next_attempt_in_s"] = round(result.retry_in, 1)
        said, word = log.warning, "retrying"
    elif result.status == "delivered":
        said, word = log.info, "delivered"
    else:
        said, word = log.error, "failed"
    said(event, **fields, outcome=word, error=outcome.error)

"""The retry policy: how many attempts a delivery gets and how long it waits between them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from relay.delivery.send import Outcome
from relay.model import Webhook
from relay.settings import Settings

Status = Literal["delivered", "pending", "failed"]


@dataclass(frozen=True)
class RetryPolicy:
    """One webhook's policy: its own values where it has them, the relay's settings otherwise
    (so one slow receiver can get a day of retries without giving every webhook a day)."""

    max_attempts: int
    base_seconds: float
    max_seconds: float
    attempts_from: str = "RELAY_MAX_ATTEMPTS"
    """Where max_attempts came from, for the error that says a delivery ran out of them."""

    @classmethod
    def of(cls, settings: Settings, webhook: Webhook | None = None) -> RetryPolicy:
        """The policy for ``webhook``'s deliveries (the settings' alone for a deleted one)."""
        own = webhook or Webhook(id=0, name="", payload_url="")
        return cls(
            own.max_attempts or settings.max_attempts,
            _seconds(own.retry_base_seconds, settings.retry_base_seconds),
            _seconds(own.retry_max_seconds, settings.retry_max_seconds),
            "RELAY_MAX_ATTEMPTS" if own.max_attempts is None else "the webhook's max_attempts",
        )

    def gives_up(self, attempt: int) -> bool:
        """Whether a failed ``attempt`` (1-based) was the last one."""
        return attempt >= self.max_attempts

    def after(self, outcome: Outcome, attempt: int, jitter: float) -> tuple[Status, float]:
        """What becomes of a delivery after ``attempt`` ended in ``outcome``: its new status,
        and the seconds until the next attempt when it stays pending."""
        if outcome.ok:
            return "delivered", 0.0
        if outcome.permanent or self.gives_up(attempt):
            return "failed", 0.0
        return "pending", self.delay(attempt, jitter, outcome.retry_after)

    def exhausted(self) -> str:
        """Why a delivery claimed once more than its max attempts allow fails unsent: its last
        attempts never reported an outcome (a relay died or lost its lease while sending)."""
        return (
            f"failed after {self.max_attempts} attempts ({self.attempts_from}); the last ones "
            "never reported an outcome (a relay stopped or lost its lease while sending)"
        )

    def delay(self, attempt: int, jitter: float, retry_after: float | None) -> float:
        """Seconds before the attempt after ``attempt``: the base, four times longer each time,
        times ``jitter`` (0.8 to 1.2, so that a webhook's retries do not all arrive together);
        at least the receiver's Retry-After, and never more than the cap."""
        growth = 4.0 ** min(attempt - 1, 64)  # past 4**64 the cap has long won
        delay = min(self.max_seconds, self.base_seconds * growth) * jitter
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_seconds)


def _seconds(own: Decimal | None, setting: float) -> float:
    return setting if own is None else float(own)

"""The circuit breaker: a receiver that keeps failing is left alone for a cool-down.

Each relay process keeps its own counts. Only sent requests count: a template or rule of ours
that fails says nothing about the receiver. After the cool-down one probe at a time goes out,
until a request succeeds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from enum import Enum


class Turn(Enum):
    """What an outcome did to its webhook's breaker, for the log and the paused gauge."""

    NONE = "none"
    PAUSED = "paused"
    """Opened now, or again after a failed probe."""
    RESUMED = "resumed"


class Breaker:
    """The circuit breakers of one relay process, one per webhook: ``failures`` sent requests
    failing in a row pause the webhook for ``cooldown`` seconds."""

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        """Consecutive failures of sent requests that pause a webhook."""
        self.cooldown = cooldown
        self._clock = clock
        self._count: dict[int, int] = defaultdict(int)
        self._until: dict[int, float] = {}

    def consecutive(self, webhook_id: int) -> int:
        """Sent requests to the webhook that failed in a row since its last success."""
        return self._count.get(webhook_id, 0)

    def paused_for(self, webhook_id: int) -> float:
        """Seconds left in the webhook's cool-down (0 or less: not paused)."""
        return self._until.get(webhook_id, 0.0) - self._clock()

    def record(self, webhook_id: int, *, ok: bool, sent: bool) -> Turn:
        """Count one outcome: a success resumes the webhook, the failure that reaches the
        limit pauses it (again, for a failed probe)."""
        if ok:
            self._until.pop(webhook_id, None)
            if self._count.pop(webhook_id, 0) >= self.failures:
                return Turn.RESUMED
            return Turn.NONE
        if not sent:
            return Turn.NONE
        self._count[webhook_id] += 1
        if self._count[webhook_id] < self.failures:
            return Turn.NONE
        already = self.paused_for(webhook_id) > 0
        self._until[webhook_id] = self._clock() + self.cooldown
        return Turn.NONE if already else Turn.PAUSED

    def held(
        self, held: Mapping[int, int], window: int, windows: Mapping[int, int] | None = None
    ) -> dict[int, int]:
        """What the claim query must think each webhook holds, given what it does hold: a
        paused webhook holds its whole window (so none is claimed), and one past its cool-down
        with failures still counted holds all but one (one probe at a time). ``windows``: the
        webhooks whose window is not ``window`` (a concurrency or rate limit of their own)."""
        counts = {hook: n for hook, n in held.items() if n}
        now = self._clock()
        for hook, until in self._until.items():
            size = (windows or {}).get(hook, window)
            if until > now:
                counts[hook] = size
            elif self._count.get(hook, 0) >= self.failures:
                counts[hook] = size if counts.get(hook) else size - 1
        return counts

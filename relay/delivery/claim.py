"""Claiming: which due deliveries this relay takes next, within the room it has.

The claim query (sql/queries.sql, claim_deliveries) is told how many deliveries and bytes this
process holds per webhook, so that a slow receiver holds only a bounded number of claims, never
holds up other work, and nothing waits in memory while its lease runs out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.delivery.holding import Holding
from relay.delivery.send import over_limit
from relay.model import Change
from relay.settings import Settings
from relay.store import ClaimedRow

PREFETCH = 2
"""Deliveries claimed per webhook, as a multiple of its concurrency: the next ones are ready
when a request ends, instead of a claim round trip later. They wait for a slot at most about
one request's time, well inside their lease."""


@dataclass(frozen=True)
class Claimed:
    """A delivery this relay holds the lease of, from its claim to its recorded outcome."""

    outbox_id: int
    webhook_id: int
    rule_id: int | None
    attempt: int
    """Attempts since the delivery was (last) armed: what RELAY_MAX_ATTEMPTS counts."""
    number: int
    """The attempt's number across re-queues: what the log and relay.attempts show."""
    change: Change
    held_bytes: int
    """What this delivery counts in the relay's Holding until its task ends."""
    refused: str | None = None
    """Why it cannot be sent without even reading it: its change is too large."""

    @classmethod
    def of(cls, row: ClaimedRow, max_change_bytes: int, model: str | None) -> Claimed:
        """A Claimed from a claimed row, its change given its table's ``model`` name: a change
        over ``max_change_bytes`` is refused without being read, and holds no bytes."""
        size = row.change_bytes
        refused = over_limit("change", size, max_change_bytes) if size > max_change_bytes else None
        return cls(
            row.outbox_id,
            row.webhook_id,
            row.rule_id,
            row.attempts,
            row.attempt_number,
            dataclasses.replace(row.change, model=model) if model else row.change,
            0 if refused else size,
            refused,
        )


def window(settings: Settings) -> int:
    """How many deliveries of one webhook a relay holds at most."""
    return settings.webhook_concurrency * PREFETCH


def parameters(
    *,
    limit: int,
    relay_id: str,
    settings: Settings,
    held: Mapping[int, int],
    holding: Holding,
) -> dict[str, Any]:
    """``claim_deliveries``' parameters: ``held`` is what each webhook counts as holding (see
    Breaker.held), ``holding`` the bytes this relay holds."""
    busy = sorted(set(held) | {hook for hook, n in holding.by_webhook.items() if n})
    return {
        "limit": limit,
        "lease_seconds": settings.lease_seconds,
        "relay_id": relay_id,
        "per_webhook": window(settings),
        "busy_ids": busy,
        "busy_counts": [held.get(hook, 0) for hook in busy],
        "busy_bytes": [holding.by_webhook.get(hook, 0) for hook in busy],
        "bytes_free": holding.room,
        "bytes_per_webhook": holding.per_webhook,
        "max_change_bytes": settings.max_body_bytes,
    }

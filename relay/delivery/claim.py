"""Claiming: which due deliveries this relay takes next, within the room it has.

The claim query (sql/queries/claim.sql, claim_deliveries) is told how many deliveries and bytes
this process holds per webhook, so that a slow receiver holds only a bounded number of claims,
never holds up other work, and nothing waits in memory while its lease runs out.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from relay.delivery.holding import Holding
from relay.delivery.send import over_limit
from relay.model import Webhook
from relay.settings import Settings
from relay.store import Claimed

BODY_OVERHEAD = 600
"""Bytes a change adds to a default batch body beside its images (NetBox's keys, timestamps,
ids): claim_batch keeps a new batch's estimated body within RELAY_MAX_BODY_BYTES."""
PREFETCH = 2
"""Deliveries claimed per webhook, as a multiple of its concurrency: the next ones are ready
when a request ends, instead of a claim round trip later. They wait for a slot at most about
one request's time, well inside their lease."""


def refusal(item: Claimed, max_change_bytes: int) -> str | None:
    """Why the delivery cannot be sent without even reading it: its change is too large (the
    claim brought it without its images), or it is superseded and nobody asked to send it
    anyway (whatever made it pending did not judge that: sent, the receiver would end on the
    older image; docs/operations.md)."""
    if item.superseded_unasked is not None:
        return f"superseded: change {item.superseded_unasked} of this row was delivered after it"
    size = item.change_bytes
    return over_limit("change", size, max_change_bytes) if size > max_change_bytes else None


def held_bytes(item: Claimed, max_change_bytes: int) -> int:
    """What the delivery counts in the relay's Holding until its task ends: nothing for a
    change too large to read."""
    return 0 if item.change_bytes > max_change_bytes else item.change_bytes


PACE_AHEAD_SECONDS = 1.0
"""A webhook with a rate limit: a relay holds at most what the limit lets go in this many
seconds, so that a claimed delivery waits for its slot for seconds (with a few relays), never
for its lease to run out."""
RATE_SPACING = 1.05
"""Requests to a webhook with a rate limit are this many times 1/rate_limit apart (take_slot):
5% of headroom for the jitter between the slot and the request's arrival (the relay's event
loop, the network), so that no second at the receiver sees more than rate_limit requests."""


def window(settings: Settings, hook: Webhook | None = None) -> int:
    """How many deliveries (or batches) of one webhook a relay holds at most. Without limits of
    its own, PREFETCH times RELAY_WEBHOOK_CONCURRENCY (this relay's slots, and the next
    requests ready). With a concurrency, that concurrency and no prefetch: the claim never
    leases more than it across relays (claim_deliveries), so everything leased may be in
    flight at once. With a rate limit, at most what goes in PACE_AHEAD_SECONDS."""
    if hook is None or hook.concurrency is None:
        size = settings.webhook_concurrency * PREFETCH
    else:
        size = hook.concurrency
    if hook is not None and hook.rate_limit is not None:
        size = min(size, max(math.ceil(float(hook.rate_limit) * PACE_AHEAD_SECONDS), 1))
    return size


def slots(settings: Settings, hook: Webhook | None) -> int:
    """How many requests to the webhook this relay has in flight at most: its concurrency (the
    claim keeps the total across relays within it), else RELAY_WEBHOOK_CONCURRENCY."""
    if hook is None or hook.concurrency is None:
        return settings.webhook_concurrency
    return hook.concurrency


def parameters(
    *,
    limit: int,
    relay_id: str,
    settings: Settings,
    held: Mapping[int, int],
    holding: Holding,
    batched: Sequence[int] = (),
    limited: Sequence[Webhook] = (),
    answered: Mapping[int, Collection[int]] | None = None,
) -> dict[str, Any]:
    """``claim_deliveries``' parameters: ``held`` is what each webhook counts as holding (see
    Breaker.held), ``holding`` the bytes this relay holds, ``batched`` the webhooks it claims
    batches for instead (claim_batch), ``limited`` those with a concurrency or rate limit of
    their own (each gets its :func:`window`), ``answered`` the deliveries per webhook whose
    receiver has answered and whose outcome is being written (see :func:`answered_pairs`)."""
    busy = sorted(set(held) | {hook for hook, n in holding.by_webhook.items() if n})
    return {
        "limit": limit,
        "lease_seconds": settings.lease_seconds,
        "relay_id": relay_id,
        "per_webhook": window(settings),
        "pace_ahead": PACE_AHEAD_SECONDS,
        "window_ids": [hook.id for hook in limited],
        "window_sizes": [window(settings, hook) for hook in limited],
        **answered_pairs(answered or {}),
        "busy_ids": busy,
        "busy_counts": [held.get(hook, 0) for hook in busy],
        "busy_bytes": [holding.by_webhook.get(hook, 0) for hook in busy],
        "bytes_free": holding.room,
        "bytes_per_webhook": holding.per_webhook,
        "max_change_bytes": settings.max_body_bytes,
        "batched_ids": list(batched),
    }


def answered_pairs(answered: Mapping[int, Collection[int]]) -> dict[str, list[int]]:
    """The deliveries (webhook, outbox id) this relay has had answered and whose outcome it is
    writing: their leases do not count against a webhook's concurrency (relay.leased_requests),
    so the next request goes as soon as the receiver answers, as with prefetch, while what is
    in flight across relays stays within the concurrency."""
    pairs = [(hook, outbox) for hook, ids in answered.items() for outbox in ids]
    return {
        "answered_webhooks": [hook for hook, _ in pairs],
        "answered_ids": [outbox for _, outbox in pairs],
    }


def batch_parameters(
    webhook: Webhook,
    *,
    relay_id: str,
    settings: Settings,
    holding: Holding,
    answered: Mapping[int, Collection[int]] | None = None,
) -> dict[str, Any]:
    """``claim_batch``'s parameters for one of ``webhook``'s batches, within the bytes the
    relay and the webhook may still hold."""
    webhook_room = holding.per_webhook - holding.by_webhook.get(webhook.id, 0)
    return {
        "webhook_id": webhook.id,
        "batch_size": webhook.batch_size,
        "wait_ms": webhook.batch_wait_ms,
        "lease_seconds": settings.lease_seconds,
        "relay_id": relay_id,
        "bytes_free": max(min(holding.room, webhook_room), 0),
        "max_change_bytes": settings.max_body_bytes,
        "body_bytes": settings.max_body_bytes,
        "body_overhead": BODY_OVERHEAD,
        "pace_ahead": PACE_AHEAD_SECONDS,
        **answered_pairs({webhook.id: (answered or {}).get(webhook.id, ())}),
    }

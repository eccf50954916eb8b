"""Replay: a webhook's changes of a stretch of time sent again, as ``relay replay`` and the
console's replay do it (the same code, so that both send the same).

A webhook's finished deliveries are made pending again in SQL (replay_rearm); the changes the
webhook never had a delivery of are matched here against its rules alone, as fan-out would
match them today (relay/delivery/plan.py), and written in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.delivery import coalesce, plan
from relay.delivery.plan import Arrival, Deliveries, row_key
from relay.rules.ruleset import RuleSet, judge
from relay.store import Added, Rearmed, Store

CHUNK = 1000
"""Changes matched at a time, their images read only for rules with conditions."""


@dataclass
class ReplayPlan:
    """New deliveries for one webhook, and the changes its rules could not be judged for."""

    deliveries: Deliveries = field(default_factory=Deliveries)
    unjudged: dict[int, str] = field(default_factory=dict)
    """Change id -> why no rule of the webhook could be judged for it (it is not replayed)."""
    busy: set[str] = field(default_factory=set)
    """Rows with a delivery to the webhook in flight: their changes are left out (one would
    overtake the later change in flight)."""
    left_busy: int = 0

    def add(self, arrivals: Iterable[Arrival], ruleset: RuleSet, webhook_id: int) -> None:
        """A delivery per change that one of the webhook's rules matches (the first names it).
        A change too large to read goes only through a rule without conditions."""
        for item in arrivals:
            keys = {row_key(item.change, item.change.pk_json)}
            if item.old_pk_json is not None:
                keys.add(row_key(item.change, item.old_pk_json))
            if keys & self.busy:
                self.left_busy += 1
                continue
            why = None
            for rule in ruleset.candidates(item.change):
                if rule.webhook.id != webhook_id:
                    continue
                if item.too_large and rule.conditions:
                    why = why or item.too_large
                    continue
                match = judge(rule, item.change)
                if match.verdict.matched:
                    self.deliveries.add(item, webhook_id, rule.id)
                    break
                why = why or match.error
            else:
                if why is not None:
                    self.unjudged[item.change.id] = why


@dataclass(frozen=True)
class Replayed:
    """What a replay queued: deliveries made pending again, the plan of new ones (with what it
    left out) and the new ones written."""

    armed: Rearmed
    new: ReplayPlan
    added: Added

    @property
    def total(self) -> int:
        """Changes queued for the webhook."""
        return self.armed.delivered + self.armed.failed + self.added.added

    @property
    def superseded(self) -> int:
        """Changes a later change of their row supersedes (left out unless asked for)."""
        return self.armed.superseded + self.added.superseded


def replay(
    store: Store,
    rules: RuleSet,
    window: dict[str, Any],
    statuses: list[str],
    *,
    new: bool,
    superseded: bool,
    limit: int,
) -> Replayed:
    """Queue the webhook's changes of ``window`` (webhook_id, since, until, schema_name,
    table_name) again, in the caller's transaction: those whose last outcome is one of
    ``statuses`` and, with ``new``, those it never had that its rules match now (a change larger
    than ``limit`` bytes fails for it, as in relay run). Deliveries are held first
    (hold_deliveries) until the caller's transaction ends."""
    busy = store.replay_hold(window["webhook_id"])
    armed = store.replay_rearm(window, statuses, busy, superseded=superseded)
    planned = ReplayPlan(busy=set(busy))
    added = Added(0, 0)
    if new:
        _match(store, rules, window, planned, limit)
        if planned.deliveries.outbox_ids:
            added = store.add_replay_deliveries(
                planned.deliveries.parameters(), superseded=superseded
            )
    return Replayed(armed, planned, added)


def _match(
    store: Store, rules: RuleSet, window: dict[str, Any], into: ReplayPlan, limit: int
) -> None:
    """Match, a chunk at a time, the changes in the window the webhook never had. For a
    webhook that coalesces, a group's last change is its group's event again, as fan-out made
    it (the query leaves the group's other changes out)."""
    after = 0
    while rows := store.replay_candidates(window, after, CHUNK):
        after = rows[-1]["id"]
        firsts = [row["coalesced_from"] for row in rows if row["coalesced_from"] is not None]
        if firsts:
            grouping = coalesce.again(rows, store.change_heads(firsts))
            rows = [row for row in rows if row["id"] not in grouping.grouped] + grouping.events
        ready, to_read = plan.sort_out(rows, rules, limit)
        into.add(ready, rules, window["webhook_id"])
        if to_read:
            images = store.change_images(plan.image_ids(to_read))
            arrivals = (plan.arrival(row, rules, *plan.images_of(row, images)) for row in to_read)
            into.add(arrivals, rules, window["webhook_id"])

"""Replay planning: the deliveries a webhook's rules, as they are now, make of past changes.

``relay replay`` makes a webhook's finished deliveries pending again in SQL (replay_rearm); the
changes the webhook never had a delivery of are matched here against its rules alone, as
fan-out would match them today (relay/delivery/plan.py), and written by the command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.delivery.plan import Arrival, Deliveries, row_key
from relay.rules.ruleset import RuleSet, judge


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

"""Fan-out: which deliveries a batch of changes makes, given the rules.

Pure planning, so that the worker (async) and tests (sync) run the same logic and differ only
in how they execute the named queries ``add_deliveries``, ``mark_fanned_out``,
``skip_changes`` and ``finish_changes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.render import Change
from relay.rules import RuleSet


def row_key(change: Change) -> str:
    """Identity of the changed row: per-row ordering applies to changes with the same key."""
    if change.pk_json is None:
        return f"{change.object_type}#{change.id}"
    return f"{change.object_type}:{change.pk_json}"


@dataclass
class Plan:
    outbox_ids: list[int] = field(default_factory=list)
    webhook_ids: list[int] = field(default_factory=list)
    rule_ids: list[int] = field(default_factory=list)
    row_keys: list[str] = field(default_factory=list)
    fanned_out: list[int] = field(default_factory=list)

    def deliveries(self) -> dict[str, Any]:
        return {
            "outbox_ids": self.outbox_ids,
            "webhook_ids": self.webhook_ids,
            "rule_ids": self.rule_ids,
            "row_keys": self.row_keys,
        }


def plan(changes: Iterable[Change], ruleset: RuleSet) -> Plan:
    """One delivery per matching webhook (the first matching rule names it)."""
    result = Plan()
    for change in changes:
        result.fanned_out.append(change.id)
        seen: set[int] = set()
        for rule in ruleset.matching(change):
            if rule.webhook.id in seen:
                continue
            seen.add(rule.webhook.id)
            result.outbox_ids.append(change.id)
            result.webhook_ids.append(rule.webhook.id)
            result.rule_ids.append(rule.id)
            result.row_keys.append(row_key(change))
    return result

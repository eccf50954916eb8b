"""Fan-out: which deliveries a batch of changes makes, given the rules.

Pure planning, so that the worker (async) and tests (sync) run the same logic and differ only
in how they execute the named queries of :meth:`Plan.statements`.

Matching is isolated per rule and per change, so that one bad rule or row costs only itself.
A rule that cannot be judged for a change (see relay.rules.judge) makes that change's delivery
to its webhook fail at once, with the reason as its one attempt, unless another rule sends the
change to the same webhook. A change that cannot be matched at all fails with the reason in
``relay.outbox.last_error``. Either way the fan-out moves on, and ``relay retry`` sends the
change again once the rule is fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.reasons import describe, reason
from relay.render import Change
from relay.rules import RuleSet, change_from_row


@dataclass(frozen=True)
class Arrival:
    """A change as fan-out sees it (a row of ``changes_to_fan_out``)."""

    change: Change
    old_pk_json: str | None
    """The primary key an UPDATE moved the row from, when it changed the key."""


def arrival(row: Mapping[str, Any], old: str | None, new: str | None) -> Arrival:
    """An Arrival from a ``changes_to_fan_out`` row and its images."""
    return Arrival(change_from_row({**row, "old": old, "new": new}), row["old_pk"])


def row_key(change: Change, pk_json: str | None) -> str:
    """Identity of a row: per-row ordering applies to changes with the same key. The key's
    text is the pk JSON exactly as PostgreSQL wrote it (never re-serialized here, so numbers
    keep their digits and the same row always gets the same key)."""
    if pk_json is None:
        return f"{change.object_type}#{change.id}"
    return f"{change.object_type}:{pk_json}"


@dataclass
class Deliveries:
    """Deliveries to write, as the columns the queries unnest."""

    outbox_ids: list[int] = field(default_factory=list)
    webhook_ids: list[int] = field(default_factory=list)
    rule_ids: list[int] = field(default_factory=list)
    row_keys: list[str] = field(default_factory=list)
    old_row_keys: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, item: Arrival, webhook_id: int, rule_id: int, error: str = "") -> None:
        change = item.change
        self.outbox_ids.append(change.id)
        self.webhook_ids.append(webhook_id)
        self.rule_ids.append(rule_id)
        self.row_keys.append(row_key(change, change.pk_json))
        old = item.old_pk_json
        self.old_row_keys.append(None if old is None else row_key(change, old))
        self.errors.append(error)

    def parameters(self, *, with_errors: bool = False) -> dict[str, Any]:
        columns = {
            "outbox_ids": self.outbox_ids,
            "webhook_ids": self.webhook_ids,
            "rule_ids": self.rule_ids,
            "row_keys": self.row_keys,
            "old_row_keys": self.old_row_keys,
        }
        return {**columns, "errors": self.errors} if with_errors else columns


@dataclass
class Plan:
    to_send: Deliveries = field(default_factory=Deliveries)
    failed: Deliveries = field(default_factory=Deliveries)
    """Deliveries that fail at once: no rule for their webhook could be judged."""
    unmatchable: dict[int, str] = field(default_factory=dict)
    """Changes that could not be matched at all, with the reason."""
    fanned_out: list[int] = field(default_factory=list)
    """Every other change of the batch."""

    @property
    def outbox_ids(self) -> list[int]:
        """The changes that go somewhere (one entry per delivery)."""
        return self.to_send.outbox_ids

    def statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The named queries that write the plan, in order, with their parameters."""
        yield "add_deliveries", self.to_send.parameters()
        if self.failed.outbox_ids:
            yield "add_failed_deliveries", self.failed.parameters(with_errors=True)
        if self.unmatchable:
            yield (
                "fail_changes",
                {
                    "ids": list(self.unmatchable),
                    "errors": list(self.unmatchable.values()),
                },
            )
        yield "mark_fanned_out", {"ids": self.fanned_out}
        yield "skip_changes", {"ids": self.fanned_out}
        yield "finish_changes", {"ids": self.fanned_out}


def plan(arrivals: Iterable[Arrival], ruleset: RuleSet) -> Plan:
    """One delivery per matching webhook (the first matching rule names it)."""
    result = Plan()
    for item in arrivals:
        change = item.change
        try:
            to_send, failed = _deliveries(change, ruleset)
        except Exception as exc:
            result.unmatchable[change.id] = reason(f"matching: {describe(exc)}")
            continue
        result.fanned_out.append(change.id)
        for webhook_id, rule_id in to_send.items():
            result.to_send.add(item, webhook_id, rule_id)
        for webhook_id, (rule_id, error) in failed.items():
            result.failed.add(item, webhook_id, rule_id, error)
    return result


def _deliveries(
    change: Change, ruleset: RuleSet
) -> tuple[dict[int, int], dict[int, tuple[int, str]]]:
    """Per webhook, the first rule that sends the change there; and per webhook no rule sends
    it to, the first rule that could not be judged, with its error."""
    to_send: dict[int, int] = {}
    failed: dict[int, tuple[int, str]] = {}
    for match in ruleset.evaluate(change):
        hook = match.rule.webhook.id
        if match.verdict.matched:
            to_send.setdefault(hook, match.rule.id)
        elif match.error is not None:
            failed.setdefault(hook, (match.rule.id, reason(match.error)))
    for hook in to_send:
        failed.pop(hook, None)
    return to_send, failed

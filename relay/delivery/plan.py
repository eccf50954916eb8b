"""The fan-out plan: which deliveries a batch of changes makes, given the rules.

Pure planning, testable without a database: relay/delivery/fanout.py reads the changes and has
the store write :meth:`Plan.statements`.

Matching is isolated per rule and per change, so that one bad rule or row costs only itself.
A rule that cannot be judged for a change (see relay.rules.judge) makes that change's delivery
to its webhook fail at once, with the reason as its one attempt, unless another rule sends the
change to the same webhook. A change that cannot be matched at all fails with the reason in
``relay.outbox.last_error``. Either way the fan-out moves on, and ``relay retry`` sends the
change again once the rule is fixed.

Fan-out reads a change's row images only when a rule with conditions must look at them (see
:func:`sort_out`), and never those of a change over RELAY_MAX_BODY_BYTES: its conditions cannot
be judged, so its delivery to every webhook with a rule for its table and event fails at once
with the reason, rather than vanish as skipped unseen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.delivery.send import over_limit
from relay.model import Change, Webhook
from relay.reasons import describe, reason
from relay.render.request import Renderer, RenderError, context
from relay.render.sandbox import budget
from relay.rules.ruleset import RuleSet

if TYPE_CHECKING:
    from relay.store import FanOutRow, PlanStatement


@dataclass(frozen=True)
class Arrival:
    """A change as fan-out sees it (a row of ``changes_to_fan_out``)."""

    change: Change
    """Without row images unless they were read for conditions."""
    old_pk_json: str | None
    """The primary key an UPDATE moved the row from, when it changed the key."""
    json_bytes: int
    """Its row images' JSON text, in bytes."""
    too_large: str | None = None
    """Why it was not read: over RELAY_MAX_BODY_BYTES."""
    target: int | None = None
    """The one webhook it is for (a backfill for one webhook), else None: every rule."""
    requeued: bool = False
    """Sent again (``relay retry``, the SQL reset): its later changes may have gone since."""
    rank: int = 0
    """Where it comes in commit order (:func:`commit_order`), for webhooks ordered by
    transaction or key: their deliveries' positions are drawn in this order."""
    coalesced_from: int | None = None
    """A group's event (relay/delivery/coalesce.py): the group's first change, whose old image
    it carries. Only the webhooks that coalesce take it."""
    grouped: bool = False
    """One change of a group: only the webhooks that do not coalesce take it on its own."""

    def takes(self, webhook: Webhook) -> bool:
        """Whether the webhook may take it: a group's event goes only to the webhooks that
        coalesce, a grouped change only to the others, any other change to all."""
        if self.coalesced_from is not None:
            return webhook.coalesce_changes
        return not (self.grouped and webhook.coalesce_changes)


def arrival(
    row: FanOutRow,
    ruleset: RuleSet,
    old: str | None = None,
    new: str | None = None,
    *,
    too_large: str | None = None,
    rank: int = 0,
    grouped: bool = False,
) -> Arrival:
    """An Arrival from a ``changes_to_fan_out`` row (or a group's event: relay/delivery/
    coalesce.py) and, if read, its images (:func:`images_of`), named by the ruleset's models;
    ``rank`` from :func:`commit_order`."""
    model = ruleset.model(row["schema_name"], row["table_name"])
    change = Change.from_row(row, old, new, model)
    first = row["coalesced_from"] if row.get("event") else None
    return Arrival(
        change,
        row["old_pk"],
        row["bytes"],
        too_large,
        row["target"],
        row["requeued"],
        rank,
        first,
        grouped and first is None,
    )


def images_of(
    row: FanOutRow, images: Mapping[int, tuple[str | None, str | None]]
) -> tuple[str | None, str | None]:
    """The old and new images of the row's change from ``change_rows``' answer: a group's
    event has its first change's old image and its own new one."""
    first = row["coalesced_from"] if row.get("event") else None
    old = images[first][0] if first is not None else images[row["id"]][0]
    return old, images[row["id"]][1]


def image_ids(rows: Iterable[FanOutRow]) -> list[int]:
    """The changes whose images the rows need (a group's event: its first's too)."""
    ids: list[int] = []
    for row in rows:
        ids.append(row["id"])
        first = row["coalesced_from"] if row.get("event") else None
        if first is not None:
            ids.append(first)
    return ids


def sort_out(
    rows: Iterable[FanOutRow],
    ruleset: RuleSet,
    max_body_bytes: int,
    ranks: dict[int, int] | None = None,
    grouped: set[int] | None = None,
) -> tuple[list[Arrival], list[FanOutRow]]:
    """The changes that can be matched as they are, and the rows whose images must be read
    first: those a rule with conditions looks at (no other rule reads the row), unless they are
    too large to read at all. ``ranks``: :func:`commit_order`'s; ``grouped``: the changes in a
    coalesced group (relay/delivery/coalesce.py), whose events are among ``rows``."""
    ranks = ranks or {}
    grouped = grouped or set()
    ready: list[Arrival] = []
    to_read: list[FanOutRow] = []
    # Else no row is looked at; an ordering key is rendered from the row, as a condition reads it.
    conditions = any(rule.conditions or _keyed(rule.webhook) for rule in ruleset.rules)
    for row in rows:
        size = row["bytes"]
        too_large = over_limit("change", size, max_body_bytes) if size > max_body_bytes else None
        item = arrival(
            row,
            ruleset,
            too_large=too_large,
            rank=ranks.get(row["id"], 0),
            grouped=row["id"] in grouped,
        )
        if (
            conditions
            and not too_large
            and any(
                rule.conditions or _keyed(rule.webhook)
                for rule in ruleset.candidates(item.change, item.target)
                if item.takes(rule.webhook)
            )
        ):
            to_read.append(row)
        else:
            ready.append(item)
    return ready, to_read


def groups(rows: Iterable[FanOutRow], limit: int) -> Iterator[list[FanOutRow]]:
    """Consecutive ``changes_to_fan_out`` rows of at most ``limit`` bytes of images together (a
    larger single change alone), to be read one group at a time."""
    group: list[FanOutRow] = []
    size = 0
    for row in rows:
        if group and size + row["bytes"] > limit:
            yield group
            group, size = [], 0
        group.append(row)
        size += row["bytes"]
    if group:
        yield group


def _keyed(webhook: Webhook) -> bool:
    return webhook.ordering == "key"


def commit_order(rows: Iterable[FanOutRow]) -> dict[int, int]:
    """Each change's rank in the order its deliveries to ordered webhooks take their positions
    (0026_steering.sql): transactions one after another, by the largest id each has among
    ``rows``, and each transaction's changes in id order.

    Why this is commit order where it matters: capture takes a change's id as the change is
    made, so a transaction's last id precedes its commit. A transaction that saw another's
    commit before it wrote (it read its rows, or waited for a row lock it held: every later
    change of a row) took its own last id after that commit: its largest id is the larger. Two
    transactions that ran side by side without either seeing the other may go in either order;
    no receiver can tell. Across passes, a pass sees a prefix of the commits (a snapshot), so
    what a pass newly sees committed after what earlier passes saw, and the positions drawn
    later are larger. A pass cut by its limit reads the rest of the transactions it cut
    (fanout.py), so no transaction's changes are placed around another's.

    Per-row order follows: a later change of a row is in the same transaction after the
    earlier one, or in a transaction that waited for the earlier one's row lock."""
    rows = list(rows)
    last: dict[str, int] = {}
    for row in rows:
        last[row["txid"]] = max(last.get(row["txid"], row["id"]), row["id"])
    ordered = sorted(rows, key=lambda row: (last[row["txid"]], row["id"]))
    return {row["id"]: rank for rank, row in enumerate(ordered)}


_keys = Renderer()
"""Renders ordering keys (in the sandbox, within a budget, without ``env``)."""


def order_key(webhook: Webhook, change: Change, action_data: Any = None) -> str | None:
    """The order key of a delivery of ``change`` to ``webhook``: None in row scope, '' for the
    whole webhook in transaction scope, the rendered ``ordering_key`` in key scope (held as its
    SHA-256 past :data:`ROW_KEY_JSON_BYTES`, as row keys are: it is indexed). Raises
    RenderError, naming the field, when the template fails."""
    if webhook.ordering == "transaction":
        return ""
    if webhook.ordering != "key":
        return None
    with budget():
        key = _keys.render(webhook.ordering_key or "", context(change, action_data), "ordering_key")
    data = key.encode()
    if len(data) > ROW_KEY_JSON_BYTES:
        return f"sha256:{hashlib.sha256(data).hexdigest()}"
    return key


ROW_KEY_JSON_BYTES = 2048
"""The longest primary-key JSON a row key holds as it is; a longer one is held as its SHA-256.
Row keys are indexed (deliveries_row_order and the like), and a B-tree entry holds at most
2,704 bytes: an application's key within its own index's limit can be longer than that as
relay writes it (a bytea key doubles in hex, every key gains its table's name and JSON's
quotes), and one such change would fail the fan-out of every change with it, for ever."""


def row_key(change: Change, pk_json: str | None) -> str:
    """Identity of a row: per-row ordering applies to changes with the same key. The key's
    text is the pk JSON exactly as PostgreSQL wrote it (never re-serialized here, so numbers
    keep their digits and the same row always gets the same key); over
    :data:`ROW_KEY_JSON_BYTES`, its SHA-256 (JSON never starts with ``sha256:``)."""
    if pk_json is None:
        return f"{change.object_type}#{change.id}"
    if len(pk_json) * 4 > ROW_KEY_JSON_BYTES:  # UTF-8 takes at most 4 bytes a character
        data = pk_json.encode()
        if len(data) > ROW_KEY_JSON_BYTES:
            return f"{change.object_type}:sha256:{hashlib.sha256(data).hexdigest()}"
    return f"{change.object_type}:{pk_json}"


@dataclass
class Deliveries:
    """Deliveries to write, as the columns the queries unnest."""

    outbox_ids: list[int] = field(default_factory=list)
    webhook_ids: list[int] = field(default_factory=list)
    rule_ids: list[int] = field(default_factory=list)
    row_keys: list[str] = field(default_factory=list)
    old_row_keys: list[str | None] = field(default_factory=list)
    change_bytes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    order_keys: list[str | None] = field(default_factory=list)
    """None in row scope (see :func:`order_key`)."""
    ranks: list[int] = field(default_factory=list)
    """Where the change comes in commit order (:func:`commit_order`): positions are drawn in
    this order."""
    coalesced_froms: list[int | None] = field(default_factory=list)
    """A group's event: the group's first change (relay/delivery/coalesce.py); else None."""

    def add(
        self,
        item: Arrival,
        webhook_id: int,
        rule_id: int,
        error: str = "",
        *,
        order: str | None = None,
        rank: int = 0,
    ) -> None:
        """Add a delivery of ``item``'s change to ``webhook_id``; ``error`` is the reason when it
        fails at once. Its row keys come from the pk text as PostgreSQL wrote it (see
        :func:`row_key`)."""
        change = item.change
        self.outbox_ids.append(change.id)
        self.webhook_ids.append(webhook_id)
        self.rule_ids.append(rule_id)
        self.row_keys.append(row_key(change, change.pk_json))
        old = item.old_pk_json
        self.old_row_keys.append(None if old is None else row_key(change, old))
        self.change_bytes.append(item.json_bytes)
        self.errors.append(reason(error) if error else "")
        self.order_keys.append(order)
        self.ranks.append(rank)
        self.coalesced_froms.append(item.coalesced_from)

    def parameters(self, *, with_errors: bool = False) -> dict[str, Any]:
        """The columns as a named query's parameters; ``with_errors`` adds the ``errors`` column,
        which only ``add_failed_deliveries`` takes."""
        columns = {
            "outbox_ids": self.outbox_ids,
            "webhook_ids": self.webhook_ids,
            "rule_ids": self.rule_ids,
            "row_keys": self.row_keys,
            "old_row_keys": self.old_row_keys,
            "change_bytes": self.change_bytes,
            "order_keys": self.order_keys,
            "ranks": self.ranks,
            "coalesced_froms": self.coalesced_froms,
        }
        return {**columns, "errors": self.errors} if with_errors else columns


@dataclass
class Plan:
    """What one batch of changes becomes: deliveries to send, deliveries that fail at once, changes
    that cannot be matched, and the rest. :meth:`statements` writes it."""

    to_send: Deliveries = field(default_factory=Deliveries)
    to_rearm: Deliveries = field(default_factory=Deliveries)
    """Deliveries of re-queued changes: armed again unless superseded or racing a later change
    of their row (``rearm_deliveries``)."""
    failed: Deliveries = field(default_factory=Deliveries)
    """Deliveries that fail at once: no rule for their webhook could be judged."""
    unmatchable: dict[int, str] = field(default_factory=dict)
    """Changes that could not be matched at all, with the reason."""
    fanned_out: list[int] = field(default_factory=list)
    """Every other change of the batch."""
    coalesced_into: dict[int, int] = field(default_factory=dict)
    """Changes coalesced into a later one of their row and transaction (relay.outbox.
    coalesced_into), from relay/delivery/coalesce.py."""
    notes: dict[int, str] = field(default_factory=dict)
    """Why a change has no delivery of its own, for those that end skipped (a coalesced one)."""

    @property
    def outbox_ids(self) -> list[int]:
        """The changes that go somewhere (one entry per delivery)."""
        return self.to_send.outbox_ids + self.to_rearm.outbox_ids

    def add(self, arrivals: Iterable[Arrival], ruleset: RuleSet) -> None:
        """One delivery per matching webhook (the first matching rule names it). Give a
        generator: each change, and its rows parsed for conditions, is let go once matched."""
        for item in arrivals:
            change = item.change
            try:
                to_send, failed = _deliveries(item, ruleset)
            except Exception as exc:
                self.unmatchable[change.id] = reason(f"matching: {describe(exc)}")
                continue
            self.fanned_out.append(change.id)
            deliveries = self.to_rearm if item.requeued else self.to_send
            rank = item.rank
            for webhook_id, rule_id in to_send.items():
                try:
                    order = _order_key(ruleset, webhook_id, rule_id, change)
                except RenderError as exc:  # the template's failure is this delivery's alone
                    self.failed.add(item, webhook_id, rule_id, str(exc))
                    continue
                except Exception as exc:  # the context could not be made (a row unreadable)
                    self.failed.add(item, webhook_id, rule_id, f"ordering_key: {describe(exc)}")
                    continue
                deliveries.add(item, webhook_id, rule_id, order=order, rank=rank)
            for webhook_id, (rule_id, error) in failed.items():
                self.failed.add(item, webhook_id, rule_id, error)

    def statements(self) -> Iterator[tuple[PlanStatement, dict[str, Any]]]:
        """The named queries that write the plan, in order, with their parameters. Re-queued
        changes' deliveries are judged while no relay claims or records (hold_deliveries, taken
        before anything else is written, so that it waits for nobody holding what it holds)."""
        if self.to_rearm.outbox_ids:
            yield "hold_deliveries", {}
        yield "add_deliveries", self.to_send.parameters()
        if self.to_rearm.outbox_ids:
            yield "rearm_deliveries", self.to_rearm.parameters()
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
        fanned_out = list(dict.fromkeys(self.fanned_out))  # a group's event has its last's id
        yield "mark_fanned_out", {"ids": fanned_out}
        if self.coalesced_into:
            yield (
                "mark_coalesced",
                {
                    "ids": list(self.coalesced_into),
                    "into_ids": list(self.coalesced_into.values()),
                },
            )
        notes = [self.notes.get(change_id, "") for change_id in fanned_out]
        yield "skip_changes", {"ids": fanned_out, "notes": notes}
        yield "finish_changes", {"ids": fanned_out}


def plan(arrivals: Iterable[Arrival], ruleset: RuleSet) -> Plan:
    """A plan for the changes (more can be added: see :meth:`Plan.add`)."""
    result = Plan()
    result.add(arrivals, ruleset)
    return result


def _order_key(ruleset: RuleSet, webhook_id: int, rule_id: int, change: Change) -> str | None:
    webhook = ruleset.webhook(webhook_id)
    if webhook is None or webhook.ordering == "row":
        return None
    rule = ruleset.by_id(rule_id)
    return order_key(webhook, change, rule.action_data if rule is not None else None)


def _deliveries(
    item: Arrival, ruleset: RuleSet
) -> tuple[dict[int, int], dict[int, tuple[int, str]]]:
    """Per webhook, the first rule that sends the change there; and per webhook no rule sends
    it to, the first rule that could not be judged, with its error (every rule for a change too
    large to read)."""
    to_send: dict[int, int] = {}
    failed: dict[int, tuple[int, str]] = {}
    if item.too_large:
        for rule in ruleset.candidates(item.change, item.target):
            if not item.takes(rule.webhook):
                continue
            failed.setdefault(rule.webhook.id, (rule.id, item.too_large))
        return to_send, failed
    for match in ruleset.evaluate(item.change, item.target):
        if not item.takes(match.rule.webhook):
            continue
        hook = match.rule.webhook.id
        if match.verdict.matched:
            to_send.setdefault(hook, match.rule.id)
        elif match.error is not None:
            failed.setdefault(hook, (match.rule.id, match.error))
    for hook in to_send:
        failed.pop(hook, None)
    return to_send, failed

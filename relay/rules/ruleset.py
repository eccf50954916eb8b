"""Which webhooks a change goes to: event rules loaded from the database and matched in memory.

Rules are indexed by table, so a change is only compared with the rules that name its table and
event, however many rules there are.

Judging one rule for one change never raises: a rule that cannot be used (conditions the
database took but relay cannot run, such as a pattern RE2 refuses) or a change that cannot be
read yields a :class:`Match` with an ``error``, and the fan-out records that delivery as failed
with the reason, while every other rule and change goes on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.db import Conn
from relay.model import Change, UnreadableJSON, Webhook, loads, related_name
from relay.reasons import describe
from relay.render.request import RenderError, TemplateChecker, context, header_line, secrets_of
from relay.rules import conditions
from relay.store import Models, RuleRow, Store, WebhookRow

_QUALIFIED = re.compile(r'^("(?:[^"]|"")+"|[^."]+)\.("(?:[^"]|"")+"|[^."]+)$')
"""``schema.table``, either part in double quotes when it holds a dot or a quote (``""`` for a
quote), the same pattern relay.check_event_rule accepts."""


def table_key(name: str) -> tuple[str, str] | None:
    """(schema, table) named by a rule's table entry; unquoted parts are taken as written (no
    case folding, as rules always were), quoted ones unquoted. None when it names no table."""
    match = _QUALIFIED.match(name)
    if match is None:
        return None
    schema, table = (
        part[1:-1].replace('""', '"') if part.startswith('"') else part for part in match.groups()
    )
    return schema, table


def rule_table(schema: str, table: str) -> str:
    """How a rule names the table (the inverse of :func:`table_key`): a part holding a dot or a
    double quote is quoted, so the name reads back as this table and no other."""
    return ".".join(
        f'"{part.replace(chr(34), chr(34) * 2)}"' if "." in part or '"' in part else part
        for part in (schema, table)
    )


class UnusableRule(Exception):
    """A rule whose stored conditions or action_data relay cannot use; the message says why."""


@dataclass(frozen=True)
class Rule:
    """An event rule with its webhook, as loaded. A rule relay cannot use stays in the set with its
    ``problem``, so its deliveries fail with the reason instead of vanishing."""

    id: int
    name: str
    tables: tuple[str, ...]
    events: tuple[str, ...]
    conditions: Any
    action_data: Mapping[str, Any]
    webhook: Webhook
    problem: str | None = None
    """Why the rule cannot be used (checked when it is loaded), or None."""

    def covers(self, change: Change) -> bool:
        """Whether the rule names the change's table and event (conditions aside)."""
        return change.op in self.events and change.table_key in {
            table_key(table) for table in self.tables
        }


@dataclass(frozen=True)
class Match:
    """One rule's verdict on one change; ``error`` says why when the rule could not be judged."""

    rule: Rule
    verdict: conditions.Verdict
    error: str | None = None
    """The rule could not be judged for this change: why (the verdict is then not matched)."""


@dataclass
class RuleSet:
    """The rules a process matches changes against, indexed by table and event. A reload builds a
    new one (see RuleWatcher) rather than changing this one."""

    rules: list[Rule]
    models: Models = field(default_factory=dict)
    """Each tracked table's model name (loaded with the rules, so changes need no lookup)."""
    _index: dict[tuple[tuple[str, str] | None, str], list[Rule]] = field(init=False, repr=False)
    _for_webhook: dict[tuple[int, tuple[str, str] | None], list[Rule]] = field(
        init=False, repr=False
    )
    _by_id: dict[int, Rule] = field(init=False, repr=False)
    _webhooks: dict[int, Webhook] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {rule.id: rule for rule in self.rules}
        self._webhooks = {rule.webhook.id: rule.webhook for rule in self.rules}
        self._index = defaultdict(list)
        self._for_webhook = defaultdict(list)
        for rule in self.rules:
            for key in {table_key(table) for table in rule.tables}:
                self._for_webhook[(rule.webhook.id, key)].append(rule)
                for event in rule.events:
                    self._index[(key, event)].append(rule)

    def by_id(self, rule_id: int | None) -> Rule | None:
        """The rule with this id, or None: a delivery may have no rule, or one since disabled or
        deleted."""
        return self._by_id.get(rule_id) if rule_id is not None else None

    def webhook(self, webhook_id: int) -> Webhook | None:
        """A webhook some enabled rule sends to."""
        return self._webhooks.get(webhook_id)

    def ordered(self) -> bool:
        """Whether a webhook the rules send to orders by transaction or key (0026): fan-out
        then places changes in commit order."""
        return any(hook.ordering != "row" for hook in self._webhooks.values())

    def coalescing(self) -> bool:
        """Whether a webhook the rules send to coalesces a row's changes within a transaction
        (0031): fan-out then groups them (relay/delivery/coalesce.py)."""
        return any(hook.coalesce_changes for hook in self._webhooks.values())

    def model(self, schema_name: str, table_name: str) -> str | None:
        """The model name the table's changes carry, None for the table's own name."""
        return self.models.get((schema_name, table_name))

    def batched(self) -> list[Webhook]:
        """The enabled webhooks that take changes in batches (batch_size > 1), by id."""
        return sorted(
            (hook for hook in self._webhooks.values() if hook.batch_size > 1 and hook.enabled),
            key=lambda hook: hook.id,
        )

    def limited(self) -> list[Webhook]:
        """The webhooks with a concurrency or a rate limit of their own (the claim gives each a
        window of its own: relay/delivery/claim.py), by id."""
        return sorted(
            (
                hook
                for hook in self._webhooks.values()
                if hook.concurrency is not None or hook.rate_limit is not None
            ),
            key=lambda hook: hook.id,
        )

    def secrets(self) -> set[str]:
        """Every secret of the webhooks the rules send to (see render.request.secrets_of)."""
        return {secret for hook in self._webhooks.values() for secret in secrets_of(hook)}

    def webhook_name(self, webhook_id: int) -> str:
        """What the log calls a webhook: its name, or its id once no enabled rule has it."""
        webhook = self._webhooks.get(webhook_id)
        return webhook.name if webhook else str(webhook_id)

    def candidates(self, change: Change, target: int | None = None) -> list[Rule]:
        """Rules naming the change's table and event, enabled with an enabled webhook. A change
        for one webhook (``target``: a backfill for that webhook) has that webhook's rules for
        its table, whatever events they name: the operator asked for it by name."""
        return self._rules(change.table_key, change.op, target)

    def takes_snapshots(self, table: tuple[str, str], target: int | None = None) -> bool:
        """Whether a snapshot of ``table`` (schema, name) goes anywhere: to ``target``, when
        one of its rules names the table; else when a rule names the table and the snapshot
        event."""
        return bool(self._rules(table, "snapshot", target))

    def _rules(self, table: tuple[str, str], op: str, target: int | None) -> list[Rule]:
        found = (
            self._for_webhook.get((target, table), [])
            if target is not None
            else self._index.get((table, op), [])
        )
        return [rule for rule in found if rule.webhook.enabled]

    def evaluate(self, change: Change, target: int | None = None) -> list[Match]:
        """Every candidate rule with its verdict (matched or why not). Rules without
        action_data share one context, built at most once per change (ten candidates each
        building their own cost 12% of throughput with 1,000 rules)."""
        shared: list[dict[str, Any]] = []

        def base() -> dict[str, Any]:
            if not shared:
                shared.append(context(change))
            return shared[0]

        return [judge(rule, change, base) for rule in self.candidates(change, target)]

    def matching(self, change: Change) -> list[Rule]:
        """The rules whose conditions hold for the change; one that cannot be judged is left out
        (:meth:`evaluate` says why)."""
        return [m.rule for m in self.evaluate(change) if m.verdict.matched]


def judge(rule: Rule, change: Change, base: Callable[[], dict[str, Any]] | None = None) -> Match:
    """The rule's verdict on the change, or, when it cannot be reached, why."""
    try:
        return Match(rule, verdict(rule, change, base))
    except UnusableRule as exc:
        why = f"rule {rule.name!r} cannot be used: {exc}"
    except UnreadableJSON as exc:
        why = f"rule {rule.name!r}: the change cannot be read: {exc}"
    except Exception as exc:
        why = f"matching rule {rule.name!r}: {describe(exc, secrets_of(rule.webhook))}"
    return Match(rule, conditions.Verdict(False, why), why)


def verdict(
    rule: Rule, change: Change, base: Callable[[], dict[str, Any]] | None = None
) -> conditions.Verdict:
    """Whether the rule's conditions hold for the change, and if not, why. ``base`` gives the
    change's context without action_data, for callers that judge several rules. Raises
    UnusableRule for a rule that cannot be used (see :func:`judge`)."""
    if rule.problem is not None:
        raise UnusableRule(rule.problem)
    if not rule.conditions:
        return conditions.Verdict(True)  # and the row need not be parsed
    if rule.action_data or base is None:
        return conditions.explain(rule.conditions, context(change, rule.action_data))
    return conditions.explain(rule.conditions, base())


def load(conn: Conn, *, everything: bool = False) -> RuleSet:
    """Enabled rules (all rules with ``everything``), each with its webhook."""
    store = Store(conn)
    return of_rows(store.rule_rows(everything=everything), store.models())


def of_rows(rows: Iterable[RuleRow], models: Models | None = None) -> RuleSet:
    """A RuleSet from ``load_rules`` rows. Never raises for a rule relay cannot use: it is kept with
    its ``problem``."""
    return RuleSet([_rule(row) for row in rows], models or {})


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def webhook_of(row: WebhookRow) -> Webhook:
    """The Webhook of a ``load_rules`` or ``unused_webhooks`` row (both name the webhook's columns
    alike)."""
    return Webhook(
        id=row["webhook_id"],
        name=row["webhook_name"],
        payload_url=row["payload_url"],
        http_method=row["http_method"],
        http_content_type=row["http_content_type"],
        additional_headers=row["additional_headers"],
        body_template=row["body_template"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=_epoch(row["previous_secret_until"]),
        signature=row["signature"],
        ssl_verification=row["ssl_verification"],
        ca_file_path=row["ca_file_path"],
        timeout_seconds=row["timeout_seconds"],
        enabled=row["webhook_enabled"],
        max_attempts=row["max_attempts"],
        retry_base_seconds=row["retry_base_seconds"],
        retry_max_seconds=row["retry_max_seconds"],
        batch_size=row["batch_size"],
        batch_wait_ms=row["batch_wait_ms"],
        concurrency=row["concurrency"],
        rate_limit=row["rate_limit"],
        ordering=row["ordering"],
        ordering_key=row["ordering_key"],
        body_format=row["body_format"],
        coalesce_changes=row["coalesce_changes"],
        paused=row["webhook_paused"],
        related=related_of(row["related"]),
    )


def related_of(text: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A webhook's ``related`` option as stored (relay.check_webhook checked its shape), in
    jsonb's order of keys (shorter first); empty when unset."""
    document = loads(text) if text else None
    if not isinstance(document, dict):
        return ()
    return tuple(
        (column, tuple(str(name) for name in names))
        for column, names in document.items()
        if isinstance(names, list) and names
    )


def _rule(row: RuleRow) -> Rule:
    webhook = webhook_of(row)
    rule_conditions, problem = _conditions(row["conditions"])
    try:
        action_data = loads(row["action_data"])
    except Exception as exc:
        action_data, problem = {}, problem or f"action_data cannot be read: {describe(exc)}"
    return Rule(
        id=row["id"],
        name=row["name"],
        tables=tuple(row["tables"]),
        events=tuple(row["events"]),
        conditions=rule_conditions,
        action_data=action_data,
        webhook=webhook,
        problem=problem,
    )


def _conditions(text: str | None) -> tuple[Any, str | None]:
    """The conditions as stored and, when evaluation could not run them, why. The database
    checks their form, but not regular expressions (RE2 syntax), and not rows saved before a
    check existed; loading validates again, so only what :func:`conditions.validate` accepts
    is ever evaluated."""
    if not text:
        return None, None
    try:
        document = loads(text)
        conditions.validate(document)
    except conditions.InvalidConditions as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"conditions cannot be read: {describe(exc)}"
    return document, None


@dataclass(frozen=True)
class Problem:
    """A template or condition that cannot work, located precisely."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check(
    rules: Iterable[Rule],
    renderer: TemplateChecker,
    unused: Iterable[Webhook] = (),
    more: Callable[[Webhook], str | None] = lambda hook: None,
) -> list[Problem]:
    """Compile every template and validate every condition (regexes included): of the rules'
    webhooks, and of ``unused`` ones (no rule calls them yet; one will). ``more`` says what
    else is wrong with a webhook (its CA file, which only the delivery side reads)."""
    problems: list[Problem] = []
    seen_webhooks: set[int] = set()
    for rule in rules:
        if rule.problem is not None:
            problems.append(Problem(f"rule {rule.name!r}", rule.problem))
        if rule.webhook.id not in seen_webhooks:
            seen_webhooks.add(rule.webhook.id)
            where = f"webhook {rule.webhook.name!r} (rule {rule.name!r})"
            problems += webhook_problems(rule.webhook, renderer, where, more)
    for hook in unused:
        where = f"webhook {hook.name!r} (no rule uses it)"
        problems += webhook_problems(hook, renderer, where, more)
    return problems


def webhook_problems(
    hook: Webhook,
    renderer: TemplateChecker,
    where: str,
    more: Callable[[Webhook], str | None] = lambda hook: None,
) -> list[Problem]:
    """What stops a webhook's templates (URL, body, each header line) from compiling, the
    header lines without a template that are not ``Name: Value`` (every request would fail),
    and what ``more`` finds."""
    fields = {"payload_url": hook.payload_url, "body_template": hook.body_template}
    for number, line in enumerate(hook.additional_headers.splitlines(), 1):
        fields[f"additional_headers line {number}"] = line
    problems = []
    for name, source in fields.items():
        try:
            renderer.check(source, name)
            if name.startswith("additional_headers") and "{" not in source:
                header_line(source, name)
        except RenderError as exc:
            problems.append(Problem(where, str(exc)))
    other = more(hook)
    if other is not None:
        problems.append(Problem(where, other))
    return problems


RelatedCheck = Callable[[tuple[str, str], str, str, tuple[str, ...]], str | None]
"""Why a table's column cannot nest the chosen columns of the row it references (Store.related_
problem: relay.related_rows asked for no key), or None."""


def related_problems(
    rules: Iterable[Rule], tables: Iterable[tuple[str, str]], why: RelatedCheck
) -> list[Problem]:
    """What stops a webhook's ``related`` option on the tracked ``tables`` its rules cover: a
    column that is no single-column foreign key, a chosen column the referenced table lacks, a
    grant the checking role has not (each once per webhook, table and column)."""
    known = list(tables)
    problems: list[Problem] = []
    seen: set[tuple[int, tuple[str, str], str]] = set()
    for rule in rules:
        for table in known:
            if f"{table[0]}.{table[1]}" not in rule.tables:
                continue
            for column, columns in rule.webhook.related:
                if (rule.webhook.id, table, column) in seen:
                    continue
                seen.add((rule.webhook.id, table, column))
                message = why(table, column, related_name(column), columns)
                if message is not None:
                    problems.append(Problem(f"webhook {rule.webhook.name!r}", message))
    return problems

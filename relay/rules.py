"""Which webhooks a change goes to: event rules loaded from the database and matched in memory.

Rules are indexed by table, so a change is only compared with the rules that name its table and
event, however many rules there are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay import conditions
from relay.db import Conn
from relay.render import Change, RenderError, TemplateChecker, Webhook, context, loads
from relay.sqlfiles import query


@dataclass(frozen=True)
class Rule:
    id: int
    name: str
    tables: tuple[str, ...]
    events: tuple[str, ...]
    conditions: Any
    action_data: Mapping[str, Any]
    webhook: Webhook


@dataclass(frozen=True)
class Match:
    rule: Rule
    verdict: conditions.Verdict


@dataclass
class RuleSet:
    rules: list[Rule]
    _index: dict[tuple[str, str], list[Rule]] = field(init=False, repr=False)
    _by_id: dict[int, Rule] = field(init=False, repr=False)
    _webhooks: dict[int, Webhook] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {rule.id: rule for rule in self.rules}
        self._webhooks = {rule.webhook.id: rule.webhook for rule in self.rules}
        self._index = defaultdict(list)
        for rule in self.rules:
            for table in rule.tables:
                for event in rule.events:
                    self._index[(table, event)].append(rule)

    def by_id(self, rule_id: int | None) -> Rule | None:
        return self._by_id.get(rule_id) if rule_id is not None else None

    def webhook(self, webhook_id: int) -> Webhook | None:
        """A webhook some enabled rule sends to."""
        return self._webhooks.get(webhook_id)

    def candidates(self, change: Change) -> list[Rule]:
        """Rules naming the change's table and event, enabled with an enabled webhook."""
        return [
            rule
            for rule in self._index.get((change.object_type, change.op), [])
            if rule.webhook.enabled
        ]

    def evaluate(self, change: Change) -> list[Match]:
        """Every candidate rule with its verdict (matched or why not). Rules without
        action_data share one context, built at most once per change (ten candidates each
        building their own cost 12% of throughput with 1,000 rules)."""
        shared: list[dict[str, Any]] = []

        def base() -> dict[str, Any]:
            if not shared:
                shared.append(context(change))
            return shared[0]

        return [Match(rule, verdict(rule, change, base)) for rule in self.candidates(change)]

    def matching(self, change: Change) -> list[Rule]:
        return [m.rule for m in self.evaluate(change) if m.verdict.matched]


def verdict(
    rule: Rule, change: Change, base: Callable[[], dict[str, Any]] | None = None
) -> conditions.Verdict:
    """Whether the rule's conditions hold for the change, and if not, why. ``base`` gives the
    change's context without action_data, for callers that judge several rules."""
    if not rule.conditions:
        return conditions.Verdict(True)  # and the row need not be parsed
    if rule.action_data or base is None:
        return conditions.explain(rule.conditions, context(change, rule.action_data))
    return conditions.explain(rule.conditions, base())


def load(conn: Conn, *, everything: bool = False) -> RuleSet:
    """Enabled rules (all rules with ``everything``), each with its webhook."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("load_rules"), {"everything": everything}).fetchall()
    return RuleSet([_rule(row) for row in rows])


async def load_async(conn: psycopg.AsyncConnection[Any]) -> RuleSet:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("load_rules"), {"everything": False})
        rows = await cur.fetchall()
    return RuleSet([_rule(row) for row in rows])


def _rule(row: Mapping[str, Any]) -> Rule:
    webhook = Webhook(
        id=row["webhook_id"],
        name=row["webhook_name"],
        payload_url=row["payload_url"],
        http_method=row["http_method"],
        http_content_type=row["http_content_type"],
        additional_headers=row["additional_headers"],
        body_template=row["body_template"],
        secret=row["secret"],
        signature=row["signature"],
        ssl_verification=row["ssl_verification"],
        ca_file_path=row["ca_file_path"],
        timeout_seconds=row["timeout_seconds"],
        enabled=row["webhook_enabled"],
    )
    return Rule(
        id=row["id"],
        name=row["name"],
        tables=tuple(row["tables"]),
        events=tuple(row["events"]),
        conditions=loads(row["conditions"]) if row["conditions"] else None,
        action_data=loads(row["action_data"]),
        webhook=webhook,
    )


def change_from_row(row: Mapping[str, Any]) -> Change:
    """A Change from the ``outbox_change`` query."""
    return Change(
        id=row["id"],
        schema_name=row["schema_name"],
        table_name=row["table_name"],
        op=row["op"],
        old_json=row["old"],
        new_json=row["new"],
        pk_json=row["pk"],
        username=row["username"],
        request_id=row["request_id"],
        txid=row["txid"],
        created_at=row["created_at"],
    )


def fetch_change(conn: Conn, outbox_id: int) -> Change | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("outbox_change"), {"id": outbox_id}).fetchone()
    return change_from_row(row) if row else None


@dataclass(frozen=True)
class Problem:
    """A template or condition that cannot work, located precisely."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check(rules: Iterable[Rule], renderer: TemplateChecker) -> list[Problem]:
    """Compile every template and validate every condition (regexes included)."""
    problems: list[Problem] = []
    seen_webhooks: set[int] = set()
    for rule in rules:
        try:
            conditions.validate(rule.conditions)
        except conditions.InvalidConditions as exc:
            problems.append(Problem(f"rule {rule.name!r}", str(exc)))
        hook = rule.webhook
        if hook.id in seen_webhooks:
            continue
        seen_webhooks.add(hook.id)
        fields = {"payload_url": hook.payload_url, "body_template": hook.body_template}
        for number, line in enumerate(hook.additional_headers.splitlines(), 1):
            fields[f"additional_headers line {number}"] = line
        for name, source in fields.items():
            try:
                renderer.check(source, name)
            except RenderError as exc:
                problems.append(Problem(f"webhook {hook.name!r} (rule {rule.name!r})", str(exc)))
    return problems

"""``relay rule``: which changes go to which webhook."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from relay.cli.common import (
    Dsn,
    add_row,
    admin,
    admin_session,
    checked,
    fail,
    group,
    named,
    out,
    print_fields,
    print_table,
    remove,
    split_all,
    switch,
)
from relay.rules import edits

rule_app = group("Event rules: which changes go to which webhook.")


@rule_app.command("add")
def rule_add(
    name: Annotated[str, typer.Argument(help="Unique name.")],
    webhook: Annotated[str, typer.Option("--webhook", help="Name of the webhook to call.")],
    table: Annotated[list[str], typer.Option("--table", help="schema.table; repeatable.")],
    dsn: Dsn,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="insert, update, delete, truncate, snapshot."),
    ] = None,
    conditions: Annotated[
        str | None, typer.Option(help="Conditions as JSON (NetBox syntax).")
    ] = None,
    action_data: Annotated[
        str | None, typer.Option(help="JSON object added to the context.")
    ] = None,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled")] = True,
) -> None:
    """Add an event rule."""
    with admin_session(dsn) as db:
        hook = named("webhook", admin.webhook_by_name, db, webhook)
        row = admin.EventRuleRow(
            name=name,
            tables=split_all(table),
            webhook_id=hook.id,
            enabled=enabled,
            conditions=checked(edits.rule_conditions, conditions or ""),
        )
        events = split_all(event)
        if events is not None:
            row.events = events
        if action_data is not None:
            row.action_data = checked(edits.action_data, action_data)
        db.add(row)
    out.print(f"rule {name} added", highlight=False)


@rule_app.command("edit")
def rule_edit(
    name: Annotated[str, typer.Argument(help="The rule to change.")],
    dsn: Dsn,
    webhook: Annotated[str | None, typer.Option("--webhook", help="Webhook to call.")] = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", help="schema.table; repeatable; replaces all.")
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="insert, update, delete, truncate, snapshot."),
    ] = None,
    conditions: Annotated[
        str | None, typer.Option(help="Conditions as JSON (NetBox syntax; 'null' for none).")
    ] = None,
    action_data: Annotated[
        str | None, typer.Option(help="JSON object added to the context.")
    ] = None,
) -> None:
    """Change some of a rule's fields; the others stay. The database checks them as on add."""
    given = [webhook, table, event, conditions, action_data]
    if all(value is None for value in given):
        fail("nothing to change: give at least one option (relay rule edit --help)", 2)
    with admin_session(dsn) as db:
        rule = named("rule", admin.rule_by_name, db, name)
        if webhook is not None:
            hook = named("webhook", admin.webhook_by_name, db, webhook)
            rule.webhook_id = hook.id
        if table is not None:
            rule.tables = split_all(table) or []
        if event is not None:
            rule.events = split_all(event) or []
        if conditions is not None:
            rule.conditions = checked(edits.rule_conditions, conditions)
        if action_data is not None:
            rule.action_data = checked(edits.action_data, action_data)
    out.print(f"rule {name} changed", highlight=False)


@rule_app.command("list")
def rule_list(dsn: Dsn) -> None:
    """List event rules."""
    with admin_session(dsn) as db:
        table = Table("name", "tables", "events", "conditions", "webhook", "enabled")
        for rule in admin.event_rules(db):
            add_row(
                table,
                rule.name,
                ", ".join(rule.tables),
                ",".join(rule.events),
                json.dumps(rule.conditions) if rule.conditions else "-",
                rule.webhook.name,
                "yes" if rule.enabled else "no",
            )
    print_table(table)


@rule_app.command("show")
def rule_show(name: str, dsn: Dsn) -> None:
    """Show one event rule."""
    with admin_session(dsn) as db:
        rule = named("rule", admin.rule_by_name, db, name)
        fields = {
            "name": rule.name,
            "enabled": rule.enabled,
            "tables": ", ".join(rule.tables),
            "events": ", ".join(rule.events),
            "webhook": rule.webhook.name,
            "conditions": json.dumps(rule.conditions, indent=2) if rule.conditions else "(none)",
            "action_data": json.dumps(rule.action_data),
        }
    print_fields(fields)


@rule_app.command("remove")
def rule_remove(name: str, dsn: Dsn) -> None:
    """Remove an event rule."""
    remove("rule", admin.rule_by_name, name, dsn)


@rule_app.command("enable")
def rule_enable(name: str, dsn: Dsn) -> None:
    """Match changes against a disabled rule again."""
    switch("rule", admin.rule_by_name, name, dsn, True)


@rule_app.command("disable")
def rule_disable(name: str, dsn: Dsn) -> None:
    """Stop matching changes against a rule (changes already matched still go)."""
    switch("rule", admin.rule_by_name, name, dsn, False)

"""``relay preview``: the request a rule would send for a change, without sending it."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from relay.cli.common import (
    BIGINT_MAX,
    EnvFile,
    OptionalDsn,
    database,
    dsn_of,
    fail,
    load_settings,
    out,
    visible,
)
from relay.db import first_line
from relay.delivery import coalesced
from relay.model import Change, loads, related_name
from relay.reasons import reason
from relay.render.pool import BlockingRenderPool
from relay.render.request import RenderError
from relay.rules import edits, ruleset
from relay.rules import preview as preview_module
from relay.store import Store

if TYPE_CHECKING:
    from relay.settings import Settings


def preview(
    rule: Annotated[str, typer.Option("--rule", help="Rule to preview.")],
    dsn: OptionalDsn = None,
    env_file: EnvFile = None,
    outbox_id: Annotated[
        list[int] | None,
        typer.Option(
            min=1,
            max=BIGINT_MAX,
            help="A change from relay.outbox; repeat it for a batched webhook's batch.",
        ),
    ] = None,
    table: Annotated[str | None, typer.Option(help="schema.table of a made-up change.")] = None,
    new: Annotated[str | None, typer.Option(help="Made-up row after the change (JSON).")] = None,
    old: Annotated[str | None, typer.Option(help="Made-up row before the change (JSON).")] = None,
    event: Annotated[
        str | None, typer.Option(help="insert, update, delete, truncate or snapshot.")
    ] = None,
) -> None:
    """Show the request a rule would send for a change, without sending it (with the settings
    `relay run` would have: the environment, then --env-file). When the rule would send nothing
    (the rule or its webhook disabled, the change's table or event not the rule's, the
    conditions not matched), one line says why and the exit status is 1."""
    settings = load_settings(env_file)
    with database(dsn_of(dsn, settings)) as conn:
        loaded = ruleset.load(conn, everything=True)
        enabled_rules = {r.id for r in ruleset.load(conn).rules}
        chosen = next((r for r in loaded.rules if r.name == rule), None)
        coalesces = chosen is not None and chosen.webhook.coalesce_changes
        changes: list[Change] = []
        for one in sorted(set(outbox_id or [])):
            store = Store(conn)
            found: Change | str | None
            if chosen is not None and coalesces:
                found = coalesced.as_sent(store, one, loaded.models)
            else:
                found = store.change(one, loaded.models)
            if found is None:
                fail(
                    f"no change with id {one} in relay.outbox (purged, or never made): "
                    "pick one with SELECT id FROM relay.outbox",
                    2,
                )
            if isinstance(found, str):
                assert chosen is not None
                hook = chosen.webhook.name
                said = f"nothing would be sent: webhook {hook!r} coalesces changes, and {found}"
                out.print(visible(said), highlight=False, soft_wrap=True)
                raise typer.Exit(1)
            changes.append(found)
        if not changes and table is not None:
            made_up = _made_up_change(table, new, old, event)
            model = loaded.model(made_up.schema_name, made_up.table_name)
            changes.append(replace(made_up, model=model))
        if not changes:
            fail("give --outbox-id N, or --table T with --new and/or --old", 2)
        if chosen is None:
            fail(f"no rule named {rule!r} (relay rule list shows them)", 2)
        made = None
        if len(changes) == 1 and chosen.webhook.batch_size == 1:
            made = Store(conn).delivery_id(changes[0].id, chosen.webhook.id)
    batch_size = chosen.webhook.batch_size
    if len(changes) > batch_size:
        fail(
            f"webhook {chosen.webhook.name!r} takes at most {batch_size} change(s) per request "
            f"(batch_size): give at most {batch_size} --outbox-id",
            2,
        )
    sent, unsent = preview_module.would_send(chosen, changes, chosen.id in enabled_rules)
    if not sent:
        said = visible(f"nothing would be sent: {'; '.join(unsent)}")
        out.print(said, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    _print_preview(chosen, sent, made, settings, unsent)


def _made_up_change(table: str, new: str | None, old: str | None, event: str | None) -> Change:
    key = ruleset.table_key(table) or ruleset.table_key(f"public.{table}")
    if key is None:
        fail(
            f"--table {table!r} is not a table name as rules write them: schema.table, a part "
            'in double quotes when it holds a dot or a quote ("we.ird"."v1.2")',
            2,
        )
    schema_name, table_name = key
    new_row, old_row = _row_option(new, "--new"), _row_option(old, "--old")
    op = event or ("update" if new_row and old_row else "insert" if new_row else "delete")
    if op not in edits.EVENTS:
        fail(f"--event {op!r}: use insert, update, delete, truncate or snapshot", 2)
    return preview_module.made_up(schema_name, table_name, op, new_row, old_row, "preview")


def _print_preview(
    rule: ruleset.Rule,
    changes: list[Change],
    delivery_id: str | None,
    settings: Settings,
    unsent: list[str],
) -> None:
    """The request for ``changes``, each of which the rule would send; ``unsent`` says why the
    others asked for would not be in it. ``delivery_id``: the id the change's delivery has, or
    None when it has none yet."""
    hook = rule.webhook
    out.print(
        f"[bold]rule[/] {escape(rule.name)} → [bold]webhook[/] {escape(hook.name)}",
        highlight=False,
        markup=True,
    )
    if hook.batch_size > 1:
        out.print(
            f"[bold]batch[/] {len(changes)} change(s) of at most {hook.batch_size}; relay run "
            "numbers each batch and draws its delivery id then",
            highlight=False,
            markup=True,
        )
    out.print("[bold]conditions[/] matched", highlight=False, markup=True)
    for note in unsent:
        out.print(
            f"[yellow]note:[/] {escape(note)}: not in the request",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
    if hook.related:
        nested = ", ".join(f"data.{related_name(column)}" for column, _ in hook.related)
        out.print(
            f"[yellow]note:[/] {escape(nested)} (the related option) is read by relay run when "
            "it sends the change: not in this preview",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
    if delivery_id is None:
        out.print(
            f"[dim](delivery id {preview_module.PREVIEW_ID}: relay draws the real one when it "
            "makes the delivery)[/]",
            highlight=False,
            markup=True,
        )
    try:
        with BlockingRenderPool(settings.template_env_globs) as renders:
            request = renders.request(
                hook,
                preview_module.subject(rule, changes),
                rule.action_data,
                timestamp=int(time.time()),
                delivery_id=delivery_id or preview_module.PREVIEW_ID,
            )
    except RenderError as exc:
        fail(f"would fail: {reason(str(exc))}")
    shown = preview_module.shown(request, hook, settings.template_env_globs)
    out.print(f"\n{shown.method} {shown.url}", highlight=False, markup=False, soft_wrap=True)
    for key, value in shown.headers:
        out.print(f"{key}: {value}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"[dim](secret: {shown.secret})[/]", highlight=False, markup=True)
    out.print()
    out.print(shown.body, highlight=False, markup=False, soft_wrap=True)


def _row_option(value: str | None, what: str) -> dict[str, Any] | None:
    """A made-up row: a JSON object, read as relay reads rows (exact numbers)."""
    if not value:
        return None
    try:
        row = loads(value)
    except ValueError as exc:
        fail(f"{what} is not JSON ({first_line(exc)}): give an object, e.g. '{{\"id\": 9}}'", 2)
    if not isinstance(row, dict):
        fail(f"{what} must be a JSON object of column values, e.g. '{{\"id\": 9}}'", 2)
    return row

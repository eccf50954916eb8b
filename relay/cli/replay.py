"""``relay replay``: send a webhook the changes of a stretch of time again."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer

from relay.cli.common import Dsn, err, fail, load_settings, out
from relay.cli.common import database as _database
from relay.rules import ruleset
from relay.store import Purged, Store

if TYPE_CHECKING:
    from relay.delivery.replay import Replayed


class Status(enum.StrEnum):
    """Which of the webhook's earlier outcomes go again."""

    delivered = "delivered"
    failed = "failed"
    all = "all"


def replay(
    webhook: Annotated[str, typer.Option(help="The webhook to send the changes to again.")],
    since: Annotated[
        str, typer.Option(help="Changes made since then: an age (2h, 1d) or a time (ISO 8601).")
    ],
    dsn: Dsn,
    until: Annotated[
        str | None, typer.Option(help="And before then (an age or a time); default: now.")
    ] = None,
    table: Annotated[str | None, typer.Option(help="Only this table's (schema.table).")] = None,
    status: Annotated[
        Status,
        typer.Option(
            help="Which go again: those delivered to the webhook, those that failed, or all "
            "(also the changes it never had: matched against its rules as they are now)."
        ),
    ] = Status.all,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, and change nothing.")
    ] = False,
    superseded: Annotated[
        bool,
        typer.Option(
            "--superseded",
            help="Also send the changes a later change of their row supersedes (delivered to "
            "the webhook and not sent again by this replay: the receiver then ends on the "
            "older image), marked X-Relay-Superseded.",
        ),
    ] = False,
) -> None:
    """Send WEBHOOK the changes made in a stretch of time again, in order, under their first
    delivery ids, marked as replays (X-Relay-Replay, relay.attempts.replay). A change that a
    later change of its row supersedes is left out unless --superseded."""
    from relay.ages import parse_since
    from relay.delivery import replay as replaying  # here: other commands start without aiohttp

    limit = load_settings(None).max_body_bytes  # RELAY_MAX_BODY_BYTES, as relay run reads it
    try:
        start = parse_since(since)
        end = parse_since(until) if until is not None else None
    except ValueError as exc:
        fail(f"--since/--until: {exc}", 2)
    if end is not None and end <= start:
        fail("--until must be later than --since", 2)
    key = None
    if table is not None:
        key = ruleset.table_key(table) or ruleset.table_key(f"public.{table}")
        if key is None:
            fail(f"--table {table!r} is not a table name such as public.orders", 2)
    with _database(dsn) as conn:
        store = Store(conn)
        state = store.webhook_state(webhook)
        if state is None:
            fail(f"no webhook named {webhook!r} (relay webhook list shows them)", 2)
        webhook_id, enabled = state
        if not enabled:
            fail(f"webhook {webhook!r} is disabled: enable it first (relay webhook edit)", 2)
        rules = ruleset.load(conn)
        window: dict[str, Any] = {
            "webhook_id": webhook_id,
            "since": start,
            "until": end,
            "schema_name": key[0] if key else None,
            "table_name": key[1] if key else None,
        }
        _warn_of_purged(store.purged_in_window(window), start, end)
        statuses = ["delivered", "failed"] if status is Status.all else [status.value]
        with conn.transaction() as tx:
            done = replaying.replay(
                store,
                rules,
                window,
                statuses,
                new=status is Status.all,
                superseded=superseded,
                limit=limit,
            )
            if dry_run:
                raise psycopg.Rollback(tx)
    _report(webhook, done, dry_run=dry_run, superseded=superseded)


def _warn_of_purged(purged: Purged, start: datetime, end: datetime | None) -> None:
    """A warning line when retention purged changes made in the window, and only then (not
    because the outbox holds nothing older: it may never have held anything older). Counted
    by the hour, so "up to"."""
    if not purged.changes or purged.first_made is None or purged.last_made is None:
        return
    first = max(purged.first_made, start)
    last = purged.last_made if end is None else min(purged.last_made, end)
    err.print(
        f"warning: up to {purged.changes} change(s) made from {first:%Y-%m-%d %H:%M:%S%z} to "
        f"{last:%Y-%m-%d %H:%M:%S%z} were purged (RELAY_RETENTION_DAYS, relay purge): they "
        "cannot be replayed",
        highlight=False,
    )


def _report(webhook: str, done: Replayed, *, dry_run: bool, superseded: bool) -> None:
    """What the replay queued (or would), and a warning line for each kind it left out."""
    armed, new, added = done.armed, done.new, done.added
    total, replaced = done.total, done.superseded
    left_out = {
        "a later change of their row is being sent to the webhook now, and they would "
        "overtake it; run the same replay again in a moment": armed.busy + new.left_busy,
        "the rule that sent them is gone or disabled (its action data and templates are "
        "needed to send them)": armed.ruleless,
        "they are superseded: a later change of their row was delivered to the webhook and is "
        "not replayed, so the receiver would end on the older image; --superseded sends them "
        "anyway, marked X-Relay-Superseded": 0 if superseded else replaced,
    }
    if new.unjudged:
        change, why = next(iter(new.unjudged.items()))
        left_out[f"the webhook's rules could not be judged for them (change {change}: {why})"] = (
            len(new.unjudged)
        )
    for why, count in left_out.items():
        if count:
            err.print(f"warning: {count} change(s) left out: {why}", highlight=False)
    what = (
        f"{total} change{'' if total == 1 else 's'} to webhook {webhook} ({armed.delivered} "
        f"delivered before, {armed.failed} failed before, {added.added} new to it"
        + (
            f"; {replaced} superseded, marked X-Relay-Superseded)"
            if superseded and replaced
            else ")"
        )
    )
    if dry_run:
        out.print(f"would replay {what}; nothing changed (--dry-run)", highlight=False)
    else:
        out.print(f"replaying {what}: the relays send them in order", highlight=False)

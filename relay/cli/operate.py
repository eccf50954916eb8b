"""``relay status``, ``retry`` and ``purge``: the operator's day, from any machine."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from relay.cli.common import (
    BIGINT_MAX,
    Dsn,
    add_row,
    err,
    fail,
    load_settings,
    out,
    print_table,
)
from relay.cli.common import database as _database
from relay.reasons import reason
from relay.store import Store

if TYPE_CHECKING:
    from relay.settings import Settings


def _retries(webhook: dict[str, Any]) -> str:
    """A webhook's own retry policy in a few words; "relay's" where the relay settings decide."""
    attempts, base, cap = (
        webhook[key] for key in ("max_attempts", "retry_base_seconds", "retry_max_seconds")
    )
    if attempts is None and base is None and cap is None:
        return "relay's"
    relays = "relay's"
    return (
        f"{relays if attempts is None else attempts} attempts, "
        f"first after {relays if base is None else f'{base:g} s'}, "
        f"at most {relays if cap is None else f'{cap:g} s'}"
    )


def status(
    dsn: Dsn,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    errors: Annotated[
        int, typer.Option(min=0, max=1000, help="How many recent errors to show.")
    ] = 5,
) -> None:
    """What each webhook is doing (state, pending, in flight, oldest pending, last success and
    last error, limits), the changes done and waiting, recent errors and the relays at work."""
    with _database(dsn) as conn:
        current = Store(conn).status(errors)
    # Reasons are scrubbed when recorded; again here for those an older relay recorded.
    for e in current.errors:
        e["error"] = reason(e["error"])
    for w in current.webhooks:
        w["last_error"] = reason(w["last_error"]) if w["last_error"] is not None else None
    if as_json:
        out.print_json(data=_plain(dataclasses.asdict(current)))
        return
    settings = load_settings(None)
    b = current.backlog
    oldest = b["oldest_pending_seconds"]
    out.print(
        f"[bold]changes[/] {b['done']} done ({b['delivered']} delivered to every webhook, "
        f"{b['failed']} failed for some webhook, {b['skipped']} matched none); "
        f"{b['pending']} waiting ({b['not_matched_yet']} not matched yet), oldest "
        f"{_age(oldest)}",
        highlight=False,
        markup=True,
    )
    hooks = Table(
        "webhook",
        "state",
        "pending",
        "in flight",
        "oldest pending",
        "delivered",
        "failed",
        "last success",
        "last error",
        "limits",
        "retries",
    )
    for w in current.webhooks:
        add_row(
            hooks,
            w["name"],
            _state(w),
            str(w["pending"]),
            str(w["in_flight"]),
            _age(w["oldest_pending_seconds"]),
            str(w["delivered"]),
            str(w["failed"]),
            _when(w["last_success_at"]),
            _error_shown(w),
            _limits(w, settings),
            _retries(w),
        )
    print_table(hooks)
    if current.errors:
        recent = Table("when", "webhook", "change", "attempt", "status", "error")
        for e in current.errors:
            add_row(
                recent,
                _when(e["attempted_at"]),
                e["webhook"],
                str(e["outbox_id"]),
                str(e["attempt"]),
                str(e["status_code"] or "-"),
                e["error"],
            )
        print_table(recent)
    if current.backfills:
        fills = Table("backfill", "table", "webhook", "where", "snapshots", "started", "state")
        for f in current.backfills:
            add_row(
                fills,
                str(f["id"]),
                f["table_name"],
                f["webhook"] or "(rules)",
                f["where_clause"] or "-",
                f"{f['rows_done']} of {max(f['rows_total'], f['rows_done'])}",
                _when(f["started_at"]),
                f"done {_when(f['finished_at'])}"
                if f["finished_at"]
                else f"under way, last chunk {_when(f['updated_at'])}",
            )
        print_table(fills)
    relays = Table("relay", "connections", "since", "leases held")
    for r in current.relays:
        add_row(relays, r["relay_id"], str(r["connections"]), _when(r["since"]), str(r["leases"]))
    if current.relays:
        print_table(relays)
    else:
        out.print("no relay is connected", highlight=False)


ERROR_SHOWN = 60
"""Characters of a webhook's last error in the table (``--json`` has all of it)."""


def _state(webhook: dict[str, Any]) -> str:
    """What the webhook is doing, in words, with since when: relay's breaker lives in each
    relay process, so "failing since" comes from what the relays record of each endpoint; and
    while a rotated secret's previous one still signs, until when."""
    state = webhook["state"]
    if state == "paused":
        return f"paused by operator since {_when(webhook['paused_at'])}"
    if state == "dead":
        return (
            f"paused as dead since {_when(webhook['paused_at'])} "
            f"(failing since {_when(webhook['failing_since'])})"
        )
    if state == "failing":
        state = f"failing since {_when(webhook['failing_since'])}"
    if webhook["previous_secret_until"] is not None:
        state = f"{state}; previous secret valid until {_when(webhook['previous_secret_until'])}"
    return str(state)


def _error_shown(webhook: dict[str, Any]) -> str:
    """The endpoint's last error, one line, cut short, and when it came."""
    error = webhook["last_error"]
    if error is None:
        return "-"
    if len(error) > ERROR_SHOWN:
        error = error[: ERROR_SHOWN - 1] + "…"
    return f"{_when(webhook['last_failure_at'])} {error}"


def _limits(webhook: dict[str, Any], settings: Settings) -> str:
    """Concurrency and rate limit: the webhook's own, or the setting (this environment's)."""
    concurrency = webhook["concurrency"]
    shown = f"{settings.webhook_concurrency} (setting)" if concurrency is None else str(concurrency)
    rate = webhook["rate_limit"]
    return f"concurrency {shown}, rate {'none' if rate is None else f'{rate:g}/s'}"


def _age(seconds: float | None) -> str:
    """An age to read at a glance: 4.2 s, 12 min, 3.5 h, 2.0 d; - for none."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _plain(value: Any) -> Any:
    """JSON's types: times as ISO 8601."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _when(moment: object) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if hasattr(moment, "strftime") else "-"


def retry(
    dsn: Dsn,
    webhook: Annotated[
        str | None, typer.Option(help="Only changes that failed for this webhook.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only changes made since then: an age (2h, 7d) or a time (ISO 8601)."),
    ] = None,
    change_id: Annotated[
        int | None, typer.Option("--id", min=1, max=BIGINT_MAX, help="Only this change.")
    ] = None,
    superseded: Annotated[
        bool,
        typer.Option(
            "--superseded",
            help="Also send the deliveries a later change of their row, delivered to that "
            "webhook after them, supersedes (the receiver then ends on the older image), "
            "marked X-Relay-Superseded.",
        ),
    ] = False,
) -> None:
    """Send failed changes again, only to the webhooks that did not get them. A delivery that
    a later change of its row has superseded stays failed unless --superseded."""
    from relay.ages import parse_since

    try:
        moment = parse_since(since) if since is not None else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    with _database(dsn) as conn:
        store = Store(conn)
        if webhook is not None and not store.webhook_exists(webhook):
            fail(f"no webhook named {webhook!r} (relay webhook list shows them)", 2)
        done = store.retry_failed(
            change_id=change_id, since=moment, webhook=webhook, superseded=superseded
        )
    count = done.requeued
    out.print(f"requeued {count} failed change{'' if count == 1 else 's'}", highlight=False)
    if done.superseded and superseded:
        out.print(
            f"{done.superseded} of their deliveries are superseded (a later change of the row "
            "was delivered to that webhook after them): they go too, marked X-Relay-Superseded",
            highlight=False,
        )
    elif done.superseded:
        err.print(
            f"warning: {done.superseded} of their deliveries are superseded (a later change of "
            "the row was delivered to that webhook after them; sent now, the receiver would end "
            "on the older image): they stay failed; relay retry --superseded sends them anyway, "
            "marked X-Relay-Superseded",
            highlight=False,
        )


def purge(
    dsn: Dsn,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of the finished changes to delete: 7d, 12h...")
    ],
    batch: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Changes deleted per transaction.")
    ] = 5000,
) -> None:
    """Delete finished changes (delivered, failed, skipped) older than an age, with their
    deliveries and attempts, in short transactions; pending changes are never touched."""
    from rich.progress import Progress

    from relay.ages import parse_age
    from relay.delivery import maintenance

    try:
        seconds = parse_age(older_than).total_seconds()
    except ValueError as exc:
        fail(f"--older-than: {exc}", 2)
    with _database(dsn) as conn:
        store = Store(conn)
        total = store.count_purgeable(seconds)

        async def delete(limit: int) -> int:
            # The worker's purge loop, on this command's blocking connection: nothing else
            # runs on this event loop.
            return store.purge_changes(seconds, limit)

        # A bar only on a terminal: elsewhere (a pipe, a log) rich's live display leaves an
        # empty line before the result, and a bar nobody watches.
        with Progress(console=out, transient=True, disable=not out.is_terminal) as progress:
            task = progress.add_task("deleting", total=total)
            deleted, _ = asyncio.run(
                maintenance.purge(delete, batch, progress=lambda n: progress.advance(task, n))
            )
    out.print(
        f"deleted {deleted} finished change{'' if deleted == 1 else 's'} older than {older_than}",
        highlight=False,
    )

"""``relay backfill``: send the rows a table already holds, as snapshots, a chunk at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated

import psycopg
import typer

from relay.cli.common import Dsn, fail, out, table_named
from relay.cli.common import database as _database
from relay.db import explain
from relay.rules import ruleset
from relay.store import BackfillProgress, Store

LOCK_RETRIES = 50
"""Tries of one chunk that may find a row locked (relay.backfill gives up a chunk after 200 ms
rather than hold up a writer) before the command stops: a row locked for twenty seconds or more
is held by a transaction worth looking at first."""


def backfill(
    table: Annotated[str, typer.Argument(help="The tracked table, e.g. public.orders.")],
    dsn: Dsn,
    where: Annotated[
        str | None,
        typer.Option(
            "--where",
            help="Only rows for which this SQL condition holds, e.g. \"status = 'open'\": "
            "one condition, without a semicolon (functions in it must be schema-qualified).",
        ),
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(help="Send the snapshots to this webhook alone (its rules for the table)."),
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Rows per chunk (per transaction).")
    ] = 1_000,
    rate: Annotated[
        int | None,
        typer.Option(
            min=1, max=10_000_000, help="At most this many rows a second (spare the writers)."
        ),
    ] = None,
    again: Annotated[
        bool,
        typer.Option(help="Start over when the same backfill is complete (else it does nothing)."),
    ] = False,
) -> None:
    """Write a snapshot of every existing row of TABLE to the outbox, in primary-key order, in
    chunks; interrupted, the same command goes on where it stopped."""
    with _database(dsn) as conn:
        store = Store(conn)
        found = table_named(store, table)
        problem = store.backfill_problem(found.name)
        if problem is not None:
            fail(problem, 2)
        rules = ruleset.load(conn)
        target = None
        if webhook is not None:
            state = store.webhook_state(webhook)
            if state is None:
                fail(f"no webhook named {webhook!r} (relay webhook list shows them)", 2)
            target = state[0]
        key = (found.schema_name, found.table_name)
        if not rules.takes_snapshots(key, target):
            fail(_nowhere(found.name, webhook), 2)
        job = Job(store, found.name, where, webhook)
        progress = job.progress()
        if progress and progress.finished_at and not again:
            out.print(
                f"the backfill of {found.name} is complete ({progress.rows_done} rows, ended "
                f"{progress.finished_at:%Y-%m-%d %H:%M:%S}): --again starts a new one",
                highlight=False,
            )
            return
        resumed = progress is not None and progress.finished_at is None
        done = job.run(batch, rate, again=again)
    out.print(
        f"backfill of {found.name} complete: {done.rows_done} snapshots"
        f"{' (resumed)' if resumed else ''}",
        highlight=False,
    )


def _nowhere(table: str, webhook: str | None) -> str:
    if webhook is not None:
        return (
            f"webhook {webhook!r} has no enabled rule for {table}: add one "
            f"(relay rule add NAME --webhook {webhook} --table {table})"
        )
    return (
        f"no enabled rule takes snapshots of {table}: add snapshot to a rule's events "
        "(relay rule edit NAME --event ...), or name the webhook with --webhook"
    )


@dataclass(frozen=True)
class Job:
    """One backfill, as its arguments name it (relay.backfills finds it by them)."""

    store: Store
    table: str
    where: str | None
    webhook: str | None

    def progress(self) -> BackfillProgress | None:
        """Where it stands now (None before its first chunk)."""
        return self.store.backfill_progress(self.table, self.where, self.webhook)

    def chunk(self, rows: int, *, again: bool) -> int:
        """One chunk; a row locked past relay.backfill's lock_timeout makes it go again after a
        pause (LOCK_RETRIES in a row at most)."""
        for _ in range(LOCK_RETRIES):
            try:
                return self.store.backfill_chunk(
                    self.table, self.where, self.webhook, rows, again=again
                )
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                time.sleep(0.2)
            except psycopg.errors.InvalidParameterValue as exc:
                fail(explain(exc)[0], 2)
            except psycopg.errors.InsufficientPrivilege as exc:
                fail(
                    f"{exc.diag.message_primary}: a backfill reads {self.table} with the rights "
                    "of the role running it, which needs SELECT on it and UPDATE on one of its "
                    "columns (row locks), and no row security hiding rows; run it as relay's "
                    "owner with those rights",
                    2,
                )
            except psycopg.errors.DataException as exc:
                fail(
                    f"the where clause failed on a row of {self.table}: {explain(exc)[0]}; "
                    "change it and run again",
                    2,
                )
        fail(
            f"rows of {self.table} stayed locked by other transactions for {LOCK_RETRIES} "
            "tries: see pg_locks, then run the same command again to go on",
            1,
        )

    def run(self, rows: int, rate: int | None, *, again: bool) -> BackfillProgress:
        """Chunks until the backfill is complete, at most ``rate`` rows a second, with a
        progress bar; Ctrl-C stops it (the same command goes on)."""
        from rich.progress import (  # here: other commands start without it
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        started, passed_all = time.monotonic(), 0
        known = self.progress()
        done = known.rows_done if known else 0
        # Ctrl-C during a chunk cancels it, and psycopg says so on stderr: the one line below
        # says all there is to say.
        logging.getLogger("psycopg").setLevel(logging.CRITICAL)
        # A bar on a terminal only: elsewhere rich leaves an empty line, and no one watches it.
        with Progress(*columns, console=out, transient=True, disable=not out.is_terminal) as bar:
            task = bar.add_task(f"backfill {self.table}", total=None)
            try:
                while passed := self.chunk(rows, again=again and passed_all == 0):
                    passed_all += passed
                    now = self.progress()
                    if now is not None:
                        done = now.rows_done
                        total = max(now.rows_total, now.rows_done)
                        bar.update(task, total=total, completed=done)
                    if rate is not None:
                        time.sleep(max(0.0, passed_all / rate - (time.monotonic() - started)))
            except KeyboardInterrupt:
                # The connection may be gone with the chunk it was running: say what is known.
                fail(
                    f"interrupted after {done} snapshots (a chunk under way is undone): run the"
                    " same command again to go on",
                    130,
                )
        final = self.progress()
        assert final is not None, "a backfill that ran has its row"
        return final

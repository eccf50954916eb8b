"""The one place relay talks to its database: each named query of sql/queries/ behind a method.

Nothing else in relay sends a statement (the admin's SQLAlchemy mapping, relay/admin.py,
writes the same tables through the ORM; relay.tag's one ``set_config`` runs on the application's
own connection). :class:`Store` serves the command line on a blocking connection and
:class:`AsyncStore` the running relay on an asyncio one; each returns typed rows, so the stages
above never index a result by position or guess a column's type.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar, cast

import psycopg
from psycopg.rows import BaseRowFactory, dict_row, kwargs_row

from relay import sqlfiles
from relay.db import SEARCH_PATH, AConn, Conn
from relay.model import Change
from relay.sqlfiles import Migration, query

APPLICATION_PREFIX = "relay run "
"""How a running relay's connections are named, before its id: ``status_relays`` is given the
same prefix to find them in ``pg_stat_activity``."""

Channel = Literal["relay_outbox", "relay_capture", "relay_rules"]
"""What the relay LISTENs to: new changes, capture functions to regenerate, rules edited."""

PlanStatement = Literal[
    "hold_deliveries",
    "add_deliveries",
    "rearm_deliveries",
    "add_failed_deliveries",
    "fail_changes",
    "mark_fanned_out",
    "mark_coalesced",
    "skip_changes",
    "finish_changes",
]
"""The statements that write a fan-out plan (relay/delivery/plan.py decides which)."""


Models = dict[tuple[str, str], str]
"""(schema, table) -> the model name its changes carry, for the tables that have one."""


def application_name(relay_id: str) -> str:
    """The ``application_name`` of a relay's connections (see :data:`APPLICATION_PREFIX`)."""
    return APPLICATION_PREFIX + relay_id


@dataclass(frozen=True)
class TrackedTable:
    """A table whose changes are captured, with the options ``relay.track`` gave it."""

    schema_name: str
    table_name: str
    partitioned: bool
    events: list[str]
    update_columns: list[str] | None
    exclude_columns: list[str]
    pk_columns: list[str]
    tracked_at: datetime
    capture_current: bool
    """False between DDL on the table and the regeneration of its capture functions."""
    model: str | None
    """The model name its changes carry (None: the table name)."""


class WebhookRow(TypedDict):
    """A webhook's columns as ``load_rules`` and ``unused_webhooks`` name them."""

    webhook_id: int
    webhook_name: str
    payload_url: str
    http_method: str
    http_content_type: str
    additional_headers: str
    body_template: str
    secret: str
    previous_secret: str
    previous_secret_until: datetime | None
    signature: str
    ssl_verification: bool
    ca_file_path: str | None
    timeout_seconds: Decimal
    webhook_enabled: bool
    webhook_paused: bool
    max_attempts: int | None
    retry_base_seconds: Decimal | None
    retry_max_seconds: Decimal | None
    batch_size: int
    batch_wait_ms: int
    concurrency: int | None
    rate_limit: Decimal | None
    ordering: str
    ordering_key: str | None
    body_format: str
    related: str | None
    """The ``related`` option's JSON text, None when unset."""
    coalesce_changes: bool


class ColumnRow(TypedDict):
    """A tracked table's column as ``tracked_columns`` describes it."""

    schema_name: str
    table_name: str
    column_name: str
    column_type: str
    scalar: bool
    """Its JSON value is a plain scalar: no path goes into it (but NetBox's ``.value``)."""
    excluded: bool
    """exclude_columns leaves it out of the images."""


class RuleRow(WebhookRow):
    """An event rule with its webhook; conditions and action data as the JSON text stored."""

    id: int
    name: str
    tables: list[str]
    events: list[str]
    conditions: str | None
    action_data: str


class FanOutRow(TypedDict):
    """A change fan-out looked at: to match if ``fresh``, else matched by an earlier pass."""

    id: int
    fresh: bool
    schema_name: str
    table_name: str
    op: str
    pk: str | None
    old_pk: str | None
    bytes: int
    old_bytes: int
    """Of ``bytes``, its old image's (a coalesced event carries its first change's: 0031)."""
    username: str | None
    request_id: str | None
    request_path: str | None
    request_method: str | None
    txid: str
    created_at: datetime
    target: int | None
    """The one webhook the change is for (a backfill for one webhook), else None."""
    requeued: bool
    """Sent again (``relay retry``, the SQL reset): its deliveries are armed again with
    ``rearm_deliveries``."""
    coalesced_into: int | None
    """The later change of its row and transaction it was coalesced into (0031), if it was."""
    coalesced_from: int | None
    """The first change of the group it ended, when coalesced and asked for (re-queued or
    replayed; relay/delivery/coalesce.py): its event is made again."""
    event: NotRequired[bool]
    """True for a group's event (relay/delivery/coalesce.py, event), which no query returns."""


class GapRow(TypedDict):
    """A row of ``fan_out_gaps``: ids ``lo`` to ``hi`` that fan-out has not seen, and the
    transactions (``xids``) that may still commit them (see relay/delivery/window.py)."""

    lo: int
    hi: int
    xids: list[int]


@dataclass(frozen=True)
class FanOutBatch:
    """What one look at the outbox found, and where the fan-out window stood."""

    rows: list[FanOutRow]
    full: bool
    """The query returned as many rows as asked for: there may be more at once."""
    scanned_to: int
    """Where this look started (0 when the id sequence was reset below the stored position)."""
    stored_to: int
    running: list[int]
    """Transactions running at the look, as its snapshot lists them: below ``xmax``."""
    xmax: int
    """The look's snapshot's xmax: transactions from it on were running too, unlisted."""
    gaps: list[GapRow]
    snapshot: str = ""
    """The look's snapshot (pg_snapshot's text): what reading on (transaction_rest) may see."""


@dataclass(frozen=True)
class Claimed:
    """A delivery this relay holds the lease of, with its change, from its claim to its
    recorded outcome."""

    outbox_id: int
    webhook_id: int
    rule_id: int | None
    attempt: int
    """Attempts since the delivery was (last) armed: what RELAY_MAX_ATTEMPTS counts."""
    number: int
    """The attempt's number across re-queues: what the log and relay.attempts show."""
    change_bytes: int
    """Its change's JSON images in bytes (they come unread past ``max_change_bytes``)."""
    change: Change
    delivery_id: str
    """relay.deliveries.id: what X-Relay-Delivery says when it goes alone, on every attempt."""
    batch_id: int | None = None
    """The batch that carries it (claim_batch), None when it goes alone."""
    batch_delivery_id: str | None = None
    """The X-Relay-Delivery of the batch that carries it, drawn when the batch was numbered."""
    batch_again: bool = False
    """Its batch is one claimed before (sent under its id, or about to be when its relay
    stopped): it goes whole or not at all, never in parts under two ids."""
    replay: bool = False
    """Made pending again by ``relay replay`` (the request and the attempt log say so)."""
    superseded_by: int | None = None
    """Sent although this later change of its row was delivered after it, as the operator
    asked (``--superseded``): the request says so (X-Relay-Superseded)."""
    superseded_unasked: int | None = None
    """This later change of its row was delivered after it failed, and nobody asked to send it
    anyway: something that does not judge superseded changes made it pending (a release's
    ``relay replay`` from before 0025, SQL by hand). It is not sent: it fails again, saying so."""
    related_problem: str | None = None
    """Why the rows its webhook's ``related`` option nests could not be read (a grant missing,
    a column that is no foreign key): it fails with this reason, unsent."""
    leased_at: float = field(default_factory=time.monotonic, compare=False)
    """When (monotonic) its claim came back: its lease ends RELAY_LEASE_SECONDS after (a little
    before: the claim set it). Its request must be over by then, or the delivery counts as in
    flight for no one (a webhook's concurrency) and any relay may send it again meanwhile."""


@dataclass(frozen=True)
class Status:
    """``relay status``: everything it shows, read in one go."""

    backlog: dict[str, Any]
    webhooks: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    relays: list[dict[str, Any]]
    backfills: list[dict[str, Any]]
    """Backfills under way, and those that ended in the last day."""


@dataclass(frozen=True)
class Steering:
    """A webhook as ``relay webhook pause``, ``resume`` and ``disable`` see it."""

    id: int
    enabled: bool
    paused_at: datetime | None
    paused_reason: str | None
    """'operator' or 'dead' (0026_steering.sql); None when not paused."""
    pending: int
    """Its deliveries still to make."""


@dataclass(frozen=True)
class HeldDeliveries:
    """What goes with a webhook when it is removed (``webhook_deliveries``)."""

    pending: int
    failed: int
    delivered: int


@dataclass(frozen=True)
class DeadPause:
    """A webhook the relay has just paused as dead (``pause_dead``)."""

    name: str
    failing_since: datetime
    last_error: str | None
    dead_after_seconds: float


@dataclass(frozen=True)
class WebhookGauge:
    """One webhook's gauges for /metrics (``webhook_gauges``)."""

    name: str
    state: str
    """active, failing, paused (by the operator), dead (paused by relay) or disabled."""
    pending: int
    in_flight: int
    oldest_pending_seconds: float


@dataclass(frozen=True)
class Rearmed:
    """What ``replay_rearm`` made pending again, by earlier outcome, and what it left out."""

    delivered: int
    failed: int
    busy: int
    """Left out: a later change of their row is in flight (it would be overtaken)."""
    ruleless: int
    """Left out: the rule that sent them is gone or disabled."""
    superseded: int
    """Superseded: a later change of their row was delivered to the webhook and is not sent
    again. Left out, or, when asked for, among those made pending (marked)."""


@dataclass(frozen=True)
class Retried:
    """What ``retry_failed`` re-queued."""

    requeued: int
    """Changes."""
    superseded: int
    """Their failed deliveries that are superseded: a later change of the row was delivered to
    that webhook after them. They stay failed unless asked for."""


@dataclass(frozen=True)
class Added:
    """What ``add_replay_deliveries`` wrote."""

    added: int
    superseded: int
    """Superseded (as in Rearmed): left out, or, when asked for, among those added."""


@dataclass(frozen=True)
class Purged:
    """Changes of a replay's window that retention purged: how many, first and last made."""

    changes: int
    first_made: datetime | None
    last_made: datetime | None


class NewerSchema(Exception):
    """The database's relay schema is newer than this relay: installing would undo it."""

    def __init__(self, version: int, latest: int) -> None:
        super().__init__(
            f"relay schema is at version {version}, newer than this relay ({latest}): run the "
            "relay install of the release that installed it"
        )


class NewerDefinitions(Exception):
    """The database's functions are a later release's (at the same schema version): writing
    this release's would undo them."""

    def __init__(self) -> None:
        super().__init__(
            "relay's functions in this database are newer than this relay's: run the relay "
            "install of the release that installed them"
        )


@dataclass(frozen=True)
class Installed:
    """What ``relay install`` applied: the migrations, and whether the definitions (every
    function and view) were written again."""

    migrations: list[Migration]
    definitions: bool


@dataclass(frozen=True)
class TableName:
    """A table as the catalogs name it: ``name`` is how a query may refer to it."""

    schema_name: str
    table_name: str
    name: str


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill stands (relay.backfills)."""

    id: int
    rows_total: int
    """The rows it selected when it started (rows written since may add to them)."""
    rows_done: int
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class DemoChange:
    """An outbox row as ``relay demo`` shows it, its images as the JSON text PostgreSQL stored."""

    id: int
    op: str
    schema_name: str
    table_name: str
    pk: str | None
    old: str | None
    new: str | None
    username: str | None
    request_id: str | None


@dataclass(frozen=True)
class DeliveryFilter:
    """What the console's deliveries log is asked for; None is "any". ``event`` is a change's
    operation; ``since`` and ``until`` when it was recorded. ``key_json`` is an object's
    primary key as JSON, ``key_text`` the one value of a single-column key (``key_raw`` the
    same when it is a JSON number or literal); ``cursor`` the (outbox_id, webhook_id) the page
    starts past, in the log's order (newest first; oldest first for a key)."""

    webhook: str | None = None
    status: str | None = None
    schema: str | None = None
    table: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    key_json: str | None = None
    key_text: str | None = None
    key_raw: str | None = None
    cursor: tuple[int, int] | None = None

    @property
    def keyed(self) -> bool:
        """Whether an object's key is asked for (the log is then oldest first)."""
        return self.key_json is not None or self.key_text is not None


@dataclass(frozen=True)
class LogPage:
    """A page of the console's deliveries log: its lines, and for a page cut short by its
    stretch of changes (SCANNED_CHANGES), the first change id it looked at (older changes are
    on the next page)."""

    lines: list[DeliveryLine]
    looked_from: int | None = None
    keyless: bool = False
    """An object's key was asked for that fits no tracked table's primary key (no table of
    that name has one with those columns): the page says so rather than show an empty log."""


SCANNED_CHANGES = 100_000
"""The most changes one page of the deliveries log looks through (newest first): a filter that
matches few (a rare event or table) reads at most this stretch of the outbox and deliveries
per page, however long they are, and the page then goes on further back."""


@dataclass(frozen=True)
class FailedCount:
    """What the console's bulk retry would send again (console_failed_count)."""

    changes: int
    deliveries: int
    superseded: int
    through: int
    """The last change counted (0: none): the confirm retries none recorded after it, so that
    it does what the preview said and no more."""


@dataclass(frozen=True)
class DeliveryLine:
    """One line of the console's deliveries log."""

    outbox_id: int
    webhook_id: int
    webhook: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime
    schema_name: str
    table_name: str
    op: str
    pk: str | None
    created_at: datetime


@dataclass(frozen=True)
class DeliveryPage:
    """One delivery as the console's delivery page shows it: the change's images as the JSON
    text PostgreSQL stored, the webhook's URL as stored (the page masks it)."""

    outbox_id: int
    webhook_id: int
    webhook: str
    payload_url: str
    delivery_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime
    superseded_by: int | None
    coalesced_from: int | None
    row_key: str
    schema_name: str
    table_name: str
    op: str
    pk: str | None
    old: str | None
    new: str | None
    created_at: datetime
    change_status: str
    username: str | None
    request_id: str | None


@dataclass(frozen=True)
class AttemptLine:
    """One attempt of a delivery (relay.attempts)."""

    attempt: int
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    replay: bool
    details: str | None
    """The request as sent and the response's headers, masked, as JSON text (relay/delivery/
    details.py); None when RELAY_ATTEMPT_DETAILS kept none."""


@dataclass(frozen=True)
class AuditLine:
    """One action done through the console (relay.console_audit, 0032_console.sql)."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: str
    address: str


@dataclass(frozen=True)
class ActivityBucket:
    """Attempts made in one minute or hour (the console's overview chart)."""

    start: datetime
    delivered: int
    failed: int


@dataclass(frozen=True)
class WebhookFailures:
    """A webhook's failed attempts in a window, beside all its attempts then."""

    webhook: str
    failed: int
    attempts: int


R = TypeVar("R")


@dataclass(frozen=True)
class Rows(Generic[R]):
    """A named query of sql/queries/ and what each of its rows is read into: a dataclass or
    a TypedDict, called with the row's columns by name. tests/integration/test_queries.py holds
    every query's columns to its type's fields, so a column renamed or dropped on one side fails
    there, not on the one path that reads it."""

    name: str
    row: Callable[..., R]

    def factory(self) -> BaseRowFactory[R]:
        """The row factory a cursor reading this query takes."""
        return kwargs_row(self.row)


LIST_TRACKED = Rows("list_tracked", TrackedTable)
LOAD_RULES = Rows("load_rules", RuleRow)
TRACKED_COLUMNS = Rows("tracked_columns", ColumnRow)
UNUSED_WEBHOOKS = Rows("unused_webhooks", WebhookRow)
TRANSACTION_CHANGES = Rows("transaction_changes", FanOutRow)
TRANSACTION_REST = Rows("transaction_rest", FanOutRow)
REPLAY_CANDIDATES = Rows("replay_candidates", FanOutRow)
CHANGE_HEADS = Rows("change_heads", FanOutRow)
FAN_OUT_GAPS = Rows("fan_out_gaps", GapRow)
RETRY_FAILED = Rows("retry_failed", Retried)
WEBHOOK_STEERING = Rows("webhook_steering", Steering)
WEBHOOK_DELIVERIES = Rows("webhook_deliveries", HeldDeliveries)
TABLE_NAME = Rows("table_name", TableName)
REPLAY_REARM = Rows("replay_rearm", Rearmed)
ADD_REPLAY_DELIVERIES = Rows("add_replay_deliveries", Added)
BACKFILL_PROGRESS = Rows("backfill_progress", BackfillProgress)
CONSOLE_KEY_DELIVERIES = Rows("console_key_deliveries", DeliveryLine)
CONSOLE_DELIVERIES = Rows("console_deliveries", DeliveryLine)
CONSOLE_FAILED_COUNT = Rows("console_failed_count", FailedCount)
CONSOLE_DELIVERY = Rows("console_delivery", DeliveryPage)
CONSOLE_ATTEMPTS = Rows("console_attempts", AttemptLine)
CONSOLE_AUDIT = Rows("console_audit", AuditLine)
CONSOLE_ACTIVITY = Rows("console_activity", ActivityBucket)
CONSOLE_FAILURES = Rows("console_failures", WebhookFailures)
DEMO_OUTBOX_AFTER = Rows("demo_outbox_after", DemoChange)
PAUSE_DEAD = Rows("pause_dead", DeadPause)
WEBHOOK_GAUGES = Rows("webhook_gauges", WebhookGauge)


def _fan_out_batch(
    found: Sequence[dict[str, Any]], gaps: Sequence[GapRow], limit: int
) -> FanOutBatch | None:
    """A FanOutBatch from ``changes_to_fan_out`` rows (at least one, all null but the window's
    columns when nothing was found; none when the lock is taken) and ``fan_out_gaps``."""
    if not found:
        return None
    first = found[0]
    return FanOutBatch(
        rows=cast(list[FanOutRow], [row for row in found if row["id"] is not None]),
        full=len(found) == limit,
        scanned_to=first["scanned_to"],
        stored_to=first["stored_to"],
        running=first["running"],
        xmax=first["xmax"],
        gaps=list(gaps),
        snapshot=first.get("snapshot") or "",
    )


def _claimed(row: Mapping[str, Any], models: Models) -> Claimed:
    """A Claimed from a ``claim_deliveries`` or ``claim_batch`` row."""
    return Claimed(
        row["outbox_id"],
        row["webhook_id"],
        row["rule_id"],
        row["attempts"],
        row["attempt_number"],
        row["change_bytes"],
        Change.from_row(
            row, row["old"], row["new"], models.get((row["schema_name"], row["table_name"]))
        ),
        str(row["delivery_id"]),
        row.get("batch_id"),
        _text(row.get("batch_delivery_id")),
        bool(row.get("batch_again")),
        row["replay"],
        row["superseded_by"],
        row["superseded_unasked"],
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class Store:
    """The command line's queries, on one blocking connection (autocommit unless said)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def _value(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        row = self.conn.execute(query(name), params).fetchone()
        return row[0] if row else None

    def _all(self, rows: Rows[R], params: Mapping[str, Any] | None = None) -> list[R]:
        with self.conn.cursor(row_factory=rows.factory()) as cur:
            return cur.execute(query(rows.name), params).fetchall()

    def _one(self, rows: Rows[R], params: Mapping[str, Any] | None = None) -> R | None:
        with self.conn.cursor(row_factory=rows.factory()) as cur:
            return cur.execute(query(rows.name), params).fetchone()

    def installed_version(self) -> int:
        """The highest migration applied, or 0 when relay is not installed."""
        if not self._value("migrations_table_exists"):
            return 0
        versions = [row[0] for row in self.conn.execute(query("applied_migrations"))]
        return int(max(versions, default=0))

    def install(self) -> Installed:
        """Apply, in one transaction, every migration the database does not have yet, then the
        definitions (sqlfiles.definitions) unless the database holds these very files already:
        with nothing new, nothing is written."""
        conn = self.conn
        digest = sqlfiles.definitions_digest()
        with conn.transaction():
            conn.execute(query("install_lock"))
            conn.execute(sqlfiles.read("bootstrap.sql").encode())
            applied = {row[0] for row in conn.execute(query("applied_migrations"))}
            latest = sqlfiles.latest_version()
            if max(applied, default=0) > latest:
                # Its definitions are older than the schema's: writing them would undo an upgrade.
                raise NewerSchema(max(applied), latest)
            pending = [m for m in sqlfiles.migrations() if m.version not in applied]
            for migration in pending:
                conn.execute(migration.sql.encode())
            version = sqlfiles.definitions_version()
            held = conn.execute(query("definitions_state")).fetchone()
            if held is not None and held[0] > version:
                raise NewerDefinitions()
            current = pending or held is None or held[1] != digest
            if current:
                for name in sqlfiles.definitions():
                    conn.execute(sqlfiles.read(name).encode())
                parameters = {"version": version, "digest": digest}
                conn.execute(query("definitions_applied"), parameters)
        return Installed(pending, bool(current))

    def uninstall(self) -> None:
        """Drop every capture trigger relay added, then schema relay and all it holds."""
        self.conn.execute(sqlfiles.read("uninstall.sql").encode())

    def track(
        self,
        table: str,
        *,
        events: Sequence[str] | None = None,
        update_columns: Sequence[str] | None = None,
        exclude_columns: Sequence[str] | None = None,
        model: str | None = None,
    ) -> None:
        """Capture the table's changes (relay.track). ``table`` is read as PostgreSQL reads a
        regclass (search_path, double quotes); ``events`` default to all four."""

        def listed(values: Sequence[str] | None) -> list[str] | None:
            return None if values is None else list(values)

        self.conn.execute(
            query("track"),
            {
                "table": table,
                "events": listed(events),
                "update_columns": listed(update_columns),
                "exclude_columns": listed(exclude_columns),
                "model": model,
            },
        )

    def untrack(self, table: str) -> bool:
        """Stop capturing the table (relay.untrack); whether it was tracked."""
        return bool(self._value("untrack", {"table": table}))

    def tracked(self) -> list[TrackedTable]:
        """Every tracked table with how it is captured, as ``relay tracked`` lists them."""
        return self._all(LIST_TRACKED)

    def rule_rows(self, *, everything: bool) -> list[RuleRow]:
        """Enabled rules (every rule with ``everything``), each with its webhook."""
        return self._all(LOAD_RULES, {"everything": everything})

    def models(self) -> Models:
        """Every tracked table's model name, for the rules (see :data:`Models`)."""
        return {(s, t): m for s, t, m in self.conn.execute(query("load_models"))}

    def tracked_columns(self) -> list[ColumnRow]:
        """Every tracked table's columns, in table order, for ``relay rules check``."""
        return self._all(TRACKED_COLUMNS)

    def unused_webhooks(self) -> list[WebhookRow]:
        """Webhooks no rule sends to, in ``load_rules``' columns, for ``relay rules check``."""
        return self._all(UNUSED_WEBHOOKS)

    def related_problem(
        self, table: tuple[str, str], fk_column: str, nested_as: str, columns: Sequence[str]
    ) -> str | None:
        """Why relay.related_rows cannot nest ``columns`` of the row ``table``'s ``fk_column``
        references, asked for no key, with this session's rights; None when it can."""
        parameters = {
            "schema_name": table[0],
            "table_name": table[1],
            "fk_column": fk_column,
            "nested_as": nested_as,
            "columns": list(columns),
            "keys": [],
        }
        try:
            self.conn.execute(query("related_rows"), parameters).fetchall()
        except psycopg.Error as exc:
            return exc.diag.message_primary or str(exc)
        return None

    def change(self, outbox_id: int, models: Models, *, coalesce: bool = False) -> Change | None:
        """The change with this outbox id, images included and named by ``models``, or None
        when there is none (never made, or purged). With ``coalesce`` (for a webhook that
        coalesces: 0031), a group's last change is its group's event (see :meth:`group`)."""
        params = {"id": outbox_id, "coalesce": coalesce}
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query("outbox_change"), params).fetchone()
        if row is None:
            return None
        model = models.get((row["schema_name"], row["table_name"]))
        return Change.from_row(row, row["old"], row["new"], model)

    def transaction_changes(self, outbox_id: int) -> list[FanOutRow]:
        """The changes of the change's transaction not fanned out yet, as fan-out reads them;
        none when the change itself has been (its grouping is then stored: :meth:`group`)."""
        return self._all(TRANSACTION_CHANGES, {"id": outbox_id})

    def group(self, outbox_id: int) -> tuple[int | None, bool]:
        """What a webhook that coalesces makes of the change (0031): the change whose event it
        is in, if another's; and whether it ends a group created and deleted in its
        transaction (no event)."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query("change_group"), {"id": outbox_id}).fetchone()
        return (row["coalesced_into"], row["cancelled"]) if row else (None, False)

    def delivery_id(self, outbox_id: int, webhook_id: int) -> str | None:
        """The id of the change's delivery to the webhook (0023), None when it has none yet."""
        found = self._value("delivery_id", {"outbox_id": outbox_id, "webhook_id": webhook_id})
        return None if found is None else str(found)

    def webhook_exists(self, name: str) -> bool:
        """Whether a webhook is called ``name``."""
        return bool(self._value("webhook_exists", {"name": name}))

    def retry_failed(
        self,
        *,
        change_id: int | None,
        since: datetime | None,
        webhook: str | None,
        superseded: bool = False,
    ) -> Retried:
        """Re-queue failed changes (their failed deliveries are armed again, superseded ones
        only with ``superseded``); how many, and how many of their deliveries are superseded."""
        ids = None if change_id is None else [change_id]
        params = {"ids": ids, "since": since, "webhook": webhook, "superseded": superseded}
        return self._one(RETRY_FAILED, params) or Retried(0, 0)

    def retry_changes(self, ids: list[int], *, superseded: bool) -> Retried:
        """Re-queue these changes where they failed, as ``relay retry --id`` does each."""
        params = {"ids": ids, "since": None, "webhook": None, "superseded": superseded}
        return self._one(RETRY_FAILED, params) or Retried(0, 0)

    def purge_changes(self, seconds: float, limit: int) -> int:
        """Delete up to ``limit`` finished changes older than ``seconds``; how many went."""
        return int(self._value("purge_changes", {"seconds": seconds, "limit": limit}))

    def count_purgeable(self, seconds: float) -> int:
        """Finished changes older than ``seconds``: how many ``relay purge`` would delete."""
        return int(self._value("count_purgeable", {"seconds": seconds}) or 0)

    def status(self, errors: int) -> Status:
        """Everything ``relay status`` shows, with the last ``errors`` errors, read in one go."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            backlog = cur.execute(query("status_backlog")).fetchone() or {}
            webhooks = cur.execute(query("status_webhooks")).fetchall()
            last_errors = cur.execute(query("status_errors"), {"limit": errors}).fetchall()
            relays = cur.execute(query("status_relays"), {"prefix": APPLICATION_PREFIX}).fetchall()
            backfills = cur.execute(query("status_backfills")).fetchall()
        return Status(dict(backlog), webhooks, last_errors, relays, backfills)

    def webhook_steering(self, name: str) -> Steering | None:
        """The webhook's pause and pending deliveries, or None when there is no such webhook."""
        return self._one(WEBHOOK_STEERING, {"name": name})

    def webhook_deliveries(self, webhook_id: int) -> HeldDeliveries:
        """How many deliveries the webhook has, by status: removing it deletes them."""
        found = self._one(WEBHOOK_DELIVERIES, {"webhook_id": webhook_id})
        assert found is not None, "an aggregate has a row"
        return found

    def pause_webhook(self, name: str) -> datetime | None:
        """Pause the webhook for the operator; when, or None when it was paused already."""
        found: datetime | None = self._value("pause_webhook", {"name": name})
        return found

    def resume_webhook(self, name: str) -> bool:
        """Resume the webhook (and forget when its endpoint began failing); False when it was
        not paused."""
        return bool(self._value("resume_webhook", {"name": name}))

    def table_name(self, table: str) -> TableName | None:
        """The table ``table`` names, or None: a qualified name as written, an unqualified one
        in the role's own schema, then public (see the query names_as_written). Raises
        psycopg's InvalidName or SyntaxError for what is not a name at all."""
        with self.conn.transaction():
            self.conn.execute(query("names_as_written"))
            oid = self._value("table_oid", {"table": table})
            # A failed lookup rolls back, and the path with it.
            self.conn.execute(query("names_pinned"), {"search_path": SEARCH_PATH})
        if oid is None:
            return None
        return self._one(TABLE_NAME, {"oid": oid})

    def backfill_problem(self, table: str) -> str | None:
        """Why ``table`` cannot be backfilled (not tracked, no primary key...), or None."""
        found: str | None = self._value("backfill_problem", {"table": table})
        return found

    def backfill_chunk(
        self, table: str, where: str | None, webhook: str | None, chunk: int, *, again: bool
    ) -> int:
        """One chunk of a backfill, in its own transaction: how many rows it went past (0 once
        the backfill is complete)."""
        params = {"table": table, "where": where, "webhook": webhook, "chunk": chunk}
        return int(self._value("backfill_chunk", {**params, "again": again}) or 0)

    def webhook_state(self, name: str) -> tuple[int, bool] | None:
        """The id of the webhook called ``name`` and whether it is enabled, or None."""
        row = self.conn.execute(query("webhook_state"), {"name": name}).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def purged_in_window(self, window: Mapping[str, Any]) -> Purged:
        """The changes made in a replay's ``window`` (since, until, schema_name, table_name)
        that retention purged."""
        row = self.conn.execute(query("purged_in_window"), window).fetchone()
        assert row is not None
        return Purged(int(row[0]), row[1], row[2])

    def replay_hold(self, webhook_id: int) -> list[str]:
        """Hold every delivery still until the transaction ends (relays wait); the row keys of
        the webhook's deliveries in flight."""
        self.conn.execute(query("hold_deliveries"))
        row = self.conn.execute(query("replay_busy"), {"webhook_id": webhook_id}).fetchone()
        return list(row[0]) if row else []

    def replay_rearm(
        self,
        window: Mapping[str, Any],
        statuses: Sequence[str],
        busy: Sequence[str],
        *,
        superseded: bool = False,
    ) -> Rearmed:
        """Make the webhook's finished deliveries in ``window`` (webhook_id, since, until,
        schema_name, table_name) pending again as replays, but those of ``busy`` rows, those
        whose rule is gone and, unless ``superseded``, those superseded."""
        params = {
            **window,
            "statuses": list(statuses),
            "busy": list(busy),
            "superseded": superseded,
        }
        return self._one(REPLAY_REARM, params) or Rearmed(0, 0, 0, 0, 0)

    def replay_candidates(
        self, window: Mapping[str, Any], after: int, limit: int
    ) -> list[FanOutRow]:
        """Finished changes in ``window`` the webhook has no delivery of, after id ``after``."""
        return self._all(REPLAY_CANDIDATES, {**window, "after": after, "limit": limit})

    def change_images(self, ids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """The old and new images of changes, by id."""
        rows = self.conn.execute(query("change_rows"), {"ids": list(ids)}).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def change_heads(self, ids: Sequence[int]) -> dict[int, FanOutRow]:
        """The first changes of coalesced groups, by id (relay/delivery/coalesce.py, again)."""
        return {row["id"]: row for row in self._all(CHANGE_HEADS, {"ids": list(ids)})}

    def add_replay_deliveries(
        self, parameters: Mapping[str, Any], *, superseded: bool = False
    ) -> Added:
        """Write deliveries a replay made (columns as relay/delivery/plan.py's Deliveries), but,
        unless ``superseded``, those superseded."""
        params = {**parameters, "superseded": superseded}
        return self._one(ADD_REPLAY_DELIVERIES, params) or Added(0, 0)

    def backfill_progress(
        self, table: str, where: str | None, webhook: str | None
    ) -> BackfillProgress | None:
        """The latest backfill with these arguments, or None if there was none."""
        params = {"table": table, "where": where or "", "webhook": webhook}
        return self._one(BACKFILL_PROGRESS, params)

    def deliveries(self, wanted: DeliveryFilter, limit: int) -> LogPage:
        """A page of the console's deliveries log: newest first, looking through at most
        :data:`SCANNED_CHANGES` changes; or for an object's key, its row's deliveries oldest
        first."""
        params = self._log_filter(wanted)
        if params is None:
            return LogPage([], keyless=True)
        cursor = wanted.cursor or (None, None)
        params["limit"] = limit
        if wanted.keyed:
            params["after_outbox"], params["after_webhook"] = cursor
            return LogPage(self._all(CONSOLE_KEY_DELIVERIES, params))
        params["before_outbox"], params["before_webhook"] = cursor
        row = self.conn.execute(query("console_outbox_ends")).fetchone()
        first, past = (int(row[0]), int(row[1])) if row else (1, 1)
        top = min(v for v in (past, cursor[0] and cursor[0] + 1, params["to_id"]) if v is not None)
        lowest = max(first, params["from_id"] or first)
        looked_from = max(lowest, top - SCANNED_CHANGES)
        params["from_id"] = looked_from
        lines = self._all(CONSOLE_DELIVERIES, params)
        return LogPage(lines, looked_from if looked_from > lowest else None)

    def failed_count(self, wanted: DeliveryFilter) -> FailedCount:
        """What retrying every failed delivery the filter matches would send again."""
        params = self._log_filter(wanted)
        if params is None:
            return FailedCount(0, 0, 0, 0)
        return self._one(CONSOLE_FAILED_COUNT, params) or FailedCount(0, 0, 0, 0)

    def failed_changes(
        self, wanted: DeliveryFilter, after: int, limit: int, through: int | None
    ) -> list[int]:
        """The next ``limit`` failed changes past ``after`` (up to ``through``, None for no
        bound) with a failed delivery the filter matches, in id order."""
        params = self._log_filter(wanted)
        if params is None:
            return []
        params.update(after=after, limit=limit, through=through)
        rows = self.conn.execute(query("console_failed_changes"), params).fetchall()
        return [int(row[0]) for row in rows]

    def _log_filter(self, wanted: DeliveryFilter) -> dict[str, Any] | None:
        """The log queries' filter parameters: the time filters' outbox id bounds and an
        object's candidate row keys looked up first; None when nothing can match (a key no
        tracked table's key can be)."""
        params: dict[str, Any] = {
            "webhook": wanted.webhook,
            "status": wanted.status,
            "schema": wanted.schema,
            "table": wanted.table,
            "event": wanted.event,
            "since": wanted.since,
            "until": wanted.until,
            "from_id": self._outbox_bound(wanted.since),
            "to_id": self._outbox_bound(wanted.until),
            "keys": None,
        }
        if wanted.keyed:
            asked = {
                "schema": wanted.schema,
                "table": wanted.table,
                "key_text": wanted.key_text,
                "key_raw": wanted.key_raw,
                "key_json": wanted.key_json,
            }
            keys = self._value("console_key_candidates", asked)
            if not keys:
                return None
            params["keys"] = list(keys)
        return params

    def _outbox_bound(self, at: datetime | None) -> int | None:
        """The outbox id from which changes were recorded at or after ``at`` (None: none)."""
        if at is None:
            return None
        return int(self._value("console_outbox_bound", {"at": at}))

    def delivery(self, outbox_id: int, webhook_id: int) -> DeliveryPage | None:
        """One delivery with its change, or None when there is none (purged, or never made)."""
        params = {"outbox_id": outbox_id, "webhook_id": webhook_id}
        return self._one(CONSOLE_DELIVERY, params)

    def attempts(self, outbox_id: int, webhook_id: int) -> list[AttemptLine]:
        """Every attempt of one delivery, first first."""
        params = {"outbox_id": outbox_id, "webhook_id": webhook_id}
        return self._all(CONSOLE_ATTEMPTS, params)

    def audit(self, action: str, target: str, detail: str, address: str) -> None:
        """Record an action done through the console, in the caller's transaction (the
        database fills in who and when)."""
        params = {"action": action, "target": target, "detail": detail, "address": address}
        self.conn.execute(query("console_audit_add"), params)

    def audit_lines(self, before: int | None, limit: int) -> list[AuditLine]:
        """A page of the console's audit, newest first."""
        return self._all(CONSOLE_AUDIT, {"before": before, "limit": limit})

    def demo_pending(self) -> int:
        """Changes still pending in the whole outbox: the demo waits until the relay has dealt with
        them."""
        return int(self._value("demo_pending") or 0)

    def demo_changes_after(self, after: int) -> list[DemoChange]:
        """Changes with an id above ``after``, oldest first: what the demo's last step recorded."""
        return self._all(DEMO_OUTBOX_AFTER, {"after": after})

    def demo_summary(self) -> list[tuple[int, str, str, str]]:
        """Each change of the demo, how it ended, and what became of it per webhook."""
        rows = self.conn.execute(query("demo_summary")).fetchall()
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def activity(self, unit: Literal["minute", "hour"], buckets: int) -> list[ActivityBucket]:
        """Attempts in each of the last ``buckets`` minutes or hours, the current one last,
        empty ones included."""
        step = timedelta(minutes=1) if unit == "minute" else timedelta(hours=1)
        return self._all(CONSOLE_ACTIVITY, {"unit": unit, "buckets": buckets, "step": step})

    def failures(self, since: datetime, limit: int) -> list[WebhookFailures]:
        """The webhooks with failed attempts since ``since``, most failures first."""
        return self._all(CONSOLE_FAILURES, {"since": since, "limit": limit})

    def backfills(self) -> list[dict[str, Any]]:
        """Backfills under way, and those that ended in the last day (as ``relay status``)."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query("status_backfills")).fetchall()


class AsyncStore:
    """The running relay's queries, on one asyncio connection in autocommit."""

    def __init__(self, conn: AConn) -> None:
        self.conn = conn

    async def _value(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        cur = await self.conn.execute(query(name), params)
        row = await cur.fetchone()
        return row[0] if row else None

    async def _run(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        cur = await self.conn.execute(query(name), params)
        return cur.rowcount

    async def _all(self, rows: Rows[R], params: Mapping[str, Any] | None = None) -> list[R]:
        async with self.conn.cursor(row_factory=rows.factory()) as cur:
            await cur.execute(query(rows.name), params)
            return await cur.fetchall()

    async def listen(self, *channels: Channel) -> None:
        """LISTEN on each channel: notifications then arrive on this store's connection."""
        for channel in channels:
            await self.conn.execute(f"LISTEN {channel}")

    async def session_check(self) -> tuple[int, str]:
        """The schema version installed, and this session's search path."""
        cur = await self.conn.execute(query("session_check"))
        row = await cur.fetchone()
        assert row is not None, "session_check returns one row"
        return int(row[0] or 0), str(row[1])

    async def relay_started(self, relay_id: str, started_at: datetime) -> None:
        """Register this relay in relay.relays for ``relay status``, or start the entry of a relay
        id seen before afresh."""
        await self._run("relay_started", {"relay_id": relay_id, "started_at": started_at})

    async def relay_seen(self, relay_id: str) -> None:
        """Mark this relay alive (every sweep), and forget relays not seen for a day."""
        await self._run("relay_seen", {"relay_id": relay_id})

    async def release_leases(self, relay_id: str) -> None:
        """Give back every delivery this relay holds, due at once, for another to take."""
        await self._run("release_leases", {"relay_id": relay_id})

    async def refresh_capture(self) -> None:
        """Regenerate capture functions that no longer fit their table's columns."""
        await self._run("refresh_capture")

    async def refresh_statistics(self) -> None:
        """ANALYZE the outbox and the deliveries through relay.refresh_statistics, which runs as
        relay's owner: the service role may not ANALYZE them itself."""
        await self._run("refresh_statistics")

    async def rules_version(self) -> int:
        """The counter every change to webhooks or event rules bumps: rules loaded at a lower
        version are stale."""
        return int(await self._value("rules_version") or 0)

    async def rule_rows(self) -> list[RuleRow]:
        """Enabled rules, each with its webhook."""
        return await self._all(LOAD_RULES, {"everything": False})

    async def models(self) -> Models:
        """Every tracked table's model name, for the rules (see :data:`Models`)."""
        cur = await self.conn.execute(query("load_models"))
        return {(s, t): m for s, t, m in await cur.fetchall()}

    async def unfinished_changes(self, limit: int) -> list[int]:
        """Up to ``limit`` fanned-out changes still pending with no pending delivery left: their
        relay stopped before it finished them."""
        cur = await self.conn.execute(query("unfinished_changes"), {"limit": limit})
        return [row[0] for row in await cur.fetchall()]

    async def finish_changes(self, ids: Sequence[int]) -> None:
        """Settle the changes that are done: delivered when all their deliveries are, failed as soon
        as one is, skipped with none left. Others stay pending: any ids may be given."""
        await self._run("finish_changes", {"ids": list(ids)})

    async def purge_changes(self, seconds: float, limit: int) -> int:
        """Delete up to ``limit`` finished changes older than ``seconds``; how many went."""
        return int(await self._value("purge_changes", {"seconds": seconds, "limit": limit}))

    async def purge_attempts(self, seconds: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest attempts older than ``seconds``; how many went
        (fewer than ``limit``: the purge is done)."""
        return await self._run("purge_attempts", {"seconds": seconds, "limit": limit})

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One transaction whose statements are pipelined: sent without waiting for each
        answer (the event loop is busy sending, and each round trip waits for its turn)."""
        async with self.conn.pipeline(), self.conn.transaction():
            yield

    async def changes_to_fan_out(self, limit: int) -> FanOutBatch | None:
        """The next changes to match and the fan-out window's gaps, in one round trip (inside
        :meth:`batch`). None: another relay holds the fan-out lock."""
        async with (
            self.conn.cursor(row_factory=dict_row) as cur,
            self.conn.cursor(row_factory=FAN_OUT_GAPS.factory()) as cur_gaps,
        ):
            await cur.execute(query("changes_to_fan_out"), {"limit": limit})
            await cur_gaps.execute(query("fan_out_gaps"))
            found = await cur.fetchall()
            gaps = await cur_gaps.fetchall()
        return _fan_out_batch(found, gaps, limit)

    async def transaction_rest(
        self, txids: Sequence[str], after: int, snapshot: str
    ) -> list[FanOutRow]:
        """The changes after id ``after`` up to the last of the transactions ``txids``, visible
        in ``snapshot`` and not fanned out yet (see relay/delivery/fanout.py)."""
        params = {"txids": list(txids), "after": after, "snapshot": snapshot}
        return await self._all(TRANSACTION_REST, params)

    async def newest_xid(self) -> int:
        """A transaction id newer than any that began before the last look (see
        relay/delivery/window.py): this transaction's own, taken now."""
        return int(await self._value("newest_xid"))

    async def move_fan_out_window(self, parameters: Mapping[str, Any]) -> None:
        """Write fan-out's position and gaps, replacing the stored ones whole (parameters from
        relay/delivery/window.py)."""
        await self._run("move_fan_out_window", parameters)

    async def change_images(self, ids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """The old and new images of changes, by id."""
        cur = await self.conn.execute(query("change_rows"), {"ids": list(ids)})
        return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    async def change_heads(self, ids: Sequence[int]) -> dict[int, FanOutRow]:
        """The first changes of coalesced groups, by id (relay/delivery/coalesce.py, again)."""
        return {row["id"]: row for row in await self._all(CHANGE_HEADS, {"ids": list(ids)})}

    async def write_plan(self, statements: Iterable[tuple[PlanStatement, dict[str, Any]]]) -> None:
        """Run a plan's statements in order. Call it inside :meth:`batch`, so that the plan is
        written whole or not at all."""
        for name, parameters in statements:
            await self._run(name, parameters)

    async def claim_deliveries(
        self, parameters: Mapping[str, Any], models: Models
    ) -> list[Claimed]:
        """Take the leases of due deliveries, with their changes named by ``models``
        (parameters from relay/delivery/claim.py); they are this relay's until the lease runs
        out."""
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("claim_deliveries"), parameters)
            rows = await cur.fetchall()
        return [_claimed(r, models) for r in rows]

    async def claim_batch(
        self, parameters: Mapping[str, Any], models: Models
    ) -> tuple[list[Claimed], float | None]:
        """Take the leases of one batch for one webhook (parameters from
        relay/delivery/claim.py), in outbox order; or none, and how many seconds until a batch
        that is not full may go (None when there is nothing to wait for)."""
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("claim_batch"), parameters)
            rows = await cur.fetchall()
        claimed = [_claimed(r, models) for r in rows if r["outbox_id"] is not None]
        return claimed, rows[0]["wait_seconds"] if rows and not claimed else None

    async def related_rows(
        self,
        table: tuple[str, str],
        fk_column: str,
        nested_as: str,
        columns: Sequence[str],
        keys: Sequence[str],
    ) -> dict[int, str]:
        """The rows of the table that ``table``'s foreign key ``fk_column`` references whose key
        is one of ``keys`` (their text), as JSON text by position in ``keys`` (from 0); a key
        not found is left out. Raises what relay.related_rows raises (psycopg.Error) when the
        rows cannot be read: no such foreign key, a grant missing."""
        parameters = {
            "schema_name": table[0],
            "table_name": table[1],
            "fk_column": fk_column,
            "nested_as": nested_as,
            "columns": list(columns),
            "keys": list(keys),
        }
        cur = await self.conn.execute(query("related_rows"), parameters)
        return {int(row[0]) - 1: str(row[1]) for row in await cur.fetchall()}

    async def take_slot(self, webhook_id: int, spacing: float) -> float:
        """Take the next request slot of a webhook with a rate limit (every relay shares them);
        seconds until it comes, 0 when it is now or the webhook has no rate limit."""
        cur = await self.conn.execute(
            query("take_slot"), {"webhook_id": webhook_id, "spacing": spacing}
        )
        row = await cur.fetchone()
        return max(float(row[0]), 0.0) if row is not None else 0.0

    async def record_outcomes(self, parameters: Mapping[str, Any]) -> list[int]:
        """Write a batch of attempts, their deliveries' new states and their endpoints' health
        (parameters from relay/delivery/record.py); the webhooks now due to be paused as dead
        (see :meth:`pause_dead`)."""
        cur = await self.conn.execute(query("record_outcomes"), parameters)
        row = await cur.fetchone()
        return list(row[1]) if row and row[1] else []

    async def pause_dead(self, ids: Sequence[int], dead_after: float) -> list[DeadPause]:
        """Pause as dead those of the webhooks ``ids`` whose endpoint still fails for longer
        than their dead_after (``dead_after``: RELAY_DEAD_AFTER_SECONDS); those it paused."""
        return await self._all(PAUSE_DEAD, {"ids": list(ids), "dead_after": dead_after})

    async def webhook_gauges(self) -> list[WebhookGauge]:
        """Each webhook's state, pending and leased deliveries and oldest pending age."""
        return await self._all(WEBHOOK_GAUGES)

    async def backlog(self) -> tuple[int, float]:
        """Pending changes, and the age in seconds of the oldest."""
        cur = await self.conn.execute(query("backlog_summary"))
        row = await cur.fetchone()
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

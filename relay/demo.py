"""``relay demo``: relay at work on a scratch database, for someone seeing it the first time."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.syntax import Syntax

from relay import rules, schema, sqlfiles
from relay.db import Conn
from relay.render import Renderer
from relay.sqlfiles import query
from relay.tempcluster import postgres_server, scratch_database

_STEP = re.compile(r"^-- step: (.+)$", re.MULTILINE)

TRY_NEXT = """\
-- In your own database, after `relay install` and `relay track`:
-- see what a rule would send for a change (nothing is sent):
--   relay preview --rule 'order paid' --outbox-id 3
-- what is waiting to be sent, oldest first:
SELECT id, op, schema_name, table_name, pk, new, username, created_at
FROM relay.outbox WHERE status = 'pending' ORDER BY id;

-- Track another table, only some events, only when some columns change:
SELECT relay.track('public.customers', events => ARRAY['insert', 'update'],
                   update_columns => ARRAY['email']);
SELECT * FROM relay.tracked;

-- Tag the changes of a transaction:
BEGIN; SET LOCAL relay.username = 'bob'; SET LOCAL relay.request_id = 'req-1'; ... COMMIT;"""


@dataclass(frozen=True)
class Step:
    title: str
    sql: str


def steps() -> list[Step]:
    parts = _STEP.split(sqlfiles.read("demo.sql"))
    return [Step(t.strip(), s.strip()) for t, s in zip(parts[1::2], parts[2::2], strict=True)]


def run(console: Console, dsn: str | None) -> None:
    with postgres_server(dsn) as server, scratch_database(server, "relay_demo") as db:
        console.rule("[bold]relay demo")
        console.print(f"scratch database: [cyan]{psycopg.conninfo.conninfo_to_dict(db)['dbname']}")
        with psycopg.connect(db, autocommit=True) as conn:
            applied = schema.install(conn)
            console.print(f"installed relay schema version {applied[-1].version}\n")
            seen = 0
            for number, step in enumerate(steps(), 1):
                console.print(f"[bold]{number}. {step.title}")
                console.print(_sql(step.sql))
                conn.execute(step.sql.encode())
                seen = _show_new_changes(console, conn, seen)
            _show_requests(console, conn)
        console.rule("[bold]Try next")
        console.print(_sql(TRY_NEXT))
        console.print("\nThe scratch database has been dropped; nothing was left behind.")


def _show_new_changes(console: Console, conn: Conn, after: int) -> int:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("demo_outbox_after"), {"after": after}).fetchall()
    if not rows:
        console.print("   [dim]→ nothing recorded in relay.outbox[/]\n")
        return after
    console.print("   → relay.outbox gained:")
    for row in rows:
        console.print(
            f"   [bold]#{row['id']} {row['op']}[/] {row['schema_name']}.{row['table_name']}"
            f"  pk={row['pk']}  username={row['username']}  request_id={row['request_id']}",
            highlight=False,
        )
        for label in ("old", "new"):
            if row[label] is not None:
                console.print(f"      {label}: {row[label]}", highlight=False, soft_wrap=True)
    console.print()
    return int(rows[-1]["id"])


def _show_requests(console: Console, conn: Conn) -> None:
    """What the rules make of every recorded change: the request that would be sent, or why
    none would be."""
    ruleset = rules.load(conn)
    renderer = Renderer()
    console.rule("[bold]What the relay would send")
    ids = [row[0] for row in conn.execute(query("demo_outbox_after"), {"after": 0})]
    for change_id in ids:
        change = rules.fetch_change(conn, change_id)
        assert change is not None
        matches = ruleset.evaluate(change)
        if not matches:
            console.print(f"#{change_id} {change.op}: no rule covers it", highlight=False)
            continue
        for match in matches:
            if not match.verdict.matched:
                console.print(
                    f"#{change_id} {change.op}: rule {match.rule.name!r} did not "
                    f"match ({match.verdict.reason})",
                    highlight=False,
                )
                continue
            request = renderer.request(
                match.rule.webhook, change, match.rule.action_data, timestamp=int(time.time())
            )
            console.print(
                f"#{change_id} {change.op}: rule {match.rule.name!r} matched:", highlight=False
            )
            console.print(f"   {request.method} {request.url}", highlight=False, soft_wrap=True)
            for key, value in request.headers.items():
                console.print(f"   {key}: {value}", highlight=False, soft_wrap=True)
            console.print(f"   {request.body.decode()}", highlight=False, soft_wrap=True)
    console.print()


def _sql(text: str) -> Syntax:
    return Syntax(text, "sql", theme="ansi_dark", background_color="default", word_wrap=True)

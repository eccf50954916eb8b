"""relay console's overview charts and tracked tables page against a real PostgreSQL, over
HTTP: a known set of attempts gives known bars, and hostile names and options stay text."""

from __future__ import annotations

import asyncio
import html
import re

import aiohttp
import psycopg
from psycopg import sql

from support.console import PASSWORD, http_client, person, serving
from support.worker import running, setup, until

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


async def sign_in(client: aiohttp.ClientSession, base: str, role: str) -> None:
    form = await (await client.get(f"{base}/login")).text()
    found = re.search(r'name="token" value="([^"]+)"', form)
    assert found
    data = {"token": found[1], "role": role, "password": PASSWORD}
    signed = await client.post(f"{base}/login", data=data, allow_redirects=False)
    assert signed.status == 303


def _label(dsn: str, unit: str, ago: str) -> str:
    """How the chart labels the bucket of the moment ``ago`` before now (the server's zone)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT to_char(date_trunc(%s, now() - %s::interval), 'HH24:MI')", (unit, ago)
        ).fetchone()
        assert row is not None
        return str(row[0])


def _bars(page: str) -> dict[str, tuple[int, int]]:
    """Each drawn bar's bucket and counts, as its tooltip says them."""
    found = re.findall(r"<title>(\d\d:\d\d): (\d+) delivered, (\d+) failed</title>", page)
    return {start: (int(d), int(f)) for start, d, f in found}


def _numbers(page: str) -> dict[str, tuple[int, int]]:
    """The table under the chart, for those who do not see it."""
    table = page[page.index('<table class="activity-numbers">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><td>(\d\d:\d\d)</td><td>(\d+)</td><td>(\d+)</td></tr>", table)
    return {start: (int(d), int(f)) for start, d, f in rows}


def test_the_charts_count_a_known_set_of_attempts(dsn: str) -> None:
    """Three deliveries' real attempts are replaced by a known set: 3 delivered and 1 failed
    five minutes ago, 2 failed ninety minutes ago. The hour's chart shows the first minute
    alone; the day's shows both hours; the failures chart names the (hostile) webhook."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name=HOSTILE, max_attempts=1)
        conn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 3) i")
    alice = person(dsn, "alice")

    async def fail_them() -> None:
        async with running(dsn):
            await until(lambda: _count(dsn, "relay.deliveries WHERE status = 'failed'") == 3)

    asyncio.run(fail_them())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM relay.attempts")
        conn.execute(
            """
            INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, attempted_at,
                                        duration_ms, status_code, error)
            SELECT d.outbox_id, d.webhook_id, 1, now() - a.ago::interval, 5, a.code, a.error
            FROM (SELECT outbox_id, webhook_id FROM relay.deliveries ORDER BY outbox_id LIMIT 1) d,
                 (VALUES ('5 minutes', 200, NULL), ('5 minutes', 200, NULL),
                         ('5 minutes', 204, NULL), ('5 minutes', 500, 'HTTP 500'),
                         ('90 minutes', NULL, 'connection refused'),
                         ('90 minutes', NULL, 'connection refused'),
                         ('2 days', NULL, 'too old to show')) a (ago, code, error)
            """
        )
    minute = _label(dsn, "minute", "5 minutes")
    hour, earlier = _label(dsn, "hour", "5 minutes"), _label(dsn, "hour", "90 minutes")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            page = await (await client.get(f"{base}/")).text()
            assert _bars(page) == {minute: (3, 1)} and _numbers(page) == {minute: (3, 1)}
            # The axis tops at 5 (the largest bar, 4, rounded up): 150 units high.
            assert 'class="delivered" ' in page and 'height="90.0"' in page
            assert 'class="failed" ' in page and 'height="30.0"' in page
            assert "3 delivered and 1 failed attempts in the last hour" in page
            assert page.count('<rect class="delivered"') == 1
            assert '<meta http-equiv="refresh"' not in page
            assert "<script>alert" not in page and "<img src=x" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the failures chart's name
            assert re.search(r"<td>1</td><td>4</td>", page)  # 1 failed of 4 attempts

            day = await (await client.get(f"{base}/", params={"window": "day"})).text()
            assert _bars(day) == {hour: (3, 1), earlier: (0, 2)}
            assert _numbers(day) == _bars(day)
            assert "3 delivered and 3 failed attempts in the last day" in day
            assert re.search(r"<td>3</td><td>6</td>", day)  # 3 failed of 6 attempts

            refreshing = await client.get(f"{base}/", params={"window": "day", "refresh": "on"})
            text = await refreshing.text()
            assert '<meta http-equiv="refresh" content="30">' in text
            assert "Stop refreshing" in text
            assert "script" not in refreshing.headers["Content-Security-Policy"]
            odd = await client.get(f"{base}/", params={"window": "<b>", "refresh": "\x00"})
            assert odd.status == 200 and "in the last hour" in await odd.text()

    asyncio.run(go())


def test_no_attempt_draws_an_empty_chart(dsn: str) -> None:
    alice = person(dsn, "alice")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            page = await (await client.get(f"{base}/")).text()
            assert _bars(page) == {} and "No attempt in the last hour." in page
            assert "0 delivered and 0 failed attempts in the last hour." in page
            assert "No attempt failed in the last hour." in page

    asyncio.run(go())


def _count(dsn: str, what: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {what}").fetchone()
        return int(row[0]) if row else 0


def test_the_tables_page_shows_options_and_backfills_as_text(dsn: str) -> None:
    model = "<script>alert(1)</script>"
    column = '"><img src=x onerror=alert(2)>'
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{HOSTILE.replace(chr(34), chr(34) * 2)}"')
        table = sql.Identifier(HOSTILE, "t.1")
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text, n int)").format(
                table, sql.Identifier(column)
            )
        )
        conn.execute(
            "SELECT relay.track(%s::regclass, ARRAY['insert', 'update'], ARRAY['n'],"
            " ARRAY[%s], %s)",
            (table.as_string(conn), column, model),
        )
        conn.execute("CREATE TABLE plain (id int PRIMARY KEY)")
        conn.execute("SELECT relay.track('plain')")
        conn.execute(
            "INSERT INTO relay.backfills (tbl, where_clause, rows_total, rows_done)"
            " VALUES (%s::regclass, %s, 200, 50)",
            (table.as_string(conn), f"n > 1 AND {HOSTILE!r} <> ''"),
        )
    alice = person(dsn, "alice")
    nobody = person(dsn, "viewer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE SELECT ON relay.tracked FROM {nobody}")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            page = await (await client.get(f"{base}/tables")).text()
            assert "<script>alert" not in page and "<img src=x" not in page
            rows = re.findall(r'<td class="name">([^<]*)</td>', page)
            shown = html.unescape(rows[0])
            assert shown == f"{HOSTILE}.t.1"
            assert html.unescape(rows[1]) == "public.plain"
            assert html.unescape(re.findall(r'<td class="model">([^<]*)</td>', page)[0]) == model
            assert html.unescape(re.findall(r'<td class="excluded">([^<]*)</td>', page)[0]) == (
                column
            )
            assert "<td>insert, update</td>" in page and "<td>n</td>" in page
            assert "<td>delete, insert, truncate, update</td>" in page
            where = html.unescape(re.findall(r'<td class="where">([^<]*)</td>', page)[0])
            assert HOSTILE in where
            assert '<progress max="200" value="50">' in page and "50 of 200" in page
            assert "under way, last chunk" in page and "(rules)" in page
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, nobody)
            denied = await client.get(f"{base}/tables")
            text = await denied.text()
            assert denied.status == 403 and f"Your role {nobody} may not do this" in text

    asyncio.run(go())

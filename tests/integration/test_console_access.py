"""relay console against a real PostgreSQL, served on 127.0.0.1 and spoken to over HTTP: who
may sign in, what each role may see and do, the audit, and the attacks a web page invites
(forged forms, hostile names, guessed passwords, stolen or stale cookies)."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from support.console import PASSWORD, audit, csrf, http_client, person, serving, sign_in
from support.receivers import receiver
from support.worker import running, setup, until


def paused(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT paused_at FROM relay.webhooks WHERE name = %s", (name,))
        found = row.fetchone()
        assert found is not None
        return found[0] is not None


def test_postgresql_checks_the_password_and_the_cookie_is_guarded(dsn: str) -> None:
    alice = person(dsn, "alice")
    nobody = person(dsn, "nobody", rights=False)

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            first = await client.get(f"{base}/", allow_redirects=False)
            assert (first.status, first.headers["Location"]) == (303, "/login")
            wrong = await sign_in(client, base, alice, "not the password")
            assert wrong.status == 401 and "Wrong role or password." in await wrong.text()
            unknown = await sign_in(client, base, "no_such_role")
            assert unknown.status == 401 and "Wrong role or password." in await unknown.text()
            # postgres is trusted by pg_hba.conf: any password would do, so none does.
            trusted = await sign_in(client, base, "postgres", "anything")
            assert trusted.status == 403
            assert "did not ask for role postgres&#39;s password" in await trusted.text()
            bare = await sign_in(client, base, nobody)
            assert bare.status == 403
            assert f"Role {nobody} sees no relay" in await bare.text()
            assert "sql/console_role.sql" in await bare.text()

            good = await sign_in(client, base, alice)
            assert (good.status, good.headers["Location"]) == (303, "/")
            cookie = good.headers.getall("Set-Cookie")
            session = next(c for c in cookie if c.startswith("relay_console="))
            assert "HttpOnly" in session and "SameSite=Strict" in session
            assert PASSWORD not in session
            page = await client.get(f"{base}/")
            text = await page.text()
            assert page.status == 200 and f'signed in as <b class="role">{alice}</b>' in text
            assert "No relay is connected" in text
            policy = page.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script" not in policy
            assert page.headers["X-Frame-Options"] == "DENY"
            css = await client.get(f"{base}/static/console.css")
            assert css.status == 200 and css.content_type == "text/css"

            # Signed out, the same cookie opens nothing.
            token = await csrf(client, base)
            out = await client.post(f"{base}/logout", data={"csrf": token}, allow_redirects=False)
            assert out.status == 303
            after = await client.get(f"{base}/", allow_redirects=False)
            assert after.status == 303

    asyncio.run(go())


def test_pause_and_resume_run_as_the_role_and_are_audited(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders-hook")
    alice = person(dsn, "alice")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            token = await csrf(client, base)
            page = await client.get(f"{base}/webhooks")
            assert "orders-hook" in await page.text()
            pause = await client.post(
                f"{base}/webhooks/pause", data={"csrf": token, "name": "orders-hook"}
            )
            assert pause.status == 200 and "Paused:" in await pause.text()
            assert paused(dsn, "orders-hook")
            again = await client.post(
                f"{base}/webhooks/pause", data={"csrf": token, "name": "orders-hook"}
            )
            assert "It was paused already" in await again.text()
            resume = await client.post(
                f"{base}/webhooks/resume", data={"csrf": token, "name": "orders-hook"}
            )
            assert "Resumed:" in await resume.text()
            assert not paused(dsn, "orders-hook")
            missing = await client.post(
                f"{base}/webhooks/pause", data={"csrf": token, "name": "nope\x00"}
            )
            assert missing.status == 404
            shown = await (await client.get(f"{base}/audit")).text()
            assert shown.count("webhook pause") == 2 and "webhook resume" in shown

    asyncio.run(go())
    assert audit(dsn) == [
        (alice, "webhook pause", "orders-hook", "paused", "127.0.0.1"),
        (alice, "webhook pause", "orders-hook", "already-paused", "127.0.0.1"),
        (alice, "webhook resume", "orders-hook", "resumed", "127.0.0.1"),
    ]


def test_forged_forms_and_a_role_without_the_right_change_nothing(dsn: str) -> None:
    """No token, a wrong one, another site's origin, no session: refused before the database
    is asked. A role that may read but not pause gets a page saying so, and no audit entry is
    left of what it could not do."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders-hook")
    alice = person(dsn, "alice")
    viewer = person(dsn, "viewer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE UPDATE ON relay.webhooks FROM {viewer}")

    async def go() -> None:
        async with serving(dsn) as base:
            async with http_client() as client:
                await sign_in(client, base, alice)
                token = await csrf(client, base)
                url = f"{base}/webhooks/pause"
                for data, headers in [
                    ({"name": "orders-hook"}, {}),
                    ({"name": "orders-hook", "csrf": "forged"}, {}),
                    ({"name": "orders-hook", "csrf": token}, {"Origin": "http://evil.example"}),
                ]:
                    refused = await client.post(url, data=data, headers=headers)
                    assert refused.status == 403, await refused.text()
                    assert "Refused" in await refused.text()
            async with http_client() as stranger:
                refused = await stranger.post(url, data={"name": "orders-hook", "csrf": token})
                assert refused.status == 403 and "sign in first" in await refused.text()
            async with http_client() as client:
                await sign_in(client, base, viewer)
                token = await csrf(client, base)
                denied = await client.post(url, data={"name": "orders-hook", "csrf": token})
                text = await denied.text()
                assert denied.status == 403
                assert f"Your role {viewer} may not do this" in text
                assert "Traceback" not in text and "sql/console_role.sql" in text
                assert (await client.get(f"{base}/webhooks")).status == 200

    asyncio.run(go())
    assert not paused(dsn, "orders-hook")
    assert audit(dsn) == []


def test_sign_in_attempts_are_limited_per_role(dsn: str) -> None:
    alice = person(dsn, "alice")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            for _ in range(5):
                assert (await sign_in(client, base, alice, "guess")).status == 401
            # The right password now waits too: the guesser cannot tell it was right.
            held = await sign_in(client, base, alice)
            assert held.status == 429 and "Too many failed sign-ins" in await held.text()

    asyncio.run(go())


def test_an_idle_session_ends_and_a_forged_cookie_opens_nothing(dsn: str) -> None:
    alice = person(dsn, "alice")

    async def go() -> None:
        async with serving(dsn, idle_seconds=2) as base, http_client() as client:
            signed = await sign_in(client, base, alice)
            value = next(c.value for c in client.cookie_jar if c.key == "relay_console")
            assert signed.status == 303
            assert (await client.get(f"{base}/", allow_redirects=False)).status == 200
            session_id, signature = value.split(".")
            async with http_client() as forger:
                forged = f"{session_id}.{'0' * len(signature)}"
                response = await forger.get(
                    f"{base}/", headers={"Cookie": f"relay_console={forged}"}, allow_redirects=False
                )
                assert response.status == 303
            await asyncio.sleep(2.3)
            ended = await client.get(f"{base}/", allow_redirects=False)
            assert (ended.status, ended.headers["Location"]) == (303, "/login")

    asyncio.run(go())


def test_hostile_names_and_row_values_are_text(dsn: str) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook?token=abc123", name=hostile)
        conn.execute("ALTER TABLE items ADD COLUMN note text")
        conn.execute("INSERT INTO items VALUES (1, 1, %s)", (hostile,))
    alice = person(dsn, "alice")

    async def go() -> None:
        async with running(dsn):  # fan-out makes the delivery
            await until(lambda: _deliveries(dsn) == 1)
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            pages = [
                await (await client.get(f"{base}/webhooks")).text(),
                await (await client.get(f"{base}/deliveries")).text(),
            ]
            link = re.search(r'href="(/deliveries/\d+/\d+)"', pages[1])
            assert link
            pages.append(await (await client.get(f"{base}{link[1]}")).text())
            for page in pages:
                assert "<script>alert" not in page and "<img src=x" not in page
                assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
            assert "abc123" not in pages[2]  # the URL's query value is masked

    asyncio.run(go())


def _deliveries(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM relay.deliveries").fetchone()
        return int(row[0]) if row else 0


def test_the_log_finds_an_object_by_its_key_and_pages_through_the_rest(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook")
    alice = person(dsn, "alice")

    async def go() -> None:
        async with receiver() as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE relay.webhooks SET payload_url = %s", (r.url,))
                conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 60) i")
                conn.execute("UPDATE items SET v = 1 WHERE id = 7")
            async with running(dsn):
                await until(lambda: len(r.requests) == 61, timeout=20)
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            for key in ("7", '{"id": 7}'):
                found = await client.get(
                    f"{base}/deliveries", params={"table": "public.items", "key": key}
                )
                rows = re.findall(r'<td class="key">([^<]*)</td>', await found.text())
                assert rows == ["{&#34;id&#34; : 7}"] * 2, rows  # as PostgreSQL wrote it
            first = await (await client.get(f"{base}/deliveries")).text()
            assert first.count('<td class="key">') == 50
            older = re.search(r'href="([^"]+)" rel="next"', first)
            assert older
            second = await (await client.get(base + older[1].replace("&amp;", "&"))).text()
            assert second.count('<td class="key">') == 11
            assert 'rel="next"' not in second
            bad = await client.get(f"{base}/deliveries", params={"key": "{not json"})
            assert "key: a JSON object" in await bad.text()
            nul = await client.get(f"{base}/deliveries", params={"before": "1-x"})
            assert "start from the first page" in await nul.text()
            none = await client.get(f"{base}/deliveries/999/999")
            assert none.status == 404

    asyncio.run(go())


def test_the_console_rights_read_no_secret_and_cannot_write_the_audit_in_another_name(
    dsn: str,
) -> None:
    """What sql/console_role.sql grants, probed as the person's own SQL would: no webhook's
    secret, no entry in the audit with another's name or another time, no change of an
    entry, and nothing of what is not the console's (rules, tracking)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook")
    alice = person(dsn, "alice")
    port = conninfo_to_dict(dsn)["port"]
    database = conninfo_to_dict(dsn)["dbname"]
    as_alice = f"host=127.0.0.1 port={port} dbname={database} user={alice} password='{PASSWORD}'"
    with psycopg.connect(as_alice, autocommit=True) as conn:
        for statement in [
            "SELECT secret FROM relay.webhooks",
            "SELECT previous_secret FROM relay.webhooks",
            "UPDATE relay.webhooks SET secret = 'mine', previous_secret_until = now()",
            "INSERT INTO relay.console_audit (actor, action, target, address)"
            " VALUES ('bob', 'x', 'y', 'z')",
            "INSERT INTO relay.console_audit (at, action, target, address)"
            " VALUES ('2000-01-01', 'x', 'y', 'z')",
            "UPDATE relay.console_audit SET detail = 'nothing happened'",
            "DELETE FROM relay.console_audit",
            "UPDATE relay.event_rules SET enabled = false",
            "UPDATE relay.webhooks SET payload_url = 'http://127.0.0.1:1/'",
            "SELECT relay.untrack('items')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO relay.console_audit (action, target, address) VALUES ('x', 'y', 'z')"
        )
        row = conn.execute(
            "SELECT actor, now() - at < interval '1 minute' FROM relay.console_audit"
        ).fetchone()
        assert row == (alice, True)


def test_keys_and_times_postgresql_cannot_read_are_one_sentence_not_a_fault(dsn: str) -> None:
    """Python's JSON reads NaN, Infinity, 1e999999 (as inf), a lone surrogate's escape and
    \\u0000; PostgreSQL's jsonb reads none of them, nor numeric a number of a million digits:
    each is a sentence above an empty log (and the retry preview's 400), never the database's
    error."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook")
    operator = person(dsn, "owner", rights=False)  # replay needs the owner's rights
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(operator)))
    keys = [
        "NaN",
        "-Infinity",
        "1e999999",
        '{"id": NaN}',
        '{"id": 1e999999}',
        '{"id": "\\ud800"}',
        '{"id": "a\\u0000b"}',
        '{"id": {"nested": [true, null]}}',
    ]
    times = [
        {"since": "2026-01-01T00:00+23:00"},
        {"since": "0001-01-01T00:00+14:00", "until": "9999-12-31T23:59-14:00"},
        {"since": "9999-12-31T23:59:59.999999-14:00"},
        {"since": "2026-01-01T00:00+05:30:15.5"},
    ]

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, operator)
            for key in keys:
                page = await client.get(f"{base}/deliveries", params={"key": key})
                text = await page.text()
                assert page.status == 200, (key, text)
                assert "The database refused" not in text, key
                preview = await client.get(f"{base}/deliveries/retry", params={"key": key})
                assert preview.status in (200, 400), key
                assert "The database refused" not in await preview.text(), key
            for when in times:
                for path in ("/deliveries", "/replay"):
                    page = await client.get(f"{base}{path}", params={"webhook": "hook", **when})
                    text = await page.text()
                    assert page.status == 200, (path, when, text[-400:])

    asyncio.run(go())


def test_the_log_finds_keys_of_every_type_and_length(dsn: str) -> None:
    """An object's key as the log shows it finds the object whatever the key's type: a text
    key of 1500 characters, of 3000 and of 1500 two-byte characters (their row keys are their
    SHA-256; that one's query string is 9 KB), numeric, a composite of timestamp and bytea
    typed in either column order, and a partitioned table's row (captured as the parent's)."""
    long_key, longer_key, wide_key = "u" * 1500, "v" * 3000, "é" * 1500
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook")
        conn.execute("CREATE TABLE docs (url text PRIMARY KEY, v int)")
        conn.execute("CREATE TABLE amounts (n numeric PRIMARY KEY, u uuid UNIQUE)")
        conn.execute("CREATE TABLE stamps (at timestamp, b bytea, PRIMARY KEY (at, b))")
        conn.execute("CREATE TABLE parted (id bigint PRIMARY KEY) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)")
        for table in ("docs", "amounts", "stamps", "parted"):
            conn.execute("SELECT relay.track(%s)", (table,))
        conn.execute(
            "UPDATE relay.event_rules SET tables = ARRAY['public.items', 'public.docs',"
            " 'public.amounts', 'public.stamps', 'public.parted']"
        )
        conn.execute(
            "INSERT INTO docs VALUES (%s, 1), (%s, 2), (%s, 3)", (long_key, longer_key, wide_key)
        )
        conn.execute(
            "INSERT INTO amounts VALUES (12345678901234567890.50,"
            " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"
        )
        conn.execute("INSERT INTO stamps VALUES ('2026-11-23 10:00:00.5', '\\x00ff')")
        conn.execute("INSERT INTO parted VALUES (42)")
    operator = person(dsn, "alice")

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _deliveries(dsn) == 6, timeout=20)
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, operator)
            for table, key in [
                ("public.docs", long_key),
                ("docs", longer_key),
                ("", wide_key),
                ("amounts", "12345678901234567890.50"),
                ("", '{"at": "2026-11-23T10:00:00.5", "b": "\\\\x00ff"}'),
                ("stamps", '{"b": "\\\\x00ff", "at": "2026-11-23T10:00:00.5"}'),
                ("parted", "42"),
                ("", "42"),
            ]:
                found = await client.get(f"{base}/deliveries", params={"table": table, "key": key})
                text = await found.text()
                assert found.status == 200, (key[:40], text[-500:])
                rows = re.findall(r'<td class="key">', text)
                problem = re.findall(r'class="problem"[^>]*>([^<]*)', text)
                assert len(rows) == 1, (table, key[:40], problem)

    asyncio.run(go())


def test_the_consoles_role_may_not_replay_and_nothing_changes(dsn: str) -> None:
    """Replay needs the owner's rights (docs/console.md): the console's role gets a page
    saying so, for the preview and for a confirm with its own valid token; a replay or a bulk
    retry posted without the token or from another site is refused; and no delivery, change
    or audit entry moves."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook", max_attempts=1)
        conn.execute("INSERT INTO items VALUES (1, 1)")
    alice = person(dsn, "alice")
    state = (
        "SELECT array_agg((d.outbox_id, d.webhook_id, d.status, d.attempts, o.status)::text)"
        " FROM relay.deliveries d JOIN relay.outbox o ON o.id = d.outbox_id"
    )

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _one(dsn, "SELECT status::text FROM relay.outbox") == "failed")
        before = _one(dsn, state)
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            preview = await client.get(f"{base}/replay", params={"webhook": "hook", "since": "1h"})
            assert preview.status == 403 and "may not do this" in await preview.text()
            token = await csrf(client, base)
            form = {"csrf": token, "webhook": "hook", "since": "1h", "status": "all"}
            done = await client.post(f"{base}/replay", data=form)
            text = await done.text()
            assert done.status == 403 and f"Your role {alice} may not do this" in text
            retry = {"csrf": token, "status": "failed"}
            for path, data in (("/replay", form), ("/deliveries/retry", retry)):
                bare = {name: value for name, value in data.items() if name != "csrf"}
                forged = await client.post(f"{base}{path}", data=bare)
                assert forged.status == 403 and "no valid token" in await forged.text()
                other = await client.post(
                    f"{base}{path}", data=data, headers={"Origin": "http://evil.example"}
                )
                assert other.status == 403 and "another site" in await other.text()
        assert _one(dsn, state) == before

    asyncio.run(go())
    assert audit(dsn) == []


def _one(dsn: str, statement: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(statement).fetchone()
        return row[0] if row else None


def test_a_table_whose_name_holds_a_dot_and_a_quote_is_named_as_rules_name_it(dsn: str) -> None:
    """public."odd.na""me": the log and the replay read a table's name as rules and relay
    replay --table do, either part quoted; unquoted, public.odd.na"me is no table's name (it
    used to be split at a different dot by each)."""
    operator = person(dsn, "owner", rights=False)  # replay needs the owner's rights
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(operator)))
        setup(conn, "http://127.0.0.1:9/hook", name="hook", max_attempts=1)
        conn.execute('CREATE TABLE "odd.na""me" (id int PRIMARY KEY)')
        conn.execute("""SELECT relay.track('"odd.na""me"')""")
        conn.execute("""UPDATE relay.event_rules SET tables = ARRAY['public."odd.na""me"']""")
        conn.execute('INSERT INTO "odd.na""me" VALUES (5)')

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _one(dsn, "SELECT status::text FROM relay.outbox") == "failed")
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, operator)
            for table in ('public."odd.na""me"', '"odd.na""me"'):
                for key in ("", "5"):
                    page = await client.get(
                        f"{base}/deliveries", params={"table": table, "key": key}
                    )
                    text = await page.text()
                    assert text.count('<td class="key">') == 1, (table, key)
                replay = await client.get(
                    f"{base}/replay", params={"webhook": "hook", "since": "1h", "table": table}
                )
                text = await replay.text()
                assert "Would replay 1 change" in text, table
            done = await client.post(f"{base}/replay", data=_hidden(text))
            assert "Replaying 1 change" in await done.text()
            for path in ("/deliveries", "/replay"):
                params = {"webhook": "hook", "since": "1h", "table": 'public.odd.na"me'}
                page = await client.get(f"{base}{path}", params=params)
                text = await page.text()
                assert page.status == 200 and "table: schema.table (a part that" in text, path

    asyncio.run(go())


def test_the_bulk_retry_does_what_its_preview_counted(dsn: str) -> None:
    """A change that fails after the preview (here within the preview's "since 1h") is not
    retried by its confirm: the button said "Retry 1 change", and one change goes again; the
    page then says one still matches."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook", max_attempts=1)
        conn.execute("INSERT INTO items VALUES (1, 1)")
    alice = person(dsn, "alice")
    statuses = "SELECT array_agg(status::text ORDER BY id) FROM relay.outbox"

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _one(dsn, statuses) == ["failed"])
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            preview = await client.get(
                f"{base}/deliveries/retry", params={"status": "failed", "since": "1h"}
            )
            text = await preview.text()
            assert "Retry 1 change</button>" in text
            form = _hidden(text)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (2, 2)")
            async with running(dsn):
                await until(lambda: _one(dsn, statuses) == ["failed", "failed"])
            done = await client.post(f"{base}/deliveries/retry", data=form)
            shown = await done.text()
            assert done.status == 200, shown
            assert _one(dsn, statuses) == ["pending", "failed"]
            assert "1 change" in shown

    asyncio.run(go())


def _hidden(page: str) -> dict[str, str]:
    """A page's hidden form fields (its confirm form's, with the CSRF token)."""
    found = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page)
    return {name: html.unescape(value) for name, value in found}


def test_a_replay_does_what_its_preview_counted(dsn: str) -> None:
    """A replay since 1h with no until: a change recorded after the preview is not replayed
    by its confirm (the preview's until is its moment)."""
    operator = person(dsn, "owner", rights=False)  # replay needs the owner's rights
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(operator)))
        setup(conn, "http://127.0.0.1:9/hook", name="hook", max_attempts=1)
        conn.execute("INSERT INTO items VALUES (1, 1)")
    statuses = "SELECT array_agg(status::text ORDER BY id) FROM relay.outbox"

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _one(dsn, statuses) == ["failed"])
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, operator)
            params = {"webhook": "hook", "since": "1h", "status": "failed"}
            preview = await (await client.get(f"{base}/replay", params=params)).text()
            assert "Would replay 1 change" in preview
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (2, 2)")
            async with running(dsn):
                await until(lambda: _one(dsn, statuses) == ["failed", "failed"])
            done = await (await client.post(f"{base}/replay", data=_hidden(preview))).text()
            assert "Replaying 1 change" in done
            deliveries = "SELECT array_agg(status::text ORDER BY outbox_id) FROM relay.deliveries"
            assert _one(dsn, deliveries) == ["pending", "failed"]

    asyncio.run(go())


def test_a_key_no_tracked_tables_primary_key_fits_is_said(dsn: str) -> None:
    """A table without a primary key has no key to find its changes by, and a composite key's
    JSON must name its columns: the page says so, rather than show an empty log."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook")
        conn.execute("CREATE TABLE events (at timestamptz, v int)")
        conn.execute("SELECT relay.track('events')")
    alice = person(dsn, "alice")

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, alice)
            for table, key in [("events", "1"), ("", '{"nope": 1}'), ("public.items", "1")]:
                page = await client.get(f"{base}/deliveries", params={"table": table, "key": key})
                text = await page.text()
                assert page.status == 200
                said = "no tracked table (of that name) has a primary key of these columns"
                assert (said in text) is (table != "public.items"), (table, key)

    asyncio.run(go())

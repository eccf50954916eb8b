"""The console's deliveries log in depth, in a real browser (Debian's chromium, driven by
Playwright) against a real relay delivering to a real receiver on 127.0.0.1: an object's
changes found by its key, the event and time filters, retrying every failed delivery a filter
matches after its preview, replay, and hostile filter values. Skipped, saying why, where
chromium or Playwright is missing (scripts/ensure-chromium)."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest
from aiohttp import web
from psycopg import sql

from relay import store
from relay.console import app
from support.browser import CHROMIUM, needs_browser
from support.console import PASSWORD, person, scalar, serving
from support.receivers import receiver
from support.worker import running, setup, until

with contextlib.suppress(ImportError):  # needs_browser skips the module, saying why
    from playwright.async_api import Page, async_playwright, expect

pytestmark = needs_browser

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


async def sign_in(page: Page, base: str, role: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("input[name=role]", role)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator(".role")).to_have_text(role)


async def column(page: Page, index: int) -> list[str]:
    """The log's column ``index`` (0: the change's id), line by line."""
    cells = page.locator(f"table.deliveries tbody tr td:nth-child({index + 1})")
    return [text.strip() for text in await cells.all_inner_texts()]


def test_find_an_objects_changes_oldest_first_and_filter_by_event_and_time(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 3's insert, two updates and its key's move to 30 are its changes, oldest first,
    found by its key typed as 3 or as JSON; the event filter keeps updates; since and until
    keep the changes recorded in that stretch (their times set an hour apart). A page looks
    through a stretch of changes at most (4 here), then goes on further back."""
    alice = person(dsn, "alice")

    async def go() -> None:
        async with receiver() as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="hook")
                conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 5) i")
                conn.execute("UPDATE items SET v = 1 WHERE id = 3")
                conn.execute("UPDATE items SET v = 2 WHERE id = 3")
                conn.execute("DELETE FROM items WHERE id = 4")
                conn.execute("UPDATE items SET id = 30 WHERE id = 3")
            async with running(dsn):
                await until(lambda: len(r.requests) == 9, timeout=20)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Changes 1 to 5 two hours ago, the others an hour ago, in id order as recorded.
            conn.execute(
                "UPDATE relay.outbox SET created_at = now() - CASE WHEN id <= 5"
                " THEN interval '2 hours' ELSE interval '1 hour' END + id * interval '1 second'"
            )
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            await sign_in(page, base, alice)
            await page.get_by_role("link", name="Deliveries", exact=True).click()
            assert await column(page, 0) == [str(i) for i in range(9, 0, -1)]
            await page.fill("input[name=key]", "3")
            await page.get_by_role("button", name="Find").click()
            assert await column(page, 0) == ["3", "6", "7", "9"]  # oldest first
            assert await column(page, 3) == ["insert", "update", "update", "update"]
            await expect(page.locator("main")).to_contain_text("oldest first")
            await page.fill("input[name=key]", '{"id": 30}')
            await page.fill("input[name=table]", "public.items")
            await page.get_by_role("button", name="Find").click()
            assert await column(page, 0) == ["9"]
            await page.fill("input[name=key]", "")
            await page.fill("input[name=table]", "")
            await page.select_option("select[name=event]", "update")
            await page.get_by_role("button", name="Find").click()
            assert await column(page, 0) == ["9", "7", "6"]
            await page.select_option("select[name=event]", "")
            await page.fill("input[name=since]", "90m")
            await page.get_by_role("button", name="Find").click()
            assert await column(page, 0) == ["9", "8", "7", "6"]
            await page.fill("input[name=since]", "3h")
            await page.fill("input[name=until]", "90m")
            await page.select_option("select[name=event]", "insert")
            await page.get_by_role("button", name="Find").click()
            assert await column(page, 0) == ["5", "4", "3", "2", "1"]

            monkeypatch.setattr(store, "SCANNED_CHANGES", 4)
            await page.goto(f"{base}/deliveries?event=delete")
            assert await column(page, 0) == ["8"]  # changes 6 to 9
            await expect(page.locator("#looked")).to_contain_text("changes from 6 on")
            await page.get_by_role("link", name="Older deliveries").click()
            assert await column(page, 0) == ["No delivery matches."]  # changes 3 to 6
            await page.get_by_role("link", name="Older deliveries").click()
            assert await column(page, 0) == ["No delivery matches."]  # changes 1 to 3
            assert await page.locator("#looked, a[rel=next]").count() == 0
            await browser.close()

    asyncio.run(go())


def test_retry_every_failed_delivery_of_a_filter_after_its_preview(dsn: str) -> None:
    """Four inserts fail; row 1 is then updated and delivered, which supersedes its insert.
    The preview says 4 changes, 1 superseded; the retry sends the other three, which are
    delivered, and the audit has it. A role without the right to retry is refused clearly."""
    answer = {"status": 500}

    async def endpoint(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answer["status"], text="down")

    alice = person(dsn, "alice")
    viewer = person(dsn, "viewer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE UPDATE ON relay.outbox FROM {}").format(sql.Identifier(viewer))
        )

    async def go() -> None:
        failed = "SELECT count(*) FROM relay.deliveries WHERE status = 'failed'"
        delivered = "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
        async with receiver(endpoint) as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="hook", max_attempts=1)
                conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 4) i")
            async with running(dsn), serving(dsn) as base, async_playwright() as p:
                await until(lambda: scalar(dsn, failed) == 4, timeout=20)
                answer["status"] = 200
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("UPDATE items SET v = 1 WHERE id = 1")
                await until(lambda: scalar(dsn, delivered) == 1, timeout=20)
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page()
                await sign_in(page, base, alice)
                await page.goto(f"{base}/deliveries?status=failed&event=insert")
                assert len(await column(page, 0)) == 4
                await page.locator("#retry-all").click()
                preview = page.locator("#preview")
                await expect(preview).to_contain_text("4 failed deliveries of 4 changes")
                await expect(page.locator("#superseded")).to_contain_text("1 of these")
                assert scalar(dsn, failed) == 4  # the preview changes nothing
                await page.get_by_role("button", name="Retry 4 changes").click()
                await expect(page.locator("#done")).to_contain_text("Re-queued 4 changes")
                await expect(page.locator("#done")).to_contain_text("1 superseded delivery")
                await until(lambda: scalar(dsn, delivered) == 4, timeout=20)
                assert scalar(dsn, failed) == 1  # row 1's insert: superseded, left failed
                assert len(r.requests) == 4 + 1 + 3

                await page.goto(f"{base}/audit")
                log = await page.locator("table.audit tbody").inner_text()
                assert "deliveries retry" in log and "status=failed&event=insert" in log
                assert "4 change(s) re-queued" in log

                # The one left is previewed again; a role that may not retry is refused.
                other = await (await browser.new_context()).new_page()
                await sign_in(other, base, viewer)
                await other.goto(f"{base}/deliveries?status=failed")
                await other.locator("#retry-all").click()
                await expect(other.locator("#superseded")).to_contain_text("1 of these")
                await other.get_by_role("button", name="Retry 1 change").click()
                refusal = other.locator(".problem")
                await expect(refusal).to_contain_text(f"Your role {viewer} may not do this")
                assert scalar(dsn, "SELECT status::text FROM relay.outbox WHERE id = 1") == "failed"
                await browser.close()
        assert scalar(dsn, "SELECT count(*) FROM relay.console_audit") == 1

    asyncio.run(go())


def test_a_bulk_retry_goes_a_chunk_a_transaction_and_stops_at_its_cap(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four failed changes, chunks of 2 and at most 3 a press: the first press re-queues three
    in two transactions (two audit entries) and says one still matches; the next sends it."""
    answer = {"status": 500}

    async def endpoint(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answer["status"], text="down")

    alice = person(dsn, "alice")
    monkeypatch.setattr(app, "RETRY_CHUNK", 2)
    monkeypatch.setattr(app, "RETRY_MOST", 3)

    async def go() -> None:
        failed = "SELECT count(*) FROM relay.deliveries WHERE status = 'failed'"
        delivered = "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
        async with receiver(endpoint) as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="hook", max_attempts=1)
                conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 4) i")
            async with running(dsn), serving(dsn) as base, async_playwright() as p:
                await until(lambda: scalar(dsn, failed) == 4, timeout=20)
                answer["status"] = 200
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page()
                await sign_in(page, base, alice)
                await page.goto(f"{base}/deliveries/retry?status=failed")
                await expect(page.locator("#preview")).to_contain_text("of 4 changes")
                await expect(page.locator("main")).to_contain_text("at most 3 changes")
                await page.get_by_role("button", name="Retry 4 changes").click()
                await expect(page.locator("#done")).to_contain_text("Re-queued 3 changes")
                await expect(page.locator("#remaining")).to_contain_text("1 failed change")
                await page.get_by_role("link", name="retry them").click()
                await page.get_by_role("button", name="Retry 1 change").click()
                await expect(page.locator("#done")).to_contain_text("Re-queued 1 change")
                await until(lambda: scalar(dsn, delivered) == 4, timeout=20)
                await browser.close()
        with psycopg.connect(dsn) as conn:
            details = [
                row[0] for row in conn.execute("SELECT detail FROM relay.console_audit ORDER BY id")
            ]
        assert [d.split(";")[0] for d in details] == [
            "2 change(s) re-queued, 1 to 2",
            "1 change(s) re-queued, 3 to 3",
            "1 change(s) re-queued, 4 to 4",
        ]

    asyncio.run(go())


def test_replay_a_stretch_of_time_after_its_preview(dsn: str) -> None:
    """Three changes delivered are replayed to the webhook from the console, as relay replay
    does: the preview counts them, the confirm sends them again, marked as replays."""
    operator = person(dsn, "owner", rights=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(operator)))

    async def go() -> None:
        async with receiver() as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="hook")
                conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 3) i")
            async with running(dsn), serving(dsn) as base, async_playwright() as p:
                await until(lambda: len(r.requests) == 3, timeout=20)
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page()
                await sign_in(page, base, operator)
                await page.get_by_role("link", name="Replay", exact=True).click()
                await page.fill("input[name=webhook]", "hook")
                await page.fill("input[name=since]", "1h")
                await page.get_by_role("button", name="Preview").click()
                await expect(page.locator("#preview")).to_contain_text(
                    "Would replay 3 changes to webhook hook (3 delivered before"
                )
                await asyncio.sleep(0.5)
                assert len(r.requests) == 3  # the preview sends nothing
                await page.get_by_role("button", name="Replay 3 changes").click()
                await expect(page.locator("#done")).to_contain_text("Replaying 3 changes")
                await until(lambda: len(r.requests) == 6, timeout=20)
                assert all(q.headers.get("X-Relay-Replay") for q in r.requests[3:])
                await page.fill("input[name=webhook]", "no-such-hook")
                await page.get_by_role("button", name="Preview").click()
                await expect(page.locator(".problem")).to_have_text(
                    "No webhook named no-such-hook."
                )
                await browser.close()
        assert scalar(dsn, "SELECT action FROM relay.console_audit") == "replay"

    asyncio.run(go())


def test_hostile_filter_values_are_text_and_a_bad_filter_is_one_sentence(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="hook", max_attempts=1)
        conn.execute("INSERT INTO items VALUES (1, 1)")
    alice = person(dsn, "alice")
    seen: list[str] = []

    async def go() -> None:
        async with running(dsn):
            await until(lambda: scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 1)
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            page.on("dialog", lambda dialog: seen.append(dialog.message))
            await sign_in(page, base, alice)
            await page.goto(f"{base}/deliveries")
            for name in ("webhook", "table", "key", "since", "until"):
                await page.fill(f"input[name={name}]", HOSTILE)
            await page.get_by_role("button", name="Find").click()
            assert await page.locator("script, img").count() == 0
            assert await page.input_value("input[name=key]") == HOSTILE
            problem = page.locator(".problem")
            await expect(problem).to_contain_text("table: schema.table (a part that holds a dot")
            await page.fill("input[name=table]", "")
            await page.get_by_role("button", name="Find").click()
            await expect(problem).to_have_text(
                "since: an age (30m, 12h, 7d) or a time (2026-11-23T10:00)"
            )
            for query, says in [
                ("key=" + "%7B%22id%22%3A" * 3, "key: a JSON object"),
                ("event=%3Cb%3E", "event: one of insert"),
                ("since=1h&until=2h", "until: later than since"),
                ("key=%00", "key: holds a NUL"),
                ("key=1&after=x", "after: not a page"),
                ("key=" + "9" * 400, None),
                ("key=%7B%22id%22%3A%20%22" + "x" * 900 + "%22%7D", None),
            ]:
                response = await page.goto(f"{base}/deliveries?{query}")
                assert response is not None and response.status == 200, query
                if says is None:
                    await expect(page.locator("table.deliveries")).to_contain_text("No delivery")
                else:
                    await expect(problem).to_contain_text(says)
            retry = await page.goto(f"{base}/deliveries/retry?event=%3Cscript%3E")
            assert retry is not None and retry.status == 400
            await expect(problem).to_contain_text("event: one of insert")
            await page.goto(f"{base}/replay?webhook={HOSTILE}&since=1h")
            assert await page.locator("script, img").count() == 0
            await browser.close()
        assert seen == []

    asyncio.run(go())

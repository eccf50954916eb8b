"""The overview's charts and the tracked tables page in a real browser (Debian's chromium,
driven by Playwright): what a person clicks, and hostile names and options as text. Skipped,
saying why, where chromium or Playwright is missing (scripts/ensure-chromium)."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from psycopg import sql

from support.browser import CHROMIUM, needs_browser, sign_in
from support.console import person, serving
from support.worker import running, setup, until

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'

with contextlib.suppress(ImportError):  # needs_browser skips the module, saying why
    from playwright.async_api import async_playwright, expect

pytestmark = needs_browser


def _failed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'")
        found = row.fetchone()
        return int(found[0]) if found else 0


def test_the_charts_and_the_tables_page_as_a_person_sees_them(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name=HOSTILE, max_attempts=1)
        conn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 2) i")
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(HOSTILE))
        )
        conn.execute("SELECT relay.track(%s::regclass)", (sql.Identifier(HOSTILE).as_string(conn),))
    alice = person(dsn, "alice")

    async def go() -> None:
        async with running(dsn):
            await until(lambda: _failed(dsn) == 2)
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen: list[str] = []
            page.on("dialog", lambda dialog: seen.append(dialog.message))
            await sign_in(page, base, alice)
            chart = page.get_by_role("img", name="Attempts per minute in the last hour")
            await expect(chart).to_be_visible()
            assert await page.locator("svg.activity rect.failed").count() == 1
            await page.get_by_text("The numbers").click()
            numbers = page.locator("table.activity-numbers tbody tr")
            await expect(numbers).to_have_count(1)
            assert (await numbers.first.inner_text()).split("\t")[1:] == ["0", "2"]
            failures = page.get_by_role("img", name="Failed attempts per webhook in the last hour")
            await expect(failures).to_be_visible()
            assert await page.locator("svg.failures text.name").text_content() == HOSTILE[:30] + "…"

            await page.get_by_role("link", name="the last day").click()
            await expect(page.locator("h2").first).to_have_text("Attempts in the last day")
            await page.get_by_role("link", name="Refresh every 30 s").click()
            refresh = page.locator('meta[http-equiv="refresh"]')
            assert await refresh.get_attribute("content") == "30"
            await page.get_by_role("link", name="Stop refreshing (every 30 s)").click()
            assert await refresh.count() == 0
            await page.get_by_role("link", name=HOSTILE).click()  # to its failed deliveries
            await expect(page.locator("table.deliveries tbody tr")).to_have_count(2)

            await page.get_by_role("link", name="Tables", exact=True).click()
            await expect(page.locator("h1")).to_have_text("Tracked tables")
            names = await page.locator("table.tracked td.name").all_inner_texts()
            assert names == [f"public.{HOSTILE}", "public.items"]
            for path in ("/", "/?window=day", "/tables"):
                await page.goto(base + path)
                assert await page.locator("script, img").count() == 0
            assert seen == []
            await browser.close()

    asyncio.run(go())

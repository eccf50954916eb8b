"""relay console in a real browser (Debian's chromium, driven by Playwright) against a real
relay delivering to a real receiver on 127.0.0.1: what a person does, and what an attacker
tries. Skipped, saying why, where chromium or Playwright is missing (./test and .ci/run install
both where they can: scripts/ensure-chromium)."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from aiohttp import web

from support.browser import CHROMIUM, needs_browser, sign_in
from support.console import person, scalar, serving
from support.receivers import receiver
from support.worker import running, setup, until

with contextlib.suppress(ImportError):  # needs_browser skips the module, saying why
    from playwright.async_api import Dialog, Page, async_playwright, expect

pytestmark = needs_browser


def watch(page: Page) -> list[str]:
    """Every dialog a script opens and every message on the console (but the browser's own
    note of a page answered 403 or 405, which the refusals below are): a script that ran."""
    seen: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        seen.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", dismiss)
    page.on(
        "console",
        lambda message: (
            None
            if message.text.startswith("Failed to load resource")
            else seen.append(f"console: {message.text}")
        ),
    )
    return seen


def test_find_a_failed_delivery_by_its_key_retry_it_and_pause_its_webhook(dsn: str) -> None:
    answer = {"status": 500}

    async def endpoint(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answer["status"], text="down for maintenance")

    alice = person(dsn, "alice")

    async def go() -> None:
        async with receiver(endpoint) as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="orders-hook", max_attempts=1)
                conn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 3) i")
            async with running(dsn), serving(dsn) as base, async_playwright() as p:
                await until(
                    lambda: (
                        scalar(dsn, "SELECT count(*) FROM relay.deliveries WHERE status = 'failed'")
                        == 3
                    )
                )
                answer["status"] = 200
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page()
                seen = watch(page)
                await sign_in(page, base, alice)
                assert await page.locator(".role").inner_text(timeout=3000) == alice

                await page.get_by_role("link", name="Deliveries", exact=True).click()
                await page.fill("input[name=table]", "public.items")
                await page.fill("input[name=key]", "2")
                await page.get_by_role("button", name="Find").click()
                rows = page.locator("table.deliveries tbody tr")
                assert await rows.count() == 1
                assert "failed" in await rows.first.inner_text()
                await rows.first.locator("a").click()
                assert await page.locator("#status").inner_text() == "failed"
                attempts = await page.locator("table.attempts tbody").inner_text()
                assert "500" in attempts and "down for maintenance" in attempts
                assert '"v":2' in await page.locator("#new").inner_text()
                await page.get_by_role("button", name="Retry").click()
                await expect(page.locator(".said")).to_contain_text("Sent again")
                for _ in range(100):
                    if await page.locator("#status").inner_text() == "delivered":
                        break
                    await asyncio.sleep(0.1)
                    await page.reload()
                assert await page.locator("#status").inner_text() == "delivered"
                assert len(r.requests) == 4  # three failed, then row 2 again

                await page.get_by_role("link", name="Webhooks", exact=True).click()
                await page.get_by_role("button", name="Pause").click()
                await expect(page.locator(".said")).to_contain_text("Paused:")
                assert (await page.locator("td.state").inner_text()).startswith("paused")
                await page.get_by_role("button", name="Resume").click()
                await expect(page.locator(".said")).to_contain_text("Resumed:")
                assert await page.locator("td.state").inner_text() == "active"

                await page.get_by_role("link", name="Audit", exact=True).click()
                await expect(page.locator("h1")).to_have_text("Audit")
                log = await page.locator("table.audit tbody").inner_text()
                assert "delivery retry" in log and "webhook pause" in log
                assert "webhook resume" in log and alice in log
                assert seen == []
                await browser.close()

    asyncio.run(go())


def test_hostile_values_stay_text_and_forged_or_unrighted_actions_are_refused(dsn: str) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name=hostile, max_attempts=1)
        conn.execute("ALTER TABLE items ADD COLUMN note text")
        conn.execute("INSERT INTO items VALUES (1, 1, %s)", (hostile,))
    alice = person(dsn, "alice")
    viewer = person(dsn, "viewer")
    nobody = person(dsn, "nobody", rights=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE UPDATE ON relay.webhooks FROM {viewer}")

    async def go() -> None:
        async with running(dsn):
            await until(lambda: scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 1)
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            probe = await browser.new_page()
            caught = watch(probe)
            await probe.set_content("<script>alert('a script ran')</script>")
            assert caught == ["dialog: a script ran"]  # the watch sees a script that runs
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, alice)
            for path in ("/", "/webhooks", "/deliveries"):
                await page.goto(base + path)
                assert await page.locator("script").count() == 0
                assert await page.locator("img").count() == 0
            assert hostile in await page.locator("table.deliveries").inner_text()
            await page.locator("table.deliveries a").first.click()
            assert hostile.replace('"', '\\"') in await page.locator("#new").inner_text()
            assert await page.locator("script, img").count() == 0
            await page.goto(f"{base}/webhooks")
            assert await page.locator("td.name").inner_text() == hostile

            # A form without its token (a forged one would be the same) is refused.
            await page.evaluate("document.querySelector('td form input[name=csrf]').remove()")
            await page.get_by_role("button", name="Pause").click()
            await expect(page.locator(".problem")).to_contain_text("no valid token")
            assert scalar(dsn, "SELECT paused_at FROM relay.webhooks") is None
            # An action's address is no link.
            await page.goto(f"{base}/webhooks/pause")
            assert "not a link" in await page.locator(".problem").inner_text()
            assert seen == []

            # A role without the right to pause reaches the button, and a clear refusal.
            context = await browser.new_context()
            other = await context.new_page()
            await sign_in(other, base, viewer)
            await other.goto(f"{base}/webhooks")
            await other.get_by_role("button", name="Pause").click()
            refusal = other.locator(".problem")
            await expect(refusal).to_contain_text(f"Your role {viewer} may not do this")
            await expect(refusal).to_contain_text("permission denied")
            assert scalar(dsn, "SELECT paused_at FROM relay.webhooks") is None
            # A role without any right on relay is told so at sign-in.
            await other.get_by_role("button", name="Sign out").click()
            await sign_in(other, base, nobody)
            await expect(other.locator(".problem")).to_contain_text("sees no relay")
            await other.goto(f"{base}/deliveries")
            assert other.url == f"{base}/login"
            await browser.close()
        assert scalar(dsn, "SELECT count(*) FROM relay.console_audit") == 0

    asyncio.run(go())


def test_a_failed_attempt_shows_its_request_as_sent_and_the_response_as_text(dsn: str) -> None:
    """The delivery page of a failed attempt (RELAY_ATTEMPT_DETAILS' default) shows the
    request as sent (method, URL, headers, body) and the response (status, headers, excerpt,
    duration); a `<script>` in a header's value and in the body is text, and the token and
    the signature are masked."""
    hostile = "<script>alert(3)</script><img src=x onerror=alert(4)>"

    async def endpoint(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=500, text=f"refused {hostile}", headers={"X-Reply": f"no {hostile}"}
        )

    alice = person(dsn, "alice")

    async def go() -> None:
        async with receiver(endpoint) as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(
                    conn,
                    r.url,
                    name="orders-hook",
                    secret="s3cr3t-of-the-hook",
                    max_attempts=1,
                    additional_headers=f"X-Note: {hostile}\nAuthorization: Bearer tok-7654321",
                )
                conn.execute("ALTER TABLE items ADD COLUMN note text")
                conn.execute("INSERT INTO items VALUES (1, 1, %s)", (hostile,))
            async with running(dsn):
                await until(
                    lambda: (
                        scalar(dsn, "SELECT count(*) FROM relay.deliveries WHERE status = 'failed'")
                        == 1
                    )
                )
        outbox, webhook = scalar(dsn, "SELECT ARRAY[outbox_id, webhook_id] FROM relay.deliveries")
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, alice)
            await page.goto(f"{base}/deliveries/{outbox}/{webhook}")
            await page.locator("table.attempts a").first.click()
            sent = page.locator("#attempt-1")
            assert await sent.locator(".request-line").inner_text() == f"POST {r.url}"
            headers = await sent.locator("table.request-headers").inner_text()
            assert f"X-Note\t{hostile}" in headers
            assert "Authorization\t******" in headers
            assert "X-Hook-Signature\t******" in headers
            assert "Content-Type\tapplication/json" in headers
            body = await sent.locator(".request-body").inner_text()
            assert f'"note":"{hostile}"' in body
            assert await sent.locator(".status-line").inner_text() == (
                f"500 in {scalar(dsn, 'SELECT duration_ms FROM relay.attempts')} ms"
            )
            answered = await sent.locator("table.response-headers").inner_text()
            assert f"X-Reply\tno {hostile}" in answered
            assert await sent.locator(".response-body").inner_text() == f"refused {hostile}"
            page_text = await page.locator("main").inner_text()
            assert "tok-7654321" not in page_text and "s3cr3t-of-the-hook" not in page_text
            assert r.requests[0].headers["X-Hook-Signature"] not in page_text
            assert await page.locator("script, img").count() == 0
            assert seen == []
            await browser.close()

    asyncio.run(go())

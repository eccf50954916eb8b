"""Rotating a secret and removing a rule and a webhook in a real browser (Debian's chromium,
driven by Playwright), hostile names shown as text, and a role without the rights refused.
Skipped, saying why, where chromium or Playwright is missing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import psycopg

from support.browser import CHROMIUM, needs_browser, sign_in, watch
from support.console import owner, service, serving
from support.worker import setup

with contextlib.suppress(ImportError):  # needs_browser skips the module, saying why
    from playwright.async_api import async_playwright, expect

pytestmark = needs_browser

OLD = "whsec_" + base64.b64encode(b"the-old-key-of-32-bytes-exactly!").decode()
NEW = "whsec_" + base64.b64encode(b"the-new-key-of-32-bytes-exactly!").decode()
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def _row(dsn: str, statement: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(statement).fetchone()
        assert found is not None
        return tuple(found)


def test_rotate_then_remove_the_rule_and_the_webhook_of_a_hostile_name(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name=HOSTILE, secret=OLD, signature="standard")
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, boss)
            await page.get_by_role("link", name="Webhooks", exact=True).click()
            await page.locator("td.name a").click()
            await expect(page.locator("h1")).to_have_text(f"Webhook {HOSTILE}")
            rotate = page.locator("form#rotate")
            await rotate.locator("input[name=secret]").fill("not-a-standard-secret")
            await rotate.get_by_role("button", name="Rotate").click()
            await expect(page.locator("#problem")).to_contain_text("the new secret cannot sign")
            assert _row(dsn, "SELECT secret FROM relay.webhooks") == (OLD,)
            rotate = page.locator("form#rotate")
            await rotate.locator("input[name=secret]").fill(NEW)
            await rotate.locator("input[name=grace]").fill("2h")
            await rotate.get_by_role("button", name="Rotate").click()
            await expect(page.locator(".said")).to_have_text(
                "Secret rotated (the new one is never shown)."
            )
            await expect(page.locator("#previous-secret")).to_contain_text(
                "previous secret valid until"
            )
            assert await page.locator("form#rotate input[name=secret]").input_value() == ""
            assert await page.locator("main script, main img").count() == 0

            await page.get_by_role("link", name="Rules", exact=True).click()
            await page.locator("td.name a").click()
            await page.get_by_role("button", name="Remove this rule…").click()
            await expect(page.locator("p.problem")).to_contain_text(f"Removing rule {HOSTILE}")
            assert await page.locator("main script, main img").count() == 0
            await page.get_by_role("button", name=f"Remove rule {HOSTILE}").click()
            await expect(page.locator(".said")).to_have_text("Removed.")
            await expect(page.locator("table.rules")).to_contain_text("No rule yet.")

            await page.get_by_role("link", name="Webhooks", exact=True).click()
            await page.locator("td.name a").click()
            await page.get_by_role("button", name="Remove this webhook…").click()
            await expect(page.locator("p.problem")).to_contain_text(
                f"Removing webhook {HOSTILE} deletes its deliveries with it: 0 pending"
            )
            assert await page.locator("main script, main img").count() == 0
            await page.get_by_role("button", name=f"Remove webhook {HOSTILE}").click()
            await expect(page.locator(".said")).to_have_text("Removed, with its deliveries.")

            await page.get_by_role("link", name="Audit", exact=True).click()
            log = await page.locator("table.audit tbody").inner_text()
            assert "webhook rotate-secret" in log and "rule remove" in log
            assert "webhook remove" in log and HOSTILE in log
            for secret in (OLD, NEW, OLD[6:], NEW[6:]):
                assert secret not in await page.content()
            assert seen == []
            await browser.close()

    asyncio.run(go())
    assert _row(dsn, "SELECT count(*) FROM relay.webhooks") == (0,)
    assert _row(dsn, "SELECT count(*) FROM relay.console_audit") == (3,)


def test_a_role_without_the_rights_is_refused_and_nothing_changes(dsn: str) -> None:
    """The service's role may read webhooks and rules (the pages open) but not change them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders", secret="kept")
    relay_role = service(dsn)

    async def go() -> None:
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, relay_role)
            await page.goto(f"{base}/webhooks/edit?name=orders")
            rotate = page.locator("form#rotate")
            await rotate.locator("input[name=secret]").fill("new-secret")
            await rotate.get_by_role("button", name="Rotate").click()
            await expect(page.locator("main")).to_contain_text(
                f"Your role {relay_role} may not do this"
            )
            await page.goto(f"{base}/rules/edit?name=orders")
            await page.get_by_role("button", name="Remove this rule…").click()
            await page.get_by_role("button", name="Remove rule orders").click()
            await expect(page.locator("main")).to_contain_text(
                f"Your role {relay_role} may not do this"
            )
            assert seen == []
            await browser.close()

    asyncio.run(go())
    assert _row(dsn, "SELECT secret, previous_secret FROM relay.webhooks") == ("kept", "")
    assert _row(dsn, "SELECT count(*) FROM relay.event_rules") == (1,)
    assert _row(dsn, "SELECT count(*) FROM relay.console_audit") == (0,)

"""relay console's editing pages in a real browser (Debian's chromium, driven by Playwright):
editing a rule (a bad condition refused with its reason on the form, a good one saved and
audited), previewing it, adding a webhook whose template is broken, and hostile names and
templates shown as text. Skipped, saying why, where chromium or Playwright is missing."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from support.browser import CHROMIUM, needs_browser, sign_in, watch
from support.console import owner, scalar, serving
from support.worker import setup

with contextlib.suppress(ImportError):  # needs_browser skips the module, saying why
    from playwright.async_api import async_playwright, expect

pytestmark = needs_browser


def test_edit_a_rule_preview_it_and_add_a_webhook_with_a_broken_template(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders", body_template='{"v": {{ data.v }}}')
        conn.execute("INSERT INTO items VALUES (1, 42)")
    outbox_id = scalar(dsn, "SELECT max(id) FROM relay.outbox")
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, boss)
            await page.get_by_role("link", name="Rules", exact=True).click()
            await page.locator("table.rules a", has_text="orders").first.click()
            conditions = page.locator("textarea[name=conditions]")
            await conditions.fill('{"attr": "data.v", "op": "bigger", "value": 10}')
            await page.get_by_role("button", name="Save").click()
            await expect(page.locator("#problem")).to_contain_text("bigger")
            # The form keeps what was typed, to fix it.
            assert "bigger" in await conditions.input_value()
            assert scalar(dsn, "SELECT conditions FROM relay.event_rules") is None
            await conditions.fill('{"attr": "data.v", "op": "gt", "value": 10}')
            await page.get_by_role("button", name="Save").click()
            await expect(page.locator(".said")).to_have_text("Saved.")
            assert scalar(dsn, "SELECT conditions FROM relay.event_rules") == {
                "attr": "data.v",
                "op": "gt",
                "value": 10,
            }

            await page.fill("input[name=outbox_id]", str(outbox_id))
            await page.get_by_role("button", name="Preview").click()
            await expect(page.locator("#request")).to_contain_text('{"v": 42}')
            await expect(page.locator("#request")).to_contain_text("X-Hook-Signature")

            await page.get_by_role("link", name="Webhooks", exact=True).click()
            await page.get_by_role("link", name="New webhook").click()
            await page.fill("input[name=name]", "broken")
            await page.fill("input[name=url]", "http://127.0.0.1:9/other")
            await page.fill("textarea[name=body-template]", '{\n"id": {{ data.id }\n}')
            await page.get_by_role("button", name="Add").click()
            problem = page.locator("#problem")
            await expect(problem).to_contain_text("body_template")
            await expect(problem).to_contain_text("line 2")
            assert scalar(dsn, "SELECT count(*) FROM relay.webhooks") == 1

            await page.get_by_role("link", name="Audit", exact=True).click()
            log = await page.locator("table.audit tbody").inner_text()
            assert "rule edit" in log and boss in log and "webhook add" not in log
            assert seen == []
            await browser.close()

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.console_audit") == 1


def test_hostile_webhook_and_rule_names_and_templates_render_as_text(dsn: str) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(
            conn,
            "http://127.0.0.1:9/hook",
            name=hostile,
            body_template=hostile + "{{ data.note }}",
        )
        conn.execute("ALTER TABLE items ADD COLUMN note text")
        conn.execute("INSERT INTO items VALUES (1, 1, %s)", (hostile,))
    outbox_id = scalar(dsn, "SELECT max(id) FROM relay.outbox")
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            seen = watch(page)
            await sign_in(page, base, boss)
            await page.get_by_role("link", name="Webhooks", exact=True).click()
            await page.locator("td.name a").click()
            await expect(page.locator("h1")).to_have_text(f"Webhook {hostile}")
            assert await page.locator("form.edit input[name=name]").input_value() == hostile
            template = page.locator("textarea[name=body-template]")
            assert await template.input_value() == hostile + "{{ data.note }}"
            assert await page.locator("main script, main img").count() == 0
            await page.get_by_role("link", name="Rules", exact=True).click()
            assert await page.locator("td.name").inner_text() == hostile
            await page.locator("td.name a").click()
            await expect(page.locator("h1")).to_have_text(f"Rule {hostile}")
            assert await page.locator("script, img").count() == 0
            await page.fill("input[name=outbox_id]", str(outbox_id))
            await page.get_by_role("button", name="Preview").click()
            await expect(page.locator("#request")).to_contain_text(hostile + hostile)
            assert await page.locator("script, img").count() == 0
            assert seen == []
            await browser.close()

    asyncio.run(go())

"""relay console's editing pages in a real browser (Debian's chromium, driven by Playwright):
editing a rule (a bad condition refused with its reason on the form, a good one saved and
audited), previewing it, adding a webhook whose template is broken, and hostile names and
templates shown as text. Skipped, saying why, where chromium or Playwright is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.tempcluster import TempCluster
from support.console import PASSWORD, password_cluster, person, relay_database, serving
from support.worker import setup

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

try:
    from playwright.async_api import Dialog, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extras install it
    pytestmark = pytest.mark.skip(reason="Playwright is not installed (pip install -e '.[test]')")
else:
    if not os.path.exists(CHROMIUM):
        pytestmark = pytest.mark.skip(
            reason=f"no chromium at {CHROMIUM}: apt-get install chromium (scripts/ensure-chromium)"
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[TempCluster]:
    with password_cluster() as started:
        yield started


@pytest.fixture
def dsn(cluster: TempCluster) -> Iterator[str]:
    with relay_database(cluster) as made:
        yield made


def owner(dsn: str) -> str:
    """A login role with the rights of relay's owner (a member of the role that installed it)."""
    name = person(dsn, "owner", rights=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(name)))
    return name


def _one(dsn: str, statement: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(statement, params).fetchone()
        return row[0] if row else None


async def sign_in(page: Page, base: str, role: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("input[name=role]", role)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")


def watch(page: Page) -> list[str]:
    """Every dialog a script opens and every message on the console (but the browser's own
    notes: a resource answered 4xx, chromium's [DOM] advice on the secret's password field):
    a script that ran."""
    seen: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        seen.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", dismiss)
    page.on(
        "console",
        lambda message: (
            None
            if message.text.startswith(("Failed to load resource", "[DOM]"))
            else seen.append(f"console: {message.text}")
        ),
    )
    return seen


def test_edit_a_rule_preview_it_and_add_a_webhook_with_a_broken_template(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders", body_template='{"v": {{ data.v }}}')
        conn.execute("INSERT INTO items VALUES (1, 42)")
    outbox_id = _one(dsn, "SELECT max(id) FROM relay.outbox")
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
            assert _one(dsn, "SELECT conditions FROM relay.event_rules") is None
            await conditions.fill('{"attr": "data.v", "op": "gt", "value": 10}')
            await page.get_by_role("button", name="Save").click()
            await expect(page.locator(".said")).to_have_text("Saved.")
            assert _one(dsn, "SELECT conditions FROM relay.event_rules") == {
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
            assert _one(dsn, "SELECT count(*) FROM relay.webhooks") == 1

            await page.get_by_role("link", name="Audit", exact=True).click()
            log = await page.locator("table.audit tbody").inner_text()
            assert "rule edit" in log and boss in log and "webhook add" not in log
            assert seen == []
            await browser.close()

    asyncio.run(go())
    assert _one(dsn, "SELECT count(*) FROM relay.console_audit") == 1


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
    outbox_id = _one(dsn, "SELECT max(id) FROM relay.outbox")
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

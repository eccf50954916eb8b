"""Screenshots of relay console's main pages for docs/console.md, taken in Debian's chromium
(driven by Playwright, as tests/system/test_console_browser.py does) against a seeded scratch
database.

    .venv/bin/python bench/console_screenshots.py [--out docs/console]

A throwaway PostgreSQL cluster that asks roles their passwords (the console refuses roles it
does not); relay installed, two tracked tables, three webhooks (one delivering, one whose
receiver answers 500, one paused), a real relay delivering a few hundred changes to receivers on
127.0.0.1, attempts spread over the last hour and day for the charts, a backfill under way, and
a person who pauses and retries through the console (the audit). Then sign-in, overview,
webhooks, deliveries, a failed delivery's page (its attempt's request and response), audit,
tracked tables, a row's changes by its key, the retry of every failed delivery's preview, and,
as relay's owner, a webhook's page (rotate, remove) and a replay's preview are saved as PNG files
1200 pixels wide, made smaller with pngquant and optipng where they are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
from aiohttp import web
from playwright.async_api import Page, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.console import PASSWORD, password_cluster, person, relay_database, serving
from support.receivers import receiver
from support.worker import running, until

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1200

SEED = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer int, status text, total numeric);
CREATE TABLE public.customers (id int PRIMARY KEY, name text, email text, password_hash text);
SELECT relay.track('public.orders', model => 'shop.order');
SELECT relay.track('public.customers', ARRAY['insert', 'update'],
                   exclude_columns => ARRAY['password_hash'], model => 'shop.customer');
INSERT INTO relay.webhooks (name, payload_url, secret, max_attempts)
VALUES ('orders-to-erp', %(good)s, 's3cr3t-erp', 8),
       ('crm-sync', %(bad)s, 's3cr3t-crm', 1),
       ('audit-archive', %(good)s, 's3cr3t-archive', 8);
INSERT INTO relay.event_rules (name, tables, webhook_id)
SELECT w.name, t.tables, w.id
FROM relay.webhooks w
JOIN (VALUES ('orders-to-erp', ARRAY['public.orders']),
             ('crm-sync', ARRAY['public.customers']),
             ('audit-archive', ARRAY['public.orders', 'public.customers'])) t (name, tables)
  ON t.name = w.name;
"""

HISTORY = """
-- Attempts spread over the last day, more of them lately, some failed before a retry went
-- through: what a day of a working relay leaves, for the overview's charts.
INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, attempted_at, duration_ms,
                            status_code, error)
SELECT outbox_id, webhook_id, 1, at, took, code,
       CASE code WHEN 503 THEN 'HTTP 503 Service Unavailable' END
FROM (SELECT d.outbox_id, d.webhook_id, now() - (random() ^ 2) * interval '1 day' AS at,
             20 + (random() * 80)::int AS took,
             CASE WHEN random() < 0.06 THEN 503 ELSE 200 END AS code
      FROM relay.deliveries d
      CROSS JOIN generate_series(1, 6)
      WHERE d.status = 'delivered') a;
INSERT INTO relay.backfills (tbl, rows_total, rows_done, started_at, updated_at)
VALUES ('public.customers'::regclass, 12000, 7400, now() - interval '3 minutes', now());
"""


async def signed_in(page: Page, base: str, role: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("input[name=role]", role)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/")


async def shoot(page: Page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def smaller(path: Path) -> None:
    """Fewer colours (pngquant: a page has few) and a tighter deflate (optipng), if installed."""
    if shutil.which("pngquant"):
        subprocess.run(
            ["pngquant", "--force", "--skip-if-larger", "--output", str(path), "64", str(path)],
            check=False,
        )
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o2", str(path)], check=True)


async def take(dsn: str, out: Path) -> list[Path]:
    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="crm: database is read-only for maintenance")

    alice = person(dsn, "alice")
    boss = person(dsn, "boss", rights=False)  # relay's owner: edits, rotates, replays
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'GRANT postgres TO "{boss}"')
    async with receiver() as good, receiver(failing) as bad:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in SEED.split(";\n")[:-1]:
                conn.execute(statement, {"good": good.url, "bad": bad.url})
            conn.execute(
                "INSERT INTO orders SELECT i, i % 40, 'paid', i * 9.5"
                " FROM generate_series(1, 120) i"
            )
            conn.execute(
                "INSERT INTO customers SELECT i, 'Customer ' || i, 'c' || i || '@example.com',"
                " 'x' FROM generate_series(1, 40) i"
            )
            conn.execute("UPDATE orders SET status = 'shipped' WHERE id % 3 = 0")
        async with running(dsn):
            await until(lambda: len(good.requests) >= 120 + 40 + 40, timeout=60)
            # The failing receiver's endpoint is soon held back by the circuit breaker: some
            # of its deliveries fail, the rest wait.
            await until(lambda: len(bad.requests) >= 3, timeout=60)
            await asyncio.sleep(2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in HISTORY.split(";\n")[:-1]:
                conn.execute(statement)
        async with serving(dsn) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page(viewport={"width": WIDTH, "height": 700})
            taken = []
            await page.goto(f"{base}/login")
            await page.fill("input[name=role]", alice)
            taken.append(await shoot(page, out, "sign-in"))
            await signed_in(page, base, alice)
            await page.goto(f"{base}/webhooks")
            await page.locator("tr", has_text="audit-archive").get_by_role("button").click()
            await page.goto(f"{base}/deliveries?status=failed")
            await page.locator("table.deliveries a").first.click()
            await page.get_by_role("button", name="Retry").click()
            await page.goto(f"{base}/?window=day")
            taken.append(await shoot(page, out, "overview"))
            await page.goto(f"{base}/webhooks")
            taken.append(await shoot(page, out, "webhooks"))
            await page.goto(f"{base}/deliveries?webhook=crm-sync&status=failed")
            taken.append(await shoot(page, out, "deliveries"))
            await page.locator("table.deliveries a").first.click()
            taken.append(await shoot(page, out, "delivery"))
            await page.goto(f"{base}/audit")
            taken.append(await shoot(page, out, "audit"))
            await page.goto(f"{base}/tables")
            taken.append(await shoot(page, out, "tables"))
            await page.goto(f"{base}/deliveries?table=public.orders&key=3")
            taken.append(await shoot(page, out, "by-key"))
            await page.goto(f"{base}/deliveries/retry?webhook=crm-sync&status=failed")
            taken.append(await shoot(page, out, "retry-failed"))
            owner = await browser.new_page(viewport={"width": WIDTH, "height": 700})
            await signed_in(owner, base, boss)
            await owner.goto(f"{base}/webhooks/edit?name=orders-to-erp")
            taken.append(await shoot(owner, out, "webhook"))
            await owner.goto(f"{base}/replay?webhook=audit-archive&since=1h")
            taken.append(await shoot(owner, out, "replay"))
            await browser.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshots of relay console's pages.")
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with password_cluster() as cluster, relay_database(cluster) as dsn:
        taken = asyncio.run(take(dsn, args.out))
    for path in taken:
        smaller(path)
        print(f"{path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()

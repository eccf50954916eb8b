"""The console rotates a webhook's secret and removes webhooks and rules: as the signed-in role,
with CSRF, audited without any secret, in the command line's words."""

from __future__ import annotations

import asyncio
import base64
import re

import psycopg

from support.console import (
    WEBHOOK,
    audit,
    csrf,
    http_client,
    owner,
    person,
    problem,
    service,
    serving,
    sign_in,
)
from support.worker import running, setup, until

OLD = "whsec_" + base64.b64encode(b"the-old-key-of-32-bytes-exactly!").decode()
NEW = "whsec_" + base64.b64encode(b"the-new-key-of-32-bytes-exactly!").decode()


def _row(dsn: str, statement: str) -> tuple[object, ...]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(statement).fetchone()
        assert found is not None
        return tuple(found)


def test_the_owner_rotates_a_secret_which_is_never_shown_nor_audited(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders", secret=OLD, signature="standard")
    boss = owner(dsn)
    operator = person(dsn, "alice")
    pages: list[str] = []

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            form = await client.get(f"{base}/webhooks/edit", params={"name": "orders"})
            pages.append(await form.text())
            assert 'action="/webhooks/rotate-secret"' in pages[-1]
            assert 'type="password" name="secret"' in pages[-1]
            bad = await client.post(
                f"{base}/webhooks/rotate-secret",
                data={"csrf": token, "name": "orders", "secret": "not-whsec", "grace": "1h"},
            )
            pages.append(await bad.text())
            assert bad.status == 400
            assert "the new secret cannot sign" in problem(pages[-1])
            late = await client.post(
                f"{base}/webhooks/rotate-secret",
                data={"csrf": token, "name": "orders", "secret": NEW, "grace": "45d"},
            )
            pages.append(await late.text())
            assert late.status == 400 and "at most 30d" in problem(pages[-1])
            forged = await client.post(
                f"{base}/webhooks/rotate-secret",
                data={"csrf": "forged", "name": "orders", "secret": NEW, "grace": "1h"},
            )
            pages.append(await forged.text())
            assert forged.status == 403
            assert _row(dsn, "SELECT secret, previous_secret FROM relay.webhooks") == (OLD, "")
            done = await client.post(
                f"{base}/webhooks/rotate-secret",
                data={"csrf": token, "name": "orders", "secret": NEW + "\r\n", "grace": "1h"},
            )
            pages.append(await done.text())
            assert done.status == 200 and str(done.url.path) == "/webhooks/edit"
            assert "Secret rotated (the new one is never shown)." in pages[-1]
            assert "Previous secret: previous secret valid until" in pages[-1]
            listed = await client.get(f"{base}/webhooks")
            pages.append(await listed.text())
            assert "active; previous secret valid until" in pages[-1]
            # A change of signature on the webhook's form replaces the secrets at once.
            saved = await client.post(
                f"{base}/webhooks/save",
                data={
                    **WEBHOOK,
                    "original": "orders",
                    "name": "orders",
                    "secret": "",
                    "csrf": token,
                },
            )
            pages.append(await saved.text())
            assert saved.status == 200 and "Saved." in pages[-1]
            assert "Previous secret" not in pages[-1]
            assert _row(dsn, "SELECT secret, previous_secret FROM relay.webhooks") == (NEW, "")
            await client.post(
                f"{base}/webhooks/rotate-secret",
                data={"csrf": token, "name": "orders", "secret": "netbox-one", "grace": "1h"},
            )
        # The console's role reads until when, never a secret.
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, operator)
            listed = await client.get(f"{base}/webhooks")
            pages.append(await listed.text())
            assert listed.status == 200
            assert "active; previous secret valid until" in pages[-1]

    asyncio.run(go())
    assert _row(dsn, "SELECT secret, previous_secret FROM relay.webhooks") == ("netbox-one", NEW)
    assert _row(
        dsn,
        "SELECT previous_secret_until BETWEEN now() + interval '59 min' AND now() + interval '1 h'"
        " FROM relay.webhooks",
    ) == (True,)
    entries = audit(dsn)
    assert [entry[:3] for entry in entries] == [
        (boss, "webhook rotate-secret", "orders"),
        (boss, "webhook edit", "orders"),
        (boss, "webhook rotate-secret", "orders"),
    ]
    assert entries[0][3].startswith("secret rotated; previous secret valid until ")
    assert entries[0][3].endswith("(each request carries both signatures until then)")
    assert entries[2][3].endswith("(it signs X-Hook-Signature until then, the new one after)")
    for text in [*pages, *(str(entry) for entry in entries)]:
        for secret in (OLD, NEW, OLD[6:], NEW[6:], "netbox-one"):
            assert secret not in text


def test_removing_asks_first_counting_the_deliveries_and_refuses_a_webhook_a_rule_uses(
    dsn: str,
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders")
        conn.execute("UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'")
        conn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 3) i")
    boss = owner(dsn)

    def count(statement: str) -> object:
        return _row(dsn, statement)[0]

    async def go() -> None:
        async with running(dsn):
            await until(lambda: count("SELECT count(*) FROM relay.deliveries") == 3)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE relay.deliveries SET status = 'failed' WHERE outbox_id = "
                "(SELECT min(outbox_id) FROM relay.deliveries)"
            )
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            used = await client.post(
                f"{base}/webhooks/remove", data={"csrf": token, "name": "orders", "confirm": "yes"}
            )
            text = await used.text()
            assert used.status == 409
            assert "webhook &#39;orders&#39; is used by rule(s) orders; remove them first" in text
            asked = await client.post(
                f"{base}/rules/remove", data={"csrf": token, "name": "orders"}
            )
            text = await asked.text()
            assert "Removing rule orders stops changes from matching it" in text
            assert count("SELECT count(*) FROM relay.event_rules") == 1
            gone = await client.post(
                f"{base}/rules/remove", data={"csrf": token, "name": "orders", "confirm": "yes"}
            )
            assert str(gone.url.path) == "/rules" and "Removed." in await gone.text()
            asked = await client.post(
                f"{base}/webhooks/remove", data={"csrf": token, "name": "orders"}
            )
            text = await asked.text()
            assert "deletes its deliveries with it: 2 pending (never sent), 1 failed" in text
            assert count("SELECT count(*) FROM relay.webhooks") == 1
            gone = await client.post(
                f"{base}/webhooks/remove", data={"csrf": token, "name": "orders", "confirm": "yes"}
            )
            assert str(gone.url.path) == "/webhooks"
            assert "Removed, with its deliveries." in await gone.text()
            missing = await client.post(
                f"{base}/webhooks/remove", data={"csrf": token, "name": "orders", "confirm": "yes"}
            )
            assert missing.status == 404

    asyncio.run(go())
    assert count("SELECT count(*) FROM relay.webhooks") == 0
    assert count("SELECT count(*) FROM relay.deliveries") == 0
    assert [entry[1:4] for entry in audit(dsn)] == [
        ("rule remove", "orders", "removed"),
        (
            "webhook remove",
            "orders",
            "removed with 2 pending, 1 failed and 0 delivered deliveries",
        ),
    ]


def test_roles_without_the_rights_may_not_rotate_or_remove(dsn: str) -> None:
    operator = person(dsn, "alice")
    relay_role = service(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders", secret="kept")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url) VALUES ('spare', 'http://127.0.0.1:9/')"
        )

    async def go() -> None:
        async with serving(dsn) as base:
            for role in (operator, relay_role):
                async with http_client() as client:
                    assert (await sign_in(client, base, role)).status == 303
                    token = await csrf(client, base)
                    for url, data in [
                        ("/webhooks/rotate-secret", {"name": "orders", "secret": "new"}),
                        ("/webhooks/remove", {"name": "spare", "confirm": "yes"}),
                        ("/rules/remove", {"name": "orders", "confirm": "yes"}),
                    ]:
                        denied = await client.post(
                            base + url, data={**data, "grace": "1h", "csrf": token}
                        )
                        text = await denied.text()
                        assert denied.status == 403, (role, url, text)
                        assert f"Your role {role} may not do this" in text

    asyncio.run(go())
    assert _row(dsn, "SELECT secret, previous_secret FROM relay.webhooks") == ("kept", "")
    assert _row(dsn, "SELECT count(*) FROM relay.event_rules") == (1,)
    assert _row(dsn, "SELECT count(*) FROM relay.webhooks") == (2,)
    assert audit(dsn) == []


def _confirm_form(html: str) -> dict[str, str]:
    """The fields the confirm page's form sends, as a browser sends them."""
    form = re.search(
        r'<form method="post" action="/(?:webhooks|rules)/remove">(.*?)</form>', html, re.S
    )
    assert form, "no confirming form on the page"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form[1]))


def test_a_stale_confirm_page_removes_nothing_it_did_not_show(dsn: str) -> None:
    """The webhook (or rule) a confirm page asked about was removed, and another added under its
    name, before the person confirmed: confirming removes nothing, and says why."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url) VALUES ('spare', 'http://127.0.0.1:9/')"
        )
    boss = owner(dsn)
    again = [
        "DELETE FROM relay.webhooks WHERE name = 'spare'",
        "INSERT INTO relay.webhooks (name, payload_url) VALUES ('spare', 'http://127.0.0.1:8/')",
        "DELETE FROM relay.event_rules WHERE name = 'orders'",
        "INSERT INTO relay.event_rules (name, tables, webhook_id) "
        "SELECT 'orders', ARRAY['public.items'], id FROM relay.webhooks WHERE name = 'orders'",
    ]

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            pages = {}
            for kind in ("webhooks", "rules"):
                name = "spare" if kind == "webhooks" else "orders"
                asked = await client.post(
                    f"{base}/{kind}/remove", data={"csrf": token, "name": name}
                )
                pages[kind] = _confirm_form(await asked.text())
                assert pages[kind]["confirm"] == "yes" and pages[kind]["name"] == name
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in again:
                    conn.execute(statement)
            for kind, form in pages.items():
                stale = await client.post(f"{base}/{kind}/remove", data=form)
                text = await stale.text()
                assert stale.status == 409, text
                assert "was removed since, and another was added under its name" in problem(text)
            # A page asked anew removes the one it shows.
            asked = await client.post(
                f"{base}/rules/remove", data={"csrf": token, "name": "orders"}
            )
            gone = await client.post(f"{base}/rules/remove", data=_confirm_form(await asked.text()))
            assert str(gone.url.path) == "/rules"

    asyncio.run(go())
    assert _row(dsn, "SELECT payload_url FROM relay.webhooks WHERE name = 'spare'") == (
        "http://127.0.0.1:8/",
    )
    assert _row(dsn, "SELECT count(*) FROM relay.event_rules") == (0,)
    assert [entry[1:3] for entry in audit(dsn)] == [("rule remove", "orders")]

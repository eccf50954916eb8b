"""relay console's editing pages over HTTP against a real PostgreSQL: adding and editing
webhooks and rules checked as the command line checks them, each refusal said on the form;
enabling and disabling; a rule's preview and a webhook's test event; who may do what (the
owner may, the console's and the service's roles get a 403 page), and the audit of each."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
from typing import Any

import aiohttp
import psycopg

from support.console import (
    WEBHOOK,
    audit,
    csrf,
    http_client,
    owner,
    person,
    problem,
    scalar,
    service,
    serving,
    sign_in,
)
from support.receivers import receiver
from support.worker import running, setup, until


def test_the_owner_adds_and_edits_a_webhook_with_every_field_and_the_secret_is_never_shown(
    dsn: str,
) -> None:
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            form = await client.get(f"{base}/webhooks/add")
            assert form.status == 200 and 'name="dead-after"' in await form.text()
            added = await client.post(f"{base}/webhooks/save", data={**WEBHOOK, "csrf": token})
            page = await added.text()
            assert added.status == 200 and "Added." in page, page
            assert "first-secret" not in page and "set (never shown)" in page
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT http_method, additional_headers, timeout_seconds, max_attempts,"
                    " concurrency, rate_limit, dead_after_seconds, ordering, ordering_key,"
                    " body_format, coalesce_changes, secret FROM relay.webhooks"
                ).fetchone()
            assert row is not None
            assert row[0] == "PUT" and row[1] == "X-Team: ops\nX-Id: {{ data.id }}"
            assert (str(row[2]), row[3], row[4], str(row[5]), row[6]) == ("7.5", 4, 3, "2.5", 7200)
            assert row[7:] == ("key", "{{ data.id }}", "netbox4", True, "first-secret")

            # Saved again with the secret left empty: kept; the ordering back to row.
            again = {**WEBHOOK, "secret": "", "ordering": "row", "concurrency": "default"}
            edited = await client.post(
                f"{base}/webhooks/save", data={**again, "original": "orders", "csrf": token}
            )
            assert "Saved." in await edited.text()
            assert scalar(dsn, "SELECT secret FROM relay.webhooks") == "first-secret"
            assert scalar(dsn, "SELECT ordering_key FROM relay.webhooks") is None
            assert scalar(dsn, "SELECT concurrency FROM relay.webhooks") is None

    asyncio.run(go())
    entries = audit(dsn)
    assert entries[0] == (boss, "webhook add", "orders", "added", "127.0.0.1")
    assert entries[1][1:3] == ("webhook edit", "orders")
    assert "concurrency" in entries[1][3] and "ordering" in entries[1][3]
    assert "secret" not in entries[1][3]


def test_bad_webhooks_are_refused_on_the_form_and_nothing_is_stored(dsn: str) -> None:
    boss = owner(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url) VALUES ('taken', 'http://127.0.0.1:9/')"
        )
    cases = [
        ({"name": "taken"}, "Choose another name"),
        ({"body-template": '{"id": {{ data.id }'}, "body_template"),
        ({"body-template": "{% for x in data %}"}, "line 1"),
        ({"header": "no colon here"}, "additional_headers line 1"),
        ({"ordering-key": "{{ data.id "}, "ordering_key"),
        ({"concurrency": "0"}, "concurrency &#39;0&#39;: give a number from 1 to 10000"),
        ({"rate-limit": "fast"}, "rate-limit &#39;fast&#39;"),
        ({"dead-after": "5s"}, "dead-after &#39;5s&#39;: give a time from 60s"),
        ({"timeout": "301"}, "timeout &#39;301&#39;"),
        ({"related": "[1]"}, "related is a JSON object"),
        ({"method": "FOO"}, "unknown http_method &#34;FOO&#34;"),
        ({"url": "ftp://127.0.0.1/x"}, "is not an http:// or https:// URL"),
        ({"ca-file": "/etc/x.pem", "ssl-verification": ""}, "ssl_verification is off"),
        ({"name": "bad\nname"}, "holds a control character"),
        ({"name": ""}, "name: give a name"),
    ]

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            for change, says in cases:
                data = {**WEBHOOK, "ordering": "row", "ordering-key": "", **change}
                if "ordering-key" in change:
                    data["ordering"] = "key"
                refused = await client.post(f"{base}/webhooks/save", data={**data, "csrf": token})
                page = await refused.text()
                assert refused.status == 400, (change, page)
                assert says in problem(page), (change, problem(page))
                assert "Traceback" not in page
                # What was given is on the form again, but the secret.
                assert "first-secret" not in page

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.webhooks") == 1
    assert audit(dsn) == []


def test_roles_that_may_not_change_webhooks_get_a_403_page_and_change_nothing(dsn: str) -> None:
    """The console's role and the service's may not change webhooks or rules; nor send a test
    event (the console's may not read the secret to sign it, the service's may not record it
    in the audit): refused before anything is sent."""
    operator = person(dsn, "alice")
    relay_role = service(dsn)

    async def go() -> None:
        async with receiver() as r, serving(dsn) as base:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="orders")
            for role in (operator, relay_role):
                async with http_client() as client:
                    assert (await sign_in(client, base, role)).status == 303
                    token = await csrf(client, base)
                    for url, data in [
                        (f"{base}/webhooks/save", {**WEBHOOK, "original": "orders"}),
                        (f"{base}/webhooks/save", {**WEBHOOK, "name": "new"}),
                        (f"{base}/webhooks/disable", {"name": "orders", "confirm": "yes"}),
                        (f"{base}/rules/disable", {"name": "orders"}),
                        (f"{base}/webhooks/test", {"name": "orders"}),
                    ]:
                        denied = await client.post(url, data={**data, "csrf": token})
                        text = await denied.text()
                        assert denied.status == 403, (role, url, text)
                        assert f"Your role {role} may not do this" in text
                        assert "permission denied" in text
                    if role == operator:  # docs/console.md: the rules pages are the owner's
                        listed = await client.get(f"{base}/rules")
                        assert listed.status == 403, await listed.text()
                        assert "permission denied" in await listed.text()
            assert r.requests == []

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.webhooks") == 1
    assert scalar(dsn, "SELECT enabled FROM relay.webhooks") is True
    assert scalar(dsn, "SELECT enabled FROM relay.event_rules") is True
    assert audit(dsn) == []


def test_disabling_a_webhook_with_waiting_deliveries_asks_first_saying_how_many(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders")
        conn.execute("UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'")
        conn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 3) i")
    boss = owner(dsn)

    async def go() -> None:
        async with running(dsn):
            await until(lambda: scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 3)
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)
            asked = await client.post(
                f"{base}/webhooks/disable", data={"csrf": token, "name": "orders"}
            )
            text = await asked.text()
            assert "fails its 3 pending deliveries" in text and "Pause instead" in text
            assert scalar(dsn, "SELECT enabled FROM relay.webhooks") is True
            done = await client.post(
                f"{base}/webhooks/disable", data={"csrf": token, "name": "orders", "confirm": "yes"}
            )
            assert "Disabled" in await done.text()
            assert scalar(dsn, "SELECT enabled FROM relay.webhooks") is False
            back = await client.post(
                f"{base}/webhooks/enable", data={"csrf": token, "name": "orders"}
            )
            assert "Enabled" in await back.text()

    asyncio.run(go())
    assert [entry[1:4] for entry in audit(dsn)] == [
        ("webhook disable", "orders", "disabled"),
        ("webhook enable", "orders", "enabled"),
    ]


def test_rules_are_listed_added_and_edited_with_their_conditions_validated(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="orders")
    boss = owner(dsn)
    rule: dict[str, Any] = {
        "name": "big",
        "webhook": "orders",
        "table": "public.items",
        "event": ["insert", "update"],
        "conditions": '{"attr": "data.v", "op": "gt", "value": 10}',
        "action-data": '{"team": "ops"}',
        "enabled": "on",
    }

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            token = await csrf(client, base)

            def form(values: dict[str, Any]) -> aiohttp.FormData:
                data = aiohttp.FormData()
                data.add_field("csrf", token)
                for key, value in values.items():
                    for one in value if isinstance(value, list) else [value]:
                        data.add_field(key, one)
                return data

            refusals: list[tuple[dict[str, Any], str]] = [
                ({"conditions": '{"attr": "data.v", "op": "nope", "value": 1}'}, "nope"),
                ({"conditions": "{not json"}, "conditions is not valid JSON"),
                ({"action-data": "[1]"}, "action_data must be a JSON object"),
                ({"table": "orders"}, "is not a schema-qualified table name"),
                ({"event": ["upsert"]}, "event &#39;upsert&#39;"),
                ({"event": []}, "event: tick at least one"),
                ({"webhook": "nosuch"}, "no webhook named &#39;nosuch&#39;"),
            ]
            for change, says in refusals:
                refused = await client.post(f"{base}/rules/save", data=form({**rule, **change}))
                page = await refused.text()
                assert refused.status == 400, (change, page)
                assert says in problem(page), (change, problem(page))
            assert scalar(dsn, "SELECT count(*) FROM relay.event_rules") == 1

            added = await client.post(f"{base}/rules/save", data=form(rule))
            assert "Added." in await added.text()
            listed = await (await client.get(f"{base}/rules")).text()
            assert "big" in listed and "public.items" in listed and "insert, update" in listed
            # A path no column of the tracked table satisfies: rules check's warning.
            typo = {**rule, "conditions": '{"attr": "data.vv", "value": 1}', "original": "big"}
            edited = await client.post(f"{base}/rules/save", data=form(typo))
            page = await edited.text()
            assert "Saved." in page and 'id="warnings"' in page and "data.vv" in page
            off = await client.post(f"{base}/rules/disable", data=form({"name": "big"}))
            assert "Disabled" in await off.text()
            assert scalar(dsn, "SELECT enabled FROM relay.event_rules WHERE name = 'big'") is False

    asyncio.run(go())
    assert [entry[1:3] for entry in audit(dsn)] == [
        ("rule add", "big"),
        ("rule edit", "big"),
        ("rule disable", "big"),
    ]


def test_a_rule_is_previewed_against_an_outbox_row_with_its_secrets_masked(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(
            conn,
            "http://user:pa55word@127.0.0.1:9/hook?token=t0ken",
            name="orders",
            body_template='{"v": {{ data.v }}, "s": "{{ data.note }}"}',
        )
        conn.execute("ALTER TABLE items ADD COLUMN note text")
        conn.execute("INSERT INTO items VALUES (1, 42, 's3cr3t inside')")
        outbox_id = conn.execute("SELECT max(id) FROM relay.outbox").fetchone()
    assert outbox_id is not None
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            shown = await client.get(
                f"{base}/rules/preview", params={"name": "orders", "outbox_id": str(outbox_id[0])}
            )
            text = await shown.text()
            assert shown.status == 200, text
            assert "{&#34;v&#34;: 42" in text and "X-Hook-Signature" in text
            assert "s3cr3t" not in text and "pa55word" not in text and "t0ken" not in text
            missing = await client.get(
                f"{base}/rules/preview", params={"name": "orders", "outbox_id": "999999"}
            )
            assert missing.status == 404
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE relay.event_rules SET enabled = false")
            off = await client.get(
                f"{base}/rules/preview", params={"name": "orders", "outbox_id": str(outbox_id[0])}
            )
            assert "Nothing would be sent: rule &#39;orders&#39; is disabled" in await off.text()

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 0


def test_a_batch_and_a_coalesced_event_are_previewed_as_the_relay_would_send_them(
    dsn: str,
) -> None:
    """Several ids preview a batched webhook's batch; a webhook that coalesces previews the
    transaction's event for its last change, and says where an earlier change went."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name="grouped", body_template="{{ event }}")
        setup(conn, "http://127.0.0.1:9/hook", name="batched", batch_size=2)
        conn.execute("UPDATE relay.webhooks SET coalesce_changes = true WHERE name = 'grouped'")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (1, 1)")
            conn.execute("UPDATE items SET v = 2 WHERE id = 1")
        first, last = (r[0] for r in conn.execute("SELECT id FROM relay.outbox ORDER BY id"))
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)

            async def preview(rule: str, ids: str) -> tuple[int, str]:
                shown = await client.get(
                    f"{base}/rules/preview", params={"name": rule, "outbox_id": ids}
                )
                return shown.status, await shown.text()

            status, text = await preview("grouped", str(last))
            assert status == 200 and "\n\ncreated</pre>" in text, text
            status, text = await preview("grouped", str(first))
            assert f"coalesces changes, and it is in the event of change {last}" in text
            assert 'id="request"' not in text
            status, text = await preview("batched", f"{first}, {last}")
            assert status == 200, text
            body = html.unescape(text.split("\n\n", 1)[1].split("</pre>", 1)[0])
            assert [item["id"] for item in json.loads(body)] == [first, last]
            status, text = await preview("batched", f"{first} {last} 99")
            assert status == 400 and "at most 2 change(s)" in text
            status, text = await preview("batched", "1 x")
            assert status == 400 and "a whole number" in text

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 0


def test_a_test_event_is_sent_once_signed_and_audited_writing_nothing_else(dsn: str) -> None:
    boss = owner(dsn)

    async def go() -> None:
        async with receiver() as r:
            with psycopg.connect(dsn, autocommit=True) as conn:
                setup(conn, r.url, name="orders")
            outbox = scalar(dsn, "SELECT count(*) FROM relay.outbox")
            async with serving(dsn) as base, http_client() as client:
                await sign_in(client, base, boss)
                token = await csrf(client, base)
                sent = await client.post(
                    f"{base}/webhooks/test",
                    data={"csrf": token, "name": "orders", "row": '{"id": 9}'},
                )
                text = await sent.text()
                assert sent.status == 200, text
                assert "delivered: HTTP 200" in text and "s3cr3t" not in text
                # A batched webhook gets a batch of one, as relay run would send it.
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("UPDATE relay.webhooks SET batch_size = 2")
                batched = await client.post(
                    f"{base}/webhooks/test", data={"csrf": token, "name": "orders"}
                )
                assert "delivered: HTTP 200" in await batched.text()
                bad = await client.post(
                    f"{base}/webhooks/test", data={"csrf": token, "name": "orders", "row": "[1]"}
                )
                assert bad.status == 400 and "row must be a JSON object" in await bad.text()
            assert len(r.requests) == 2
            got = r.requests[0]
            single = json.loads(got.body)
            assert single["data"] == {"id": 9, "v": None} and single["event"] == "created"
            # Signed as relay signs: HMAC-SHA512 of the body with the webhook's secret.
            expected = hmac.new(b"s3cr3t", got.body, hashlib.sha512).hexdigest()
            assert got.headers["X-Hook-Signature"] == expected
            batch = json.loads(r.requests[1].body)
            assert isinstance(batch, list) and batch[0]["data"] == {"id": None, "v": None}
            assert scalar(dsn, "SELECT count(*) FROM relay.outbox") == outbox

    asyncio.run(go())
    assert scalar(dsn, "SELECT count(*) FROM relay.deliveries") == 0
    assert [entry[1:3] for entry in audit(dsn)] == [("webhook test", "orders")] * 2
    assert all(entry[3].startswith("delivered: HTTP 200 in ") for entry in audit(dsn))


def test_hostile_names_and_templates_render_as_text(dsn: str) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, "http://127.0.0.1:9/hook", name=hostile, body_template=hostile)
        conn.execute(
            "UPDATE relay.event_rules SET conditions = %s",
            ('{"attr": "data.v", "value": "' + hostile.replace('"', '\\"') + '"}',),
        )
    boss = owner(dsn)

    async def go() -> None:
        async with serving(dsn) as base, http_client() as client:
            await sign_in(client, base, boss)
            for path, params in [
                ("/webhooks", {}),
                ("/webhooks/edit", {"name": hostile}),
                ("/rules", {}),
                ("/rules/edit", {"name": hostile}),
            ]:
                page = await client.get(base + path, params=params)
                text = await page.text()
                assert page.status == 200, text
                assert "<script>" not in text and "<img" not in text
                assert "&lt;script&gt;" in text
            # A NUL, which PostgreSQL's text cannot hold: no such webhook, or said on the form.
            token = await csrf(client, base)
            for path in ("/webhooks/edit", "/rules/edit"):
                missing = await client.get(base + path, params={"name": "a\x00"})
                assert missing.status == 404
            for path in ("/webhooks/disable", "/webhooks/test", "/rules/enable"):
                missing = await client.post(base + path, data={"csrf": token, "name": "a\x00"})
                assert missing.status == 404
            refused = await client.post(
                f"{base}/webhooks/save", data={**WEBHOOK, "name": "a\x00", "csrf": token}
            )
            assert refused.status == 400 and "NUL" in problem(await refused.text())
            refused = await client.post(
                f"{base}/rules/save",
                data={
                    "csrf": token,
                    "name": "r",
                    "webhook": "a\x00",
                    "table": "public.items",
                    "event": "insert",
                },
            )
            assert refused.status == 400

    asyncio.run(go())

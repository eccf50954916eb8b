"""Bad input, end to end: every problem ends as a failed delivery with a reason a person
understands, and everything else is still delivered."""

from __future__ import annotations

import asyncio
import json

from receivers import Receiver, receiver
from test_worker import FAST, running, until

BIG = "x" * (10 * 1024 * 1024)


def add(rconn, name: str, table: str = "public.items", **webhook: str) -> None:
    columns = {"name": name, "secret": "s", **webhook}
    rconn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})",
        list(columns.values()),
    )
    rconn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id)"
        " SELECT %s, ARRAY[%s], id FROM relay.webhooks WHERE name = %s",
        (name, table, name),
    )


def strict_json(body: bytes) -> object:
    def refuse(token: str) -> object:
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=refuse)


def test_bad_webhooks_fail_with_reasons_and_odd_data_still_arrives(rconn, relay_dsn):
    rconn.execute(
        "CREATE TABLE items (id int PRIMARY KEY, note text, amount numeric, blob bytea,"
        " tags text[], big text)"
    )
    rconn.execute("CREATE TABLE gone (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('items'), relay.track('gone')")

    async def scenario() -> tuple[Receiver, list[tuple]]:
        async with receiver() as good:
            add(rconn, "good", payload_url=good.url)
            add(rconn, "broken", payload_url=good.url, body_template="{{ data.id ")
            add(rconn, "raises", payload_url=good.url, body_template="{{ 1 / 0 }}")
            add(rconn, "garbage-url", payload_url="{{ data.note }}")
            add(rconn, "runaway", payload_url=good.url, body_template="{{ 'a' * 10**9 }}")
            add(rconn, "for-gone-table", table="public.gone", payload_url=good.url)
            rconn.execute("DROP TABLE gone")  # its rule stays behind, matching nothing
            async with running(relay_dsn, FAST):
                rconn.execute(
                    "INSERT INTO items VALUES"
                    " (1, 'emoji 🎉 and right-to-left עברית', 'NaN', '\\x00ff'::bytea,"
                    "  ARRAY['a', NULL, 'c'], NULL),"
                    " (2, 'infinite', 'Infinity', NULL, '{}', NULL),"
                    " (3, 'ten megabytes', 1.50, NULL, NULL, %s)",
                    (BIG,),
                )
                rconn.execute("UPDATE items SET amount = '-Infinity' WHERE id = 2")
                await until(lambda: len(good.requests) == 4, timeout=30)
                await until(
                    lambda: (
                        rconn.execute(
                            "SELECT count(*) FROM relay.outbox WHERE status = 'pending'"
                        ).fetchone()[0]
                        == 0
                    ),
                    timeout=30,
                )
            failures = rconn.execute(
                "SELECT w.name, d.outbox_id, d.status::text, d.last_error FROM relay.deliveries d"
                " JOIN relay.webhooks w ON w.id = d.webhook_id WHERE w.name <> 'good'"
                " ORDER BY 1, 2"
            ).fetchall()
            return good, failures

    good, failures = asyncio.run(scenario())
    bodies = [strict_json(req.body) for req in good.requests]  # valid JSON, no NaN tokens
    first = next(b for b in bodies if b["data"]["id"] == 1)
    assert first["data"]["note"] == "emoji 🎉 and right-to-left עברית"
    assert first["data"]["tags"] == ["a", None, "c"] and first["data"]["blob"] == "\\x00ff"
    assert first["data"]["amount"] == "NaN"
    assert next(b for b in bodies if b["data"]["id"] == 3)["data"]["big"] == BIG
    assert {b["data"]["amount"] for b in bodies if b["data"]["id"] == 2} == {
        "Infinity",
        "-Infinity",
    }

    reasons = {}
    for name, _, status, error in failures:
        assert status == "failed", (name, error)
        reasons.setdefault(name, set()).add(error)
    assert set(reasons) == {"broken", "raises", "garbage-url", "runaway"}
    (broken,) = reasons["broken"]
    assert broken.startswith("body_template: line 1:")
    (raises,) = reasons["raises"]
    assert raises == "body_template: ZeroDivisionError: division by zero"
    assert all("not an http(s) URL" in r for r in reasons["garbage-url"])
    (runaway,) = reasons["runaway"]
    assert "goes past" in runaway

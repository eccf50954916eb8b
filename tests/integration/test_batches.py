"""Batched webhooks (batch_size > 1), end to end: real PostgreSQL, real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.receivers import Received, Receiver, receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until


def changes(request: Received) -> list[dict[str, Any]]:
    body = json.loads(request.body)
    assert isinstance(body, list), "a batched webhook's body is a JSON array"
    return body


def test_a_batch_is_one_signed_request_of_changes_in_order(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=100, batch_wait_ms=300)
            async with running(relay_dsn):
                await sql(
                    relay_dsn,
                    "BEGIN; INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g;"
                    " UPDATE items SET v = 1 WHERE id = 1; UPDATE items SET v = 2 WHERE id = 1;"
                    " COMMIT",
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 7)
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 1, "seven changes within the wait go as one request"
    request = r.requests[0]
    expected = hmac.new(b"s3cr3t", request.body, hashlib.sha512).hexdigest()
    assert request.headers["X-Hook-Signature"] == expected
    assert request.headers["X-Relay-Event"] == "batch"
    assert request.headers["X-Relay-Batch-Size"] == "7"
    sent = changes(request)
    assert [c["id"] for c in sent] == sorted(c["id"] for c in sent)
    row1 = [(c["event"], c["data"]["v"]) for c in sent if c["pk"] == {"id": 1}]
    assert row1 == [("created", 0), ("updated", 1), ("updated", 2)], "a row's changes in order"
    batches = rconn.execute(
        "SELECT DISTINCT d.batch_id, a.batch_id FROM relay.deliveries d"
        " JOIN relay.attempts a USING (outbox_id, webhook_id)"
    ).fetchall()
    assert len(batches) == 1 and batches[0][0] == batches[0][1] is not None


def test_batch_size_caps_a_request_and_batch_wait_holds_a_partial_one(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> tuple[Receiver, float]:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=4, batch_wait_ms=600)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
                await until(lambda: len(r.requests) >= 2)
                waited = await until(lambda: len(r.requests) == 3)
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 10)
            return r, waited

    r, waited = asyncio.run(scenario())
    assert [len(changes(req)) for req in r.requests] == [4, 4, 2]
    assert 0.2 < waited < 2.0, f"the last two waited for the batch to fill ({waited:.2f} s)"
    ids = [c["id"] for req in r.requests for c in changes(req)]
    assert ids == sorted(ids)


def test_a_failed_batch_is_retried_whole_under_the_same_delivery_id(
    rconn: Conn, relay_dsn: str
) -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(status=503 if calls["n"] <= 2 else 200)

    async def scenario() -> Receiver:
        async with receiver(flaky) as r:
            setup(rconn, r.url, batch_size=50, batch_wait_ms=300)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 6)
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 3
    assert len({req.headers["X-Relay-Delivery"] for req in r.requests}) == 1
    assert len({req.body for req in r.requests}) == 1, "each retry carries the same changes"
    attempts = rconn.execute(
        "SELECT outbox_id, attempt, status_code, batch_id FROM relay.attempts"
        " ORDER BY outbox_id, attempt"
    ).fetchall()
    assert [(a[1], a[2]) for a in attempts if a[0] == attempts[0][0]] == [
        (1, 503),
        (2, 503),
        (3, 200),
    ]
    assert len(attempts) == 18 and len({a[3] for a in attempts}) == 1


def test_one_change_the_template_fails_on_fails_alone(rconn: Conn, relay_dsn: str) -> None:
    """A template that fails for one change of a batch: that change fails with the reason,
    the others are delivered."""
    template = (
        "[{% for c in changes %}{{ (100 // c.data.v) if c.data.v is not none else 0 }}"
        "{% if not loop.last %},{% endif %}{% endfor %}]"
    )

    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=300, body_template=template)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 5), (2, 0), (3, 20)")
                await until(
                    lambda: sorted(outbox_statuses(rconn)) == ["delivered", "delivered", "failed"]
                )
            return r

    r = asyncio.run(scenario())
    # The part of the batch before it goes at once, the rest in a later batch.
    assert [json.loads(req.body) for req in r.requests] == [[20], [5]]
    failed = one_row(
        rconn.execute(
            "SELECT o.new->>'id', d.last_error FROM relay.deliveries d"
            " JOIN relay.outbox o ON o.id = d.outbox_id WHERE d.status = 'failed'"
        )
    )
    assert failed[0] == "2"
    assert "body_template" in failed[1] and "division" in failed[1]


def test_a_row_with_a_change_waiting_for_a_retry_holds_its_later_changes(
    rconn: Conn, relay_dsn: str
) -> None:
    """Per-row order across batches: while a row's change waits for a retry in one batch, its
    later changes do not go in another; other rows' do."""
    failing = {"on": True}

    async def gate(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if failing["on"] and any(c["pk"] == {"id": 1} and c["event"] == "created" for c in body):
            return web.Response(status=500)
        return web.Response(text="ok")

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=100)
            settings = FAST.model_copy(update={"retry_base_seconds": 1.0, "retry_max_seconds": 1.0})
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) == 1)
                await sql(
                    relay_dsn,
                    "UPDATE items SET v = 1 WHERE id = 1",
                    "INSERT INTO items VALUES (2, 0)",
                )
                await until(lambda: len(r.requests) == 2)
                failing["on"] = False
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3)
            return r

    r = asyncio.run(scenario())
    sent = [[(c["pk"]["id"], c["event"]) for c in changes(req)] for req in r.requests]
    assert sent[0] == [(1, "created")]
    assert sent[1] == [(2, "created")], "row 1's update waits behind its failed insert"
    delivered_row1 = [pair for batch in sent[2:] for pair in batch if pair[0] == 1]
    assert delivered_row1 == [(1, "created"), (1, "updated")]


def test_a_batch_says_in_the_log_which_changes_it_carried(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> list[MutableMapping[str, Any]]:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=200)
            with capture_logs() as logs:
                async with running(relay_dsn):
                    await sql(
                        relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g"
                    )
                    await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3)
            return logs

    logs = asyncio.run(scenario())
    lines = [entry for entry in logs if entry["event"] == "batch"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["changes"], line["outcome"], line["webhook"]) == (3, "delivered", "hook")
    assert line["last_outbox_id"] - line["first_outbox_id"] == 2
    assert line["batch_id"] is not None


def test_preview_shows_a_batch_and_the_cli_sets_batching(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")
    added = relay(
        "webhook",
        "add",
        "b",
        "--url",
        "http://127.0.0.1:9/b",
        "--batch-size",
        "3",
        "--batch-wait-ms",
        "250",
        dsn=relay_dsn,
    )
    assert added.returncode == 0, added.stderr
    assert (
        relay(
            "rule", "add", "r", "--webhook", "b", "--table", "public.items", dsn=relay_dsn
        ).returncode
        == 0
    )
    shown = relay("webhook", "show", "b", dsn=relay_dsn).stdout
    assert "batch_size: 3" in shown and "batch_wait_ms: 250" in shown
    rconn.execute("INSERT INTO items VALUES (1, 10), (2, 20)")
    ids = [str(row[0]) for row in rconn.execute("SELECT id FROM relay.outbox ORDER BY id")]
    preview = relay(
        "preview", "--rule", "r", "--outbox-id", ids[1], "--outbox-id", ids[0], dsn=relay_dsn
    )
    assert preview.returncode == 0, preview.stderr
    assert "batch 2 change(s) of at most 3" in preview.stdout
    assert "X-Relay-Batch-Size: 2" in preview.stdout
    body = json.loads(preview.stdout[preview.stdout.index("\n[") :])
    assert [c["data"]["v"] for c in body] == [10, 20], "in outbox order"

    too_many = relay(
        "preview", "--rule", "r", *[f"--outbox-id={i}" for i in ids * 2], dsn=relay_dsn
    )
    assert too_many.returncode == 0, "repeated ids count once"
    edited = relay("webhook", "edit", "b", "--batch-size", "1", dsn=relay_dsn)
    assert edited.returncode == 0
    refused = relay(
        "preview", "--rule", "r", "--outbox-id", ids[0], "--outbox-id", ids[1], dsn=relay_dsn
    )
    assert refused.returncode == 2
    assert "at most 1 change(s) per request" in refused.stderr
    unknown = relay("preview", "--rule", "r", "--outbox-id", "999999", dsn=relay_dsn)
    assert unknown.returncode == 2
    assert "no change with id 999999 in relay.outbox (purged, or never made)" in unknown.stderr
    bad = relay("webhook", "edit", "b", "--batch-size", "0", dsn=relay_dsn)
    assert bad.returncode == 2 and "batch-size" in bad.stderr
    try:  # the database checks values written with plain SQL too
        rconn.execute("UPDATE relay.webhooks SET batch_wait_ms = -1 WHERE name = 'b'")
    except psycopg.errors.CheckViolation as exc:
        assert "batch_wait_ms must be from 0 to 60000" in str(exc)
    else:
        raise AssertionError("a negative batch_wait_ms was accepted")


def test_the_receiver_in_the_docs_verifies_and_unpacks_a_batch(
    rconn: Conn, relay_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/rules.md's receiver example, run as it is written, as the webhook's receiver."""
    text = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()
    batches = text[text.index("## Batches") :]
    code = batches[
        batches.index("```python\n") + 10 : batches.index("```\n", batches.index("```python"))
    ]
    example: dict[str, Any] = {}
    exec(code.replace('b"shared-secret"', 'b"s3cr3t"'), example)

    async def scenario() -> Receiver:
        async with receiver(example["hook"]) as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=200)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 7), (2, 8)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 2)
            return r

    r = asyncio.run(scenario())
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("created")]
    assert printed == [
        "created public.items {'id': 1} {'id': 1, 'v': 7}",
        "created public.items {'id': 2} {'id': 2, 'v': 8}",
    ]
    assert len(r.requests) == 1
    assert example["seen"] == {r.requests[0].headers["X-Relay-Delivery"]}

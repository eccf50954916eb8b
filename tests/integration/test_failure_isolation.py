"""One bad row, webhook or rule costs only itself (issue 11): each hostile input ends as a
failed delivery with a one-line reason, everything else keeps flowing, relay run keeps running,
and a relay started again on the same data does not trip over it either."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.types.json import Jsonb
from structlog.testing import capture_logs

from relay.db import Conn
from relay.delivery import plan, record
from relay.delivery.plan import Arrival, Plan
from relay.delivery.record import Result
from relay.delivery.send import Outcome, Sender
from relay.model import Change, Request, Webhook
from relay.render import request, sign
from relay.rules import ruleset
from relay.rules.conditions import Verdict
from relay.rules.ruleset import Rule, RuleSet
from relay.settings import Settings
from support.cli import relay
from support.db import one_row
from support.receivers import Receiver, receiver
from support.worker import FAST, running, setup, sql, until

BIG = "1" + "0" * 5000
SESSION_FAILED = "relay session failed, starting again"


def hook(
    rconn: psycopg.Connection,
    name: str,
    url: str,
    *,
    tables: tuple[str, ...] = ("public.items",),
    conditions: Any = None,
    action_data: Any = None,
    unchecked: bool = False,
    **webhook: Any,
) -> None:
    """A webhook and its rule. ``unchecked`` writes them without the database's checks, as a
    row saved before a check existed (or by a superuser with triggers off) would be."""
    columns = {"name": name, "payload_url": url, "secret": "s", **webhook}
    if unchecked:
        rconn.execute("SET session_replication_role = replica")
    try:
        rconn.execute(
            f"INSERT INTO relay.webhooks ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})",
            list(columns.values()),
        )
        rconn.execute(
            "INSERT INTO relay.event_rules (name, tables, conditions, action_data, webhook_id)"
            " SELECT %s, %s, %s, %s, id FROM relay.webhooks WHERE name = %s",
            (
                name,
                list(tables),
                None if conditions is None else Jsonb(conditions),
                Jsonb(action_data or {}),
                name,
            ),
        )
    finally:
        rconn.execute("RESET session_replication_role")
    if unchecked:  # the triggers that announce rule changes were off too
        rconn.execute("UPDATE relay.rules_version SET version = version + 1")


def pending(rconn: psycopg.Connection) -> int:
    """Changes and deliveries not finished yet (a change fails as soon as one of its
    deliveries does, while the others may still be on their way)."""
    count: int = one_row(
        rconn.execute(
            "SELECT (SELECT count(*) FROM relay.outbox WHERE status = 'pending')"
            " + (SELECT count(*) FROM relay.deliveries WHERE status = 'pending')"
        )
    )[0]
    return count


def deliveries(rconn: psycopg.Connection) -> dict[tuple[str, int], tuple[str, int, str | None]]:
    """(webhook, outbox id) -> (status, attempts, last_error), for every delivery."""
    rows = rconn.execute(
        "SELECT w.name, d.outbox_id, d.status::text, d.attempts, d.last_error"
        " FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id"
    ).fetchall()
    return {
        (name, outbox_id): (status, attempts, error)
        for name, outbox_id, status, attempts, error in rows
    }


@contextmanager
def no_session_failures() -> Iterator[None]:
    """The relay never had to start a session again because of an error of its own."""
    with capture_logs() as events:
        yield
    assert [e for e in events if e["event"] == SESSION_FAILED] == []


def assert_well_recorded(rconn: psycopg.Connection, max_attempts: int = 8) -> None:
    """What every test here expects of the bookkeeping: nothing pending or leased, no delivery
    past the attempt limit, every reason one line."""
    assert pending(rconn) == 0
    assert rconn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE status = 'pending' OR leased_by IS NOT NULL"
    ).fetchone() == (0,)
    assert (
        one_row(rconn.execute("SELECT coalesce(max(attempts), 0) FROM relay.deliveries"))[0]
        <= max_attempts
    )
    errors = rconn.execute(
        "SELECT error FROM relay.attempts WHERE error IS NOT NULL UNION ALL"
        " SELECT last_error FROM relay.deliveries WHERE last_error IS NOT NULL UNION ALL"
        " SELECT last_error FROM relay.outbox WHERE last_error IS NOT NULL"
    ).fetchall()
    for (error,) in errors:
        assert "\n" not in error and "\r" not in error and len(error) <= 500, error


def test_a_huge_number_or_deep_json_in_a_row_costs_only_that_change(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, n numeric, j jsonb)")
    rconn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('items'), relay.track('other')")

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, "matcher", r.url, conditions={"attr": "data.n", "op": "gte", "value": 0})
            hook(rconn, "templated", r.url, body_template='{"n": {{ data.n }}}')
            hook(rconn, "plain", r.url)
            hook(rconn, "int-template", r.url, body_template="{{ data.n | int }}")
            hook(rconn, "other", r.url, tables=("public.other",))
            with no_session_failures():
                async with running(relay_dsn):
                    await sql(
                        relay_dsn,
                        "INSERT INTO items VALUES (1, ('1' || repeat('0', 5000))::numeric, NULL)",
                        "INSERT INTO items VALUES (2, 1, ('[' || repeat('[', 1000)"
                        " || repeat(']', 1000) || ']')::jsonb)",
                        "INSERT INTO items VALUES (3, 2.50, '{}')",
                        "INSERT INTO other VALUES (1)",
                    )
                    await until(lambda: pending(rconn) == 0, timeout=30)
                # The same data again, in a relay started afresh: what failed is sent again.
                rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
                async with running(relay_dsn):
                    await sql(relay_dsn, "INSERT INTO other VALUES (2)")
                    await until(lambda: pending(rconn) == 0, timeout=30)
            return r

    r = asyncio.run(scenario())
    assert_well_recorded(rconn)
    found = deliveries(rconn)
    deep = "JSON nested too deeply to read"
    for name in ("matcher", "templated", "plain"):
        assert found[(name, 1)][0] == "delivered"  # 5,001 digits: compared and sent exactly
        assert found[(name, 3)][0] == "delivered"
    assert found[("plain", 2)][0] == "delivered"  # the default body passes the row through
    status, attempts, error = found[("matcher", 2)]
    assert (status, attempts) == ("failed", 1)
    assert error is not None
    assert error.startswith(f"rule 'matcher': the change cannot be read: {deep}")
    status, _, error = found[("templated", 2)]
    assert error is not None
    assert status == "failed" and error.startswith(f"the change cannot be read: {deep}")
    assert found[("int-template", 1)][::2] == (
        "failed",
        "body_template: a 5001-digit number is too large a number to make an integer of",
    )
    assert found[("int-template", 3)][0] == "delivered"
    assert [found[("other", i)][0] for i in (4, 5)] == ["delivered", "delivered"]
    # Each failure was recorded twice, once per run, and stayed one attempt per run.
    assert rconn.execute(
        "SELECT count(*) FROM relay.attempts a JOIN relay.webhooks w ON w.id = a.webhook_id"
        " WHERE a.outbox_id = 2 AND w.name IN ('matcher', 'templated')"
    ).fetchone() == (4,)
    templated = [q.body for q in r.requests if q.body.startswith(b'{"n": ')]
    assert f'{{"n": {BIG}}}'.encode() in templated
    assert sum(1 for q in r.requests if BIG.encode() in q.body) == 3


def test_a_request_that_cannot_be_made_fails_at_once_and_its_row_moves_on(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url, "good")
            long_host = "a" * 64 + ".invalid"
            hook(rconn, "crlf", r.url, unchecked=True, http_content_type="text/plain\r\nX-Evil: 1")
            hook(rconn, "long-label", f"http://{long_host}/hook", unchecked=True)
            with no_session_failures():
                async with running(relay_dsn):
                    await sql(
                        relay_dsn,
                        "INSERT INTO items VALUES (1, 0)",
                        "UPDATE items SET v = 1 WHERE id = 1",
                        "UPDATE items SET v = 2 WHERE id = 1",
                    )
                    await until(lambda: pending(rconn) == 0, timeout=30)
            return r

    r = asyncio.run(scenario())
    assert_well_recorded(rconn)
    assert not any("X-Evil" in q.headers for q in r.requests)
    found = deliveries(rconn)
    for change in (1, 2, 3):
        assert found[("good", change)][0] == "delivered"
        assert found[("crlf", change)] == (
            "failed",
            1,
            "http_content_type holds a line break or another control character",
        )
        status, attempts, error = found[("long-label", change)]
        assert (status, attempts) == ("failed", 1)
        assert error is not None
        assert error.startswith("payload_url: host 'aaaa") and "label empty or too long" in error


def test_a_delivery_whose_attempts_never_reported_back_fails_at_the_limit(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
            # A relay died while sending change 1 for the eighth time (RELAY_MAX_ATTEMPTS).
            rconn.execute(
                "INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, attempts,"
                " leased_until, leased_by)"
                " SELECT o.id, r.webhook_id, r.id, o.schema_name || '.' || o.table_name || ':'"
                " || o.pk::text, 8, now() - interval '1 second', 'dead-relay'"
                " FROM relay.outbox o, relay.event_rules r WHERE o.id = 1"
            )
            rconn.execute("UPDATE relay.outbox SET fanned_out_at = now() WHERE id = 1")
            rconn.execute("UPDATE items SET v = 1 WHERE id = 1")
            with no_session_failures():
                async with running(relay_dsn):
                    await until(lambda: pending(rconn) == 0, timeout=30)
            return r

    r = asyncio.run(scenario())
    assert_well_recorded(rconn)
    sent = sorted(
        (b["data"]["id"], b["data"]["v"]) for b in map(json.loads, (q.body for q in r.requests))
    )
    assert sent == [(1, 1), (2, 0)]  # not the change that had used up its attempts
    status, attempts, error = deliveries(rconn)[("hook", 1)]
    assert (status, attempts) == ("failed", 8)
    assert error is not None
    assert error.startswith("failed after 8 attempts (RELAY_MAX_ATTEMPTS)")


def test_rules_the_database_let_through_cost_only_themselves(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, tags jsonb)")
    rconn.execute("SELECT relay.track('items')")
    too_deep: Any = {"attr": "data.name", "value": "x"}
    for _ in range(20):
        too_deep = {"and": [too_deep]}

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(
                rconn,
                "bad-regex",
                r.url,
                conditions={"attr": "data.name", "op": "regex", "value": "("},
            )
            hook(
                rconn,
                "lookahead",
                r.url,
                conditions={"attr": "data.name", "op": "regex", "value": "(?=a)a"},
            )
            hook(rconn, "too-deep", r.url, conditions=too_deep, unchecked=True)
            hook(
                rconn,
                "odd-path",
                r.url,
                conditions={"attr": "data.tags.²", "op": "contains", "value": 1},
            )
            hook(rconn, "minus-minus", r.url, conditions={"attr": "data.tags.--1", "value": 1})
            hook(
                rconn,
                "good",
                r.url,
                conditions={"attr": "data.name", "op": "regex", "value": "(a+)+$"},
            )
            with no_session_failures():
                async with running(relay_dsn):
                    await sql(
                        relay_dsn,
                        "INSERT INTO items VALUES (1, 'aaaa', '[1, 2]'),"
                        f" (2, '{'a' * 30}b', '[{{\"²\": 1}}]')",
                    )
                    await until(lambda: pending(rconn) == 0, timeout=30)
            return r

    r = asyncio.run(scenario())
    assert_well_recorded(rconn)
    found = deliveries(rconn)
    assert found.pop(("good", 1))[0] == "delivered"
    assert found.pop(("odd-path", 2))[0] == "delivered"  # "²" is a key of each item, not an index
    reasons = {
        "bad-regex": "rule 'bad-regex' cannot be used: conditions: invalid regular expression"
        " (RE2 syntax): missing ): (",
        "lookahead": "rule 'lookahead' cannot be used: conditions: invalid regular expression"
        " (RE2 syntax): invalid perl operator: (?=",
        "too-deep": "rule 'too-deep' cannot be used: conditions: nested more than 32 levels deep",
    }
    assert found == {
        (name, change): ("failed", 1, why) for name, why in reasons.items() for change in (1, 2)
    }
    assert len(r.requests) == 2
    check = relay("rules", "check", dsn=relay_dsn)
    assert check.returncode == 1
    for name, why in reasons.items():
        assert f"rule {name!r}: {why.split('cannot be used: ')[1]}" in check.stdout


def test_numbers_in_rules_compare_by_value_with_any_column_type(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute(
        "CREATE TABLE items (id int PRIMARY KEY, total numeric(10,2), qty int, ratio float8)"
    )
    rconn.execute("SELECT relay.track('items')")
    conditions = {
        "total-over-100": {"attr": "data.total", "op": "gt", "value": 100},
        "qty-over-7.5": {"attr": "data.qty", "op": "gt", "value": 7.5},
        "total-is-120": {"attr": "data.total", "value": 1.2e2},
        "ratio-in": {"attr": "data.ratio", "op": "in", "value": [5e-1, 1]},
        "not-true": {"attr": "data.qty", "value": True, "negate": True},
    }

    async def scenario() -> Receiver:
        async with receiver() as r:
            for name, condition in conditions.items():
                hook(rconn, name, r.url, conditions=condition)
            async with running(relay_dsn):
                await sql(
                    relay_dsn, "INSERT INTO items VALUES (1, 120.00, 8, 0.5), (2, 99.99, 1, 2)"
                )
                await until(lambda: pending(rconn) == 0, timeout=30)
            return r

    asyncio.run(scenario())
    assert sorted(deliveries(rconn)) == sorted(
        [(name, 1) for name in conditions] + [("not-true", 2)]  # 1 is not true
    )


VICTIM_SECRET = "victim-secret-0123456789"
STAGES = ("match", "render", "sign", "send", "record")


def inject(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Make ``stage`` raise for the change that sets v to 666, on webhook "victim" only. The
    message has a second line and the victim's secret: neither may reach a record."""
    # The recorder holds no secret to mask: its fault names none.
    secret = "" if stage == "record" else f" {VICTIM_SECRET}"
    boom = RuntimeError(f"injected at {stage}{secret}\nsecond line")

    def hit(change: Change) -> bool:
        return bool((change.new or {}).get("v") == 666)

    def hit_body(body: bytes) -> bool:
        return bool(json.loads(body)["data"]["v"] == 666)

    if stage == "match":
        verdict = ruleset.verdict

        def failing_verdict(
            rule: Rule, change: Change, base: Callable[[], dict[str, Any]] | None = None
        ) -> Verdict:
            if rule.name == "victim" and hit(change):
                raise boom
            return verdict(rule, change, base)

        monkeypatch.setattr(ruleset, "verdict", failing_verdict)
    elif stage == "render":
        default_body = request.default_body

        def failing_body(
            change: Change, action_data: Mapping[str, Any] | None = None, body_format: str = "relay"
        ) -> bytes:
            if (action_data or {}).get("victim") and hit(change):
                raise boom
            return default_body(change, action_data, body_format)

        monkeypatch.setattr(request, "default_body", failing_body)
    elif stage == "sign":
        signature_headers = sign.signature_headers

        def failing_signature(
            scheme: str, secret: str | None, body: bytes, message_id: str, timestamp: int
        ) -> dict[str, str]:
            if secret == VICTIM_SECRET and hit_body(body):
                raise boom
            return signature_headers(scheme, secret, body, message_id, timestamp)

        monkeypatch.setattr(request, "signature_headers", failing_signature)
    elif stage == "send":
        send = Sender.send

        async def failing_send(
            self: Sender, request: Request, webhook: Webhook, within: float | None = None
        ) -> Outcome:
            if webhook.name == "victim" and hit_body(request.body):
                raise boom
            return await send(self, request, webhook, within)

        monkeypatch.setattr(Sender, "send", failing_send)
    else:
        parameters = record.parameters

        def failing_parameters(results: Sequence[Result], relay_id: str) -> dict[str, Any]:
            for r in results:
                first_try = "not recorded" not in (r.outcome.error or "")
                if (r.outbox_id, r.webhook_id) == (1, 1) and r.outcome.ok and first_try:
                    raise boom  # webhook 1 is the victim
            return parameters(results, relay_id)

        monkeypatch.setattr(record, "parameters", failing_parameters)


@pytest.mark.parametrize("stage", STAGES)
def test_an_exception_at_any_stage_costs_only_its_change(
    rconn: Conn, relay_dsn: str, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    inject(monkeypatch, stage)
    settings = Settings(**{**FAST.model_dump(), "max_attempts": 3})
    matching = {"attr": "data.v", "op": "gte", "value": 0}

    async def scenario() -> Receiver:
        async with receiver() as victim, receiver() as bystander:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
            rconn.execute("SELECT relay.track('items')")
            hook(
                rconn,
                "victim",
                victim.url,
                conditions=matching,
                action_data={"victim": True},
                secret=VICTIM_SECRET,
            )
            hook(rconn, "bystander", bystander.url, conditions=matching)
            with no_session_failures():
                async with running(relay_dsn, settings):
                    await sql(
                        relay_dsn,
                        "INSERT INTO items VALUES (1, 666), (2, 1)",
                        "UPDATE items SET v = 667 WHERE id = 1",
                    )
                    await until(lambda: pending(rconn) == 0, timeout=30)
            return victim

    victim = asyncio.run(scenario())
    assert_well_recorded(rconn, max_attempts=3)
    found = deliveries(rconn)
    assert [found[("bystander", change)][0] for change in (1, 2, 3)] == ["delivered"] * 3
    assert found[("victim", 2)][0] == found[("victim", 3)][0] == "delivered"
    got = sorted(json.loads(q.body)["data"]["v"] for q in victim.requests)
    status, attempts, error = found[("victim", 1)]
    injected = "RuntimeError: injected at {} ******"
    expected = {
        "match": ("failed", 1, "matching rule 'victim': " + injected.format("match")),
        "render": ("failed", 1, "rendering: " + injected.format("render")),
        "sign": ("failed", 1, "signing: " + injected.format("sign")),
        "send": ("failed", 3, "sending: " + injected.format("send")),
        "record": ("delivered", 1, "details not recorded (RuntimeError: injected at record)"),
    }[stage]
    assert (status, attempts, error) == expected
    assert got == ([1, 666, 667] if stage == "record" else [1, 667])
    assert VICTIM_SECRET not in json.dumps(
        rconn.execute("SELECT array_agg(error) FROM relay.attempts").fetchone()
    )


def test_an_unforeseen_error_in_a_session_starts_it_again(
    rconn: Conn, relay_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault outside any one change (here the fan-out's planning, once) is logged and the
    session started again: relay run goes on, and nothing is lost."""
    make_plan = plan.plan
    faults = ["once"]

    def failing_plan(changes: Iterable[Arrival], ruleset: RuleSet) -> Plan:
        if faults:
            faults.pop()
            raise RuntimeError("injected into the fan-out")
        return make_plan(changes, ruleset)

    monkeypatch.setattr(plan, "plan", failing_plan)

    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            with capture_logs() as events:
                async with running(relay_dsn):
                    await sql(
                        relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g"
                    )
                    await until(lambda: pending(rconn) == 0, timeout=30)
            failures = [e for e in events if e["event"] == SESSION_FAILED]
            assert [e["error"] for e in failures] == ["RuntimeError: injected into the fan-out"]
            return r

    assert len(asyncio.run(scenario()).requests) == 5
    assert_well_recorded(rconn)


def test_a_change_whose_webhook_is_deleted_while_it_waits_ends_skipped(
    rconn: Conn, relay_dsn: str
) -> None:
    """Deleting a webhook deletes its deliveries; the changes that waited for it end instead of
    staying pending for ever (found by bench/fuzz.py)."""

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def scenario() -> list[tuple[str, str | None]]:
        async with receiver(down) as r:
            setup(rconn, r.url)
            async with running(relay_dsn, FAST):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) >= 1)
                rconn.execute("DELETE FROM relay.event_rules")
                rconn.execute("DELETE FROM relay.webhooks")
                await until(
                    lambda: (
                        rconn.execute("SELECT status FROM relay.outbox").fetchone() != ("pending",)
                    ),
                    timeout=15,
                )
        return rconn.execute("SELECT status::text, last_error FROM relay.outbox").fetchall()

    assert asyncio.run(scenario()) == [("skipped", "the webhooks it was for were deleted")]

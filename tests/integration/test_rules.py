"""Rules from the database, matched against changes; and the commands that manage them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay.db import Conn
from relay.model import loads
from relay.render.request import Renderer
from relay.rules import ruleset
from relay.store import Store
from support.cli import relay
from support.db import one_row, outbox
from support.hooks import add_rule, add_webhook
from support.render import STUCK


def test_rules_match_by_table_event_and_conditions(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    rconn.execute("SELECT relay.track('orders')")
    hook = add_webhook(rconn)
    off = add_webhook(rconn, name="off", enabled=False)
    add_rule(
        rconn,
        hook,
        name="paid",
        events=["update"],
        conditions={"attr": "data.status", "value": "paid"},
    )
    add_rule(rconn, hook, name="any-insert", events=["insert"])
    add_rule(rconn, hook, name="disabled", enabled=False)
    add_rule(rconn, off, name="to-disabled-hook")
    add_rule(rconn, hook, name="other-table", tables=["public.customers"])
    rconn.execute("INSERT INTO orders VALUES (1, 'new')")
    rconn.execute("UPDATE orders SET status = 'paid'")
    rconn.execute("UPDATE orders SET status = 'shipped'")
    loaded = ruleset.load(rconn)
    names = {r.name for r in loaded.rules}
    assert "disabled" not in names and "to-disabled-hook" in names
    matched = []
    for row in outbox(rconn):
        change = Store(rconn).change(row["id"], loaded.models)
        assert change is not None
        matched.append([r.name for r in loaded.matching(change)])
    assert matched == [["any-insert"], ["paid"], []]
    third = Store(rconn).change(outbox(rconn)[2]["id"], loaded.models)
    assert third is not None
    why = loaded.evaluate(third)
    assert [(m.rule.name, m.verdict.matched) for m in why] == [("paid", False)]
    assert "found 'shipped'" in why[0].verdict.reason


def test_a_thousand_rules_are_indexed_by_table(rconn: Conn) -> None:
    hook = add_webhook(rconn)
    rconn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id) SELECT 'r' || g,"
        " ARRAY['public.t' || (g %% 100)], %s FROM generate_series(1, 1000) g",
        (hook,),
    )
    rconn.execute("CREATE TABLE t7 (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t7')")
    rconn.execute("INSERT INTO t7 VALUES (1)")
    loaded = ruleset.load(rconn)
    change = Store(rconn).change(outbox(rconn)[0]["id"], loaded.models)
    assert change is not None
    assert len(loaded.candidates(change)) == 10
    assert all("public.t7" in r.tables for r in loaded.matching(change))


def test_rules_check_reports_each_problem_with_rule_field_and_line(rconn: Conn) -> None:
    broken = add_webhook(
        rconn,
        name="broken",
        body_template='{"a": {{ data.id }\n}',
        additional_headers="X-Ok: 1\nX-Bad: {% if %}",
    )
    good = add_webhook(rconn, name="good", payload_url="https://example.test/{{ model }}")
    add_rule(rconn, broken, name="uses-broken")
    add_rule(
        rconn,
        good,
        name="bad-regex",
        conditions={"attr": "data.name", "op": "regex", "value": "(?P<x"},
    )
    problems = [
        str(p) for p in ruleset.check(ruleset.load(rconn, everything=True).rules, Renderer())
    ]
    assert any("uses-broken" in p and "body_template: line 1" in p for p in problems)
    assert any("additional_headers line 2: line 1" in p for p in problems)
    assert any("rule 'bad-regex'" in p and "invalid regular expression" in p for p in problems)
    assert len(problems) == 3


def test_rules_check_looks_at_webhooks_no_rule_uses_and_add_refuses_a_broken_template(
    rconn: Conn, relay_dsn: str
) -> None:
    add_webhook(rconn, name="waiting", body_template="{% if %}")
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1
    assert "webhook 'waiting' (no rule uses it): body_template: line 1" in checked.stdout
    assert "1 problem(s) in 0 rule(s), 1 webhook(s)" in checked.stderr
    refused = relay(
        "webhook",
        "add",
        "typo",
        "--url",
        "https://x.test/",
        "--header",
        "X-A: {{ a ",
        dsn=relay_dsn,
    )
    assert refused.returncode == 2 and "additional_headers line 1" in refused.stderr
    assert "nothing was stored" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert rconn.execute("SELECT count(*) FROM relay.webhooks WHERE name = 'typo'").fetchone() == (
        0,
    )


def test_a_header_line_that_is_not_name_colon_value_is_refused_and_reported(
    rconn: Conn, relay_dsn: str
) -> None:
    add_webhook(rconn, name="stored", additional_headers="X-Ok: 1\nnocolon\nX-T: {{ event }}")
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1
    assert "additional_headers line 2 is not 'Name: Value': it has no ':'" in checked.stdout
    assert "line 1" not in checked.stdout and "line 3" not in checked.stdout
    for command in (("add", "new", "--url", "https://x.test/"), ("edit", "stored")):
        refused = relay("webhook", *command, "--header", "Bad Name: x", dsn=relay_dsn)
        assert refused.returncode == 2 and "is not 'Name: Value'" in refused.stderr


def test_webhooks_and_rules_are_disabled_and_enabled_by_name(rconn: Conn, relay_dsn: str) -> None:
    hook = add_webhook(rconn, name="orders")
    add_rule(rconn, hook, name="all orders")

    def flags() -> tuple[bool, bool]:
        row = one_row(
            rconn.execute(
                "SELECT w.enabled, r.enabled FROM relay.webhooks w JOIN relay.event_rules r"
                " ON r.webhook_id = w.id"
            )
        )
        return row[0], row[1]

    for command, expected in [
        (("webhook", "disable", "orders"), (False, True)),
        (("rule", "disable", "all orders"), (False, False)),
        (("webhook", "enable", "orders"), (True, False)),
        (("rule", "enable", "all orders"), (True, True)),
    ]:
        done = relay(*command, dsn=relay_dsn)
        assert done.returncode == 0, done.stderr
        assert flags() == expected, command
    missing = relay("rule", "disable", "nope", dsn=relay_dsn)
    assert missing.returncode == 2 and "no rule named 'nope'" in missing.stderr


def test_webhooks_and_rules_are_edited_field_by_field(rconn: Conn, relay_dsn: str) -> None:
    hook = add_webhook(rconn, name="orders", payload_url="https://a.test/", timeout_seconds=5)
    add_webhook(rconn, name="audit")
    add_rule(rconn, hook, name="paid", tables=["public.orders"])
    edited = relay(
        "webhook",
        "edit",
        "orders",
        "--url",
        "https://b.test/{{ model }}",
        "--header",
        "X-A: 1",
        dsn=relay_dsn,
    )
    assert edited.returncode == 0, edited.stderr
    row = rconn.execute(
        "SELECT payload_url, additional_headers, timeout_seconds FROM relay.webhooks"
        " WHERE name = 'orders'"
    ).fetchone()
    assert row == ("https://b.test/{{ model }}", "X-A: 1", 5)  # the timeout stayed
    broken = relay("webhook", "edit", "orders", "--body-template", "{{ x ", dsn=relay_dsn)
    assert broken.returncode == 2 and "nothing was stored" in broken.stderr
    assert rconn.execute(
        "SELECT body_template FROM relay.webhooks WHERE name = 'orders'"
    ).fetchone() == ("",)
    moved = relay(
        "rule",
        "edit",
        "paid",
        "--webhook",
        "audit",
        "--event",
        "update",
        "--conditions",
        '{"attr": "data.status", "value": "paid"}',
        dsn=relay_dsn,
    )
    assert moved.returncode == 0, moved.stderr
    rule = rconn.execute(
        "SELECT w.name, r.events, r.conditions, r.tables FROM relay.event_rules r"
        " JOIN relay.webhooks w ON w.id = r.webhook_id"
    ).fetchone()
    assert rule == (
        "audit",
        ["update"],
        {"attr": "data.status", "value": "paid"},
        ["public.orders"],
    )
    for command in (("webhook", "edit", "orders"), ("rule", "edit", "paid")):
        nothing = relay(*command, dsn=relay_dsn)
        assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


def test_a_webhooks_retry_policy_is_set_shown_and_forgotten(rconn: Conn, relay_dsn: str) -> None:
    def policy() -> tuple[Any, ...]:
        return one_row(
            rconn.execute(
                "SELECT max_attempts, retry_base_seconds, retry_max_seconds FROM relay.webhooks"
            )
        )

    def status_retries() -> str:
        shown = relay("status", "--json", dsn=relay_dsn)
        assert shown.returncode == 0, shown.stderr
        (hook,) = json.loads(shown.stdout)["webhooks"]
        text = relay("status", dsn=relay_dsn).stdout
        return f"{hook['max_attempts']} {hook['retry_base_seconds']} | {text}"

    added = relay(
        "webhook",
        *("add", "slow", "--url", "http://127.0.0.1:9/"),
        *("--max-attempts", "20", "--retry-base-seconds", "0.5"),
        dsn=relay_dsn,
    )
    assert added.returncode == 0, added.stderr
    assert policy() == (20, Decimal("0.5"), None)
    shown = relay("webhook", "show", "slow", dsn=relay_dsn).stdout
    assert "max_attempts: 20\n" in shown
    assert "retry_base_seconds: 0.5\n" in shown
    assert "retry_max_seconds: relay's RELAY_RETRY_MAX_SECONDS\n" in shown
    assert "20 0.5 |" in status_retries()
    assert "20 attempts, first after 0.5 s, at most relay's" in status_retries()

    relay("webhook", "edit", "slow", "--retry-max-seconds", "86400", dsn=relay_dsn)
    assert policy() == (20, Decimal("0.5"), Decimal(86400))
    for bad, code, says in [  # the command line or the database's checks refuse the value
        (
            ["--max-attempts", "0"],
            2,
            "'--max-attempts': Input should be greater than or equal to 1",
        ),
        (["--max-attempts", "99999999999"], 2, "Invalid value for '--max-attempts'"),
        (["--retry-base-seconds", "-1"], 2, "'--retry-base-seconds': Input should be greater"),
        (["--retry-base-seconds", "1e-400"], 2, "'--retry-base-seconds': Input should be great"),
        (["--retry-max-seconds", "0.1"], 2, "retry_max_seconds (0.1) is below retry_base"),
        (["--retry-default", "--max-attempts", "3"], 2, "give it alone"),
        (["--max-attempts", "many"], 2, "Invalid value for '--max-attempts'"),
    ]:
        refused = relay("webhook", "edit", "slow", *bad, dsn=relay_dsn)
        assert refused.returncode == code, refused
        assert says in refused.stderr and refused.stderr.count("\n") == 1
    assert policy() == (20, Decimal("0.5"), Decimal(86400))
    for column, value, says in [  # plain SQL meets the same checks
        ("max_attempts", "0", "max_attempts must be from 1 to 1000"),
        ("max_attempts", "1001", "max_attempts must be from 1 to 1000"),
        ("retry_base_seconds", "'NaN'", "retry_base_seconds must be from 0.001 to 86400"),
        ("retry_max_seconds", "'Infinity'", "retry_max_seconds must be from 0.001 to 2592000"),
    ]:
        with pytest.raises(psycopg.errors.CheckViolation, match=says):
            rconn.execute(f"UPDATE relay.webhooks SET {column} = {value}")
    assert policy() == (20, Decimal("0.5"), Decimal(86400))

    forgot = relay("webhook", "edit", "slow", "--retry-default", dsn=relay_dsn)
    assert forgot.returncode == 0, forgot.stderr
    assert policy() == (None, None, None)
    assert "relay's RELAY_MAX_ATTEMPTS" in relay("webhook", "show", "slow", dsn=relay_dsn).stdout
    assert "None None | " in status_retries()


def test_webhook_and_rule_commands(relay_dsn: str) -> None:
    secret = "do-not-print-me"
    import os

    os.environ["TEST_HOOK_SECRET"] = secret
    try:
        added = relay(
            "webhook",
            "add",
            "orders",
            "--url",
            "http://127.0.0.1:9/{{ model }}",
            "--header",
            "X-Id: {{ data.id }}",
            "--secret-env",
            "TEST_HOOK_SECRET",
            dsn=relay_dsn,
        )
    finally:
        del os.environ["TEST_HOOK_SECRET"]
    assert added.returncode == 0, added.stderr
    assert (
        relay(
            "rule",
            "add",
            "paid",
            "--webhook",
            "orders",
            "--table",
            "public.orders",
            "--event",
            "update",
            "--conditions",
            '{"attr": "data.status", "value": "paid"}',
            dsn=relay_dsn,
        ).returncode
        == 0
    )
    outputs = [
        relay(*args, dsn=relay_dsn)
        for args in [
            ("webhook", "list"),
            ("webhook", "show", "orders"),
            ("rule", "list"),
            ("rule", "show", "paid"),
            ("rules", "check"),
        ]
    ]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    text = "".join(o.stdout + o.stderr for o in outputs)
    assert secret not in text and "******" in text and "no problems" in text
    assert "data.status" in outputs[3].stdout

    refused = relay("rule", "add", "bad", "--webhook", "orders", "--table", "orders", dsn=relay_dsn)
    assert refused.returncode == 2
    assert (
        'error: event rule "bad": "orders" is not a schema-qualified table name' in refused.stderr
    )
    in_use = relay("webhook", "remove", "orders", dsn=relay_dsn)
    assert in_use.returncode == 2 and "used by rule(s) paid" in in_use.stderr
    assert relay("rule", "remove", "paid", dsn=relay_dsn).returncode == 0
    assert relay("webhook", "remove", "orders", dsn=relay_dsn).returncode == 0


def test_preview_prints_the_exact_request_and_why_not(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric(8,2))")
    rconn.execute("SELECT relay.track('orders')")
    hook = add_webhook(
        rconn,
        secret="s3cr3t",
        payload_url="https://example.test/o/{{ data.id }}",
        additional_headers="Authorization: Bearer s3cr3t",
    )
    add_rule(
        rconn,
        hook,
        name="paid",
        events=["update"],
        conditions={"attr": "data.status", "value": "paid"},
    )
    rconn.execute("INSERT INTO orders VALUES (7, 'new', 10.50)")
    rconn.execute("UPDATE orders SET status = 'paid'")
    change_id = outbox(rconn)[-1]["id"]
    shown = relay("preview", "--rule", "paid", "--outbox-id", str(change_id), dsn=relay_dsn)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "conditions matched" in shown.stdout
    assert "POST https://example.test/o/7" in lines
    assert "Authorization: Bearer ******" in lines and "s3cr3t" not in shown.stdout
    body = lines[-1].encode()
    assert json.loads(body)["data"] == {"id": 7, "status": "paid", "total": 10.5}
    assert loads(body.decode())["data"]["total"] == Decimal("10.50")  # the digits the row holds
    signature = next(
        line.split(": ", 1)[1] for line in lines if line.startswith("X-Hook-Signature:")
    )
    assert signature == hmac.new(b"s3cr3t", body, hashlib.sha512).hexdigest()

    made_up = relay(
        "preview",
        "--rule",
        "paid",
        "--table",
        "public.orders",
        "--old",
        '{"id": 1, "status": "new"}',
        "--new",
        '{"id": 1, "status": "held"}',
        dsn=relay_dsn,
    )
    assert made_up.returncode == 1, made_up.stderr
    assert made_up.stdout == (
        "nothing would be sent: conditions not matched (data.status eq 'paid' is false "
        "(found 'held'))\n"
    )


def test_preview_of_a_rule_that_would_send_nothing_says_why_in_one_line(
    rconn: Conn, relay_dsn: str
) -> None:
    """No request is shown for a change the rule would not send: one line says why, exit 1
    (a request printed under a note was read as what would go)."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    rconn.execute("SELECT relay.track('orders')")
    hook = add_webhook(rconn, name="orders")
    off = add_webhook(rconn, name="off", enabled=False)
    add_rule(
        rconn,
        hook,
        name="paid",
        events=["update"],
        tables=["public.orders"],
        conditions={"attr": "data.status", "value": "paid"},
    )
    add_rule(rconn, hook, name="at rest", enabled=False)
    add_rule(rconn, off, name="to-off")
    add_rule(rconn, hook, name="customers", tables=["public.customers"])
    rconn.execute("INSERT INTO orders VALUES (1, 'new')")
    rconn.execute("UPDATE orders SET status = 'held'")
    rconn.execute("UPDATE orders SET status = 'paid'")
    inserted, held, paid = (str(row["id"]) for row in outbox(rconn))

    def preview(rule: str, *ids: str) -> tuple[int, str]:
        shown = relay("preview", "--rule", rule, *(f"--outbox-id={i}" for i in ids), dsn=relay_dsn)
        assert shown.stderr == ""
        return shown.returncode, shown.stdout

    assert preview("paid", inserted) == (
        1,
        "nothing would be sent: rule 'paid' takes update, not insert\n",
    )
    assert preview("paid", held) == (
        1,
        "nothing would be sent: conditions not matched (data.status eq 'paid' is false "
        "(found 'held'))\n",
    )
    assert preview("customers", paid) == (
        1,
        "nothing would be sent: rule 'customers' is for public.customers, not public.orders\n",
    )
    assert preview("to-off", paid) == (
        1,
        "nothing would be sent: webhook 'off' is disabled (relay webhook enable off sends to it "
        "again)\n",
    )
    assert preview("at rest", paid) == (
        1,
        "nothing would be sent: rule 'at rest' is disabled (relay rule enable 'at rest' sends "
        "with it again)\n",
    )
    code, sent = preview("paid", paid)
    assert code == 0 and "conditions matched" in sent and "POST " in sent

    # A batch holds only the changes the rule would send; the others are named, not shown.
    batched = add_webhook(rconn, name="batched", batch_size=3)
    add_rule(
        rconn,
        batched,
        name="paid-batch",
        events=["update"],
        conditions={"attr": "data.status", "value": "paid"},
    )
    code, sent = preview("paid-batch", held, paid)
    assert code == 0 and "batch 1 change(s) of at most 3" in sent
    assert f"note: change {held}: conditions not matched (" in sent
    body = json.loads(sent[sent.index("\n[") :])
    assert [change["data"]["status"] for change in body] == ["paid"]


@pytest.mark.timing
def test_preview_and_rules_check_apply_the_limits_relay_run_does(
    rconn: Conn, relay_dsn: str
) -> None:
    stuck = add_webhook(rconn, name="stuck", body_template=STUCK)
    add_rule(rconn, stuck, name="stuck")
    deep = add_webhook(
        rconn, name="deep", body_template="{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    )
    add_rule(rconn, deep, name="deep")

    started = time.monotonic()
    shown = relay(
        "preview",
        "--rule",
        "stuck",
        "--table",
        "public.orders",
        "--new",
        '{"id": 1}',
        dsn=relay_dsn,
    )
    took = time.monotonic() - started
    assert shown.returncode == 1
    assert "would fail: stopped after 1 s (the limit per request)" in shown.stderr
    assert took < 15  # the old preview ran the sum to its end: minutes

    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1, checked.stderr
    assert "webhook 'deep' (rule 'deep'): body_template: RecursionError" in checked.stdout
    assert "Traceback" not in checked.stderr


def test_preview_and_rules_check_read_the_env_file_relay_run_reads(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    hook = add_webhook(rconn, name="crm", additional_headers='X-Token: {{ "CRM_TOKEN" | env }}')
    add_rule(rconn, hook, name="crm")
    env_file = tmp_path / "relay.env"
    env_file.write_text(f"RELAY_DSN={relay_dsn}\nRELAY_TEMPLATE_ENV_ALLOW=CRM_*\n")
    made_up = ["--table", "public.orders", "--new", '{"id": 1}']
    env = {"CRM_TOKEN": "token-from-the-environment"}

    without = relay("preview", "--rule", "crm", *made_up, dsn=relay_dsn, env=env)
    assert without.returncode == 1 and "CRM_TOKEN" in without.stderr  # not allowed
    shown = relay("preview", "--rule", "crm", *made_up, "--env-file", str(env_file), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "X-Token: " in shown.stdout  # read (the value itself is masked in output)
    checked = relay("rules", "check", "--env-file", str(env_file), env=env)
    assert checked.returncode == 0 and "no problems" in checked.stdout, checked

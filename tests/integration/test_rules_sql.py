"""relay.webhooks and relay.event_rules: the database refuses bad rows in plain words."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from relay.db import Conn
from relay.rules.conditions import InvalidConditions, validate
from support.db import one_row
from support.hooks import add_rule, add_webhook
from support.strategies import condition_sets, deep_documents, json_values


def test_a_good_webhook_and_rule_get_netbox_defaults(rconn: Conn) -> None:
    hook = add_webhook(rconn)
    add_rule(rconn, hook, conditions={"attr": "data.status", "value": "paid"})
    row = rconn.execute(
        "SELECT http_method, http_content_type, signature, ssl_verification, enabled,"
        " timeout_seconds FROM relay.webhooks"
    ).fetchone()
    assert row == ("POST", "application/json", "netbox", True, True, 10)
    rule = rconn.execute("SELECT events, enabled, action_data FROM relay.event_rules").fetchone()
    assert rule == (["delete", "insert", "truncate", "update"], True, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"http_method": "FETCH"}, 'unknown http_method "FETCH"'),
        ({"payload_url": "ftp://example.test/x"}, "is not an http:// or https:// URL with a host"),
        ({"payload_url": "https:///nohost"}, "with a host"),
        ({"payload_url": "example.test/hook"}, "with a host"),
        ({"signature": "md5"}, 'unknown signature "md5"'),
        ({"signature": "standard", "secret": "plain"}, '"whsec_" followed by base64'),
        (
            {"ssl_verification": False, "ca_file_path": "/etc/ssl/ca.pem"},
            "ca_file_path is set but ssl_verification is off",
        ),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"http_content_type": "text/plain\r\nX-Evil: 1"}, "http_content_type must be one line"),
        ({"payload_url": f"https://{'a' * 64}.example/"}, "one longer than 63 characters"),
        ({"payload_url": "https://a..example/"}, "an empty label"),
        ({"name": " "}, "name must not be empty"),
        ({"body_format": ""}, 'unknown body_format "" \\(use relay or netbox4\\)'),
        ({"body_format": "NETBOX4"}, 'unknown body_format "NETBOX4"'),
        ({"body_format": " netbox4"}, 'unknown body_format " netbox4"'),
        ({"body_format": "relay; DROP TABLE relay.outbox"}, 'unknown body_format "relay; DROP'),
    ],
)
def test_bad_webhooks_are_refused(rconn: Conn, fields: dict[str, object], message: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=message):
        add_webhook(rconn, **fields)


def test_a_webhooks_body_format_is_relay_unless_set_to_netbox4(rconn: Conn) -> None:
    relay = add_webhook(rconn)
    netbox4 = add_webhook(rconn, name="nb4", body_format="netbox4")
    formats = rconn.execute("SELECT id, body_format FROM relay.webhooks ORDER BY id").fetchall()
    assert formats == [(relay, "relay"), (netbox4, "netbox4")]
    with pytest.raises(psycopg.errors.NotNullViolation, match="body_format"):
        rconn.execute("UPDATE relay.webhooks SET body_format = NULL WHERE id = %s", (relay,))
    with pytest.raises(psycopg.errors.CheckViolation, match='unknown body_format "Relay"'):
        rconn.execute("UPDATE relay.webhooks SET body_format = 'Relay' WHERE id = %s", (relay,))
    rconn.execute("UPDATE relay.webhooks SET body_format = 'relay' WHERE id = %s", (netbox4,))


def test_templated_urls_and_lowercase_methods_are_accepted(rconn: Conn) -> None:
    add_webhook(
        rconn,
        name="a",
        payload_url="{{ action_data.base }}/orders/{{ data.id }}",
        http_method="patch",
    )
    add_webhook(rconn, name="b", payload_url="http://127.0.0.1:9000/x?y=1")
    add_webhook(
        rconn,
        name="c",
        payload_url="https://[::1]:8443/",
        signature="standard",
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_dGVzdA==",
    )
    methods = [r[0] for r in rconn.execute("SELECT http_method FROM relay.webhooks ORDER BY name")]
    assert methods == ["PATCH", "POST", "POST"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"events": []}, "at least one of insert"),
        ({"events": ["created"]}, 'unknown event "created"'),
        ({"tables": []}, "at least one schema.table"),
        ({"tables": ["orders"]}, '"orders" is not a schema-qualified table name'),
        ({"conditions": {"attr": "data.x", "op": "like", "value": 1}}, 'unknown op "like"'),
        ({"conditions": {"and": {"attr": "x"}}}, "must be a non-empty list"),
        ({"conditions": [1, 2]}, "must be an object"),
        ({"action_data": Jsonb([1])}, "action_data must be a JSON object"),
    ],
)
def test_bad_rules_are_refused(rconn: Conn, fields: dict[str, object], message: str) -> None:
    hook = add_webhook(rconn)
    with pytest.raises(psycopg.errors.CheckViolation, match=message):
        add_rule(rconn, hook, **fields)


def test_a_webhook_in_use_cannot_be_deleted(rconn: Conn) -> None:
    hook = add_webhook(rconn)
    add_rule(rconn, hook)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        rconn.execute("DELETE FROM relay.webhooks")


def test_changes_to_rules_are_announced(rconn: Conn, relay_dsn: str) -> None:
    with psycopg.connect(relay_dsn, autocommit=True) as listener:
        listener.execute("LISTEN relay_rules")
        hook = add_webhook(rconn)
        add_rule(rconn, hook)
        rconn.execute("UPDATE relay.event_rules SET enabled = false")
        rconn.execute("DELETE FROM relay.event_rules")
        payloads = [n.payload for n in listener.notifies(timeout=1, stop_after=4)]
    assert payloads == ["webhooks", "event_rules", "event_rules", "event_rules"]


def test_application_roles_cannot_read_secrets(
    rconn: Conn, relay_dsn: str, make_role: Callable[..., str]
) -> None:
    add_webhook(rconn, secret="top-secret")
    app = make_role("app")
    with psycopg.connect(psycopg.conninfo.make_conninfo(relay_dsn, user=app)) as conn:
        for statement in ("SELECT secret FROM relay.webhooks", "SELECT * FROM relay.event_rules"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(condition_sets, deep_documents, json_values))
def test_database_and_python_agree_on_which_conditions_are_well_formed(
    rconn: Conn, document: Any
) -> None:
    try:
        validate(document)
        python_ok = True
    except InvalidConditions:
        python_ok = False
    problem = one_row(
        rconn.execute("SELECT relay.conditions_problem(%s::jsonb)", (json.dumps(document),))
    )[0]
    assert (problem is None) == python_ok, problem


def test_the_database_leaves_regular_expressions_to_relay(rconn: Conn) -> None:
    """The one place the two validators differ: PostgreSQL cannot compile RE2 syntax, so it
    takes any string as a pattern; relay compiles it when it loads the rule (a rule with a
    pattern RE2 refuses fails its deliveries with the reason, see test_failure_isolation.py) and in
    `relay rules check`."""
    for pattern in ["(", r"(a)\1", "(?=a)"]:
        document = {"attr": "data.x", "op": "regex", "value": pattern}
        sql = rconn.execute("SELECT relay.conditions_problem(%s::jsonb)", (json.dumps(document),))
        assert one_row(sql)[0] is None
        with pytest.raises(InvalidConditions, match="RE2 syntax"):
            validate(document)

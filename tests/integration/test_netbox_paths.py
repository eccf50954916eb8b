"""NetBox's condition paths on a real relay, and ``relay rules check``'s warnings about a path
no tracked column can satisfy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from relay.db import Conn
from relay.rules.conditions import resolve
from relay.rules.paths import Column, path_warning
from support.cli import relay
from support.hooks import add_rule, add_webhook
from support.receivers import Receiver, receiver
from support.strategies import column_names, netbox_paths
from support.worker import outbox_statuses, running, sql, until

DEVICE = {
    column.name: column
    for column in (
        Column("id", "bigint", True, False),
        Column("name", "character varying(64)", True, False),
        Column("status", "character varying(50)", True, False),
        Column("site_id", "bigint", True, False),
        Column("tenant_id", "bigint", True, True),  # excluded
        Column("custom_field_data", "jsonb", False, False),
        Column("ports", "integer[]", False, False),
        Column("名前", "text", True, False),
    )
}


@pytest.mark.parametrize(
    ("attr", "op", "warning"),
    [
        ("status.value", "eq", None),
        ("status", "eq", None),
        ("data.status.value", "eq", None),
        ("snapshots.prechange.status", "eq", None),
        ("site.id", "eq", None),  # site_id
        ("site_id", "eq", None),
        ("custom_field_data.rack.value", "eq", None),  # inside json: not checked
        ("ports.0", "eq", None),
        ("名前.value", "eq", None),
        ("data", "eq", None),
        ("event", "eq", None),
        ("data", "changed", None),
        ("id", "changed", None),  # only the row has a before and after: the column
        ("status.value", "changed", None),
        ("site.id", "unchanged", None),
        ("statsu", "eq", "no column 'statsu': did you mean status?"),
        ("data.stauts", "eq", "no column 'stauts': did you mean status?"),
        ("snapshots.postchange.nme", "eq", "no column 'nme': did you mean name?"),
        ("名", "eq", "no column '名': did you mean 名前?"),
        ("zzz", "eq", "no column 'zzz'"),
        ("stauts", "changed", "no column 'stauts': did you mean status?"),
        ("status.label", "eq", "a label is NetBox's serializer's, never in the database"),
        ("data.status.label", "eq", "a label is NetBox's serializer's"),
        ("status.value.value", "eq", "the column 'status' is character varying(50): nothing is"),
        ("site_id.id", "eq", "the column 'site_id' is bigint: nothing is past it but .value"),
        ("site.name", "eq", "the row holds site_id, not site's columns: write site.id"),
        ("tenant.id", "eq", "the column 'tenant_id' is left out of the changes (exclude_columns)"),
        ("tenant_id", "eq", "the column 'tenant_id' is left out of the changes"),
        ("rack.id", "eq", "no column 'rack'"),  # neither rack nor rack_id
        ("tags.slug", "contains", "tags is NetBox's serializer's, never in the row (NetBox keeps"),
        ("url", "eq", "url is NetBox's serializer's"),
        ("custom_fields.rack", "eq", "the row holds custom_field_data.rack: write custom_f"),
        ("id", "eq", "id is relay's change id, not the column 'id': write data.id"),
        ("id.value", "eq", "write data.id.value"),
        ("base_url", "eq", "no column 'base_url': write action_data.base_url for the rule's"),
        ("event", "changed", "no column 'event'"),
    ],
)
def test_paths_against_a_table_s_columns(attr: str, op: str, warning: str | None) -> None:
    found = path_warning(attr, op, DEVICE, {"base_url": "https://x.test"})
    assert found == warning if warning is None else found is not None and warning in found


@given(
    st.sets(column_names | st.sampled_from(["site_id", "status_id", "a_id", "value_id", "v.1"])),
    st.sets(column_names | st.sampled_from(["site_id", "a_id"])),
    netbox_paths,
    st.booleans(),
)
@example(kept={"status_id"}, excluded={"status"}, path="status.id", relays=False)
@example(kept={"site"}, excluded={"site_id"}, path="site.id", relays=True)
@example(kept={"site_id"}, excluded={"site"}, path="site.name", relays=False)
@example(kept={"v.1", "a"}, excluded=set(), path="v.1", relays=False)
def test_a_warning_is_exactly_a_path_that_leads_nowhere(
    kept: set[str], excluded: set[str], path: str, relays: bool
) -> None:
    """Against a table of plain columns, rules check warns about a path exactly when evaluation
    finds nothing there, in NetBox's dialect and relay's: no false alarm, and nothing missed."""
    columns = {name: Column(name, "integer", True, name in excluded) for name in kept | excluded}
    row = {name: 1 for name in kept - excluded}  # what the images hold
    attr = f"data.{path}" if relays else path
    warned = path_warning(attr, "eq", columns, {})
    assert (warned is not None) is (repr(resolve({"data": row}, attr)) == "<missing>"), warned


def test_a_column_named_like_the_bridges() -> None:
    columns = {
        name: Column(name, "text", True, False) for name in ("value", "site", "site_id", "data")
    }
    assert path_warning("value", "eq", columns, {}) is None
    assert path_warning("value.value", "eq", columns, {}) is None
    found = path_warning("site.id", "eq", columns, {})
    assert found == "the column 'site' (text) is followed, not site_id: write site_id"
    assert path_warning("data", "eq", columns, {}) == (
        "data is the row, not the column 'data': write data.data"
    )
    assert path_warning("data.data", "eq", columns, {}) is None
    dotted = {
        "v1.2": Column("v1.2", "text", True, False),
        "v1": Column("v1", "jsonb", False, False),
    }
    assert path_warning("v1.2", "eq", dotted, {}) is None  # into the json column v1
    assert path_warning("v1.2", "eq", {"v1.2": dotted["v1.2"]}, {}) == (
        "no column 'v1'; the column 'v1.2' cannot be named (a dot separates parts)"
    )


def test_rules_check_warns_once_per_rule_path_and_table_without_failing(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute(
        "CREATE TABLE dcim_device (id bigint PRIMARY KEY, name text, status varchar(50),"
        ' site_id bigint, secret text, "ñame" text)'
    )
    rconn.execute("SELECT relay.track('dcim_device', exclude_columns => ARRAY['secret'])")
    hook = add_webhook(rconn)
    netbox = {
        "and": [
            {"attr": "status.value", "value": "active"},
            {"attr": "site.id", "value": 1},
            {"attr": "status.label", "value": "Active"},
            {"or": [{"attr": "stauts", "value": "x"}, {"attr": "stauts", "value": "y"}]},
        ]
    }
    add_rule(rconn, hook, name="netbox", tables=["public.dcim_device"], conditions=netbox)
    add_rule(
        rconn,
        hook,
        name="mixed",
        tables=["public.dcim_device", "public.not_tracked"],
        conditions={"or": [{"attr": "id", "value": 3}, {"attr": "secret", "op": "changed"}]},
        enabled=False,
    )
    add_rule(rconn, hook, name="fine", tables=["public.dcim_device"], conditions=None)
    add_rule(
        rconn,
        hook,
        name="unicode",
        tables=["public.dcim_device"],
        conditions={"attr": "name.value", "op": "regex", "value": "ñ"},
        action_data=Jsonb({"nme": 1}),
    )
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 0, checked.stderr
    lines = [line for line in checked.stdout.splitlines() if line.startswith("warning:")]
    assert lines == [
        "warning: rule 'netbox': status.label on public.dcim_device: a label is NetBox's"
        " serializer's, never in the database: write status (or status.value) and compare the"
        " value",
        "warning: rule 'netbox': stauts on public.dcim_device: no column 'stauts': did you mean"
        " status?",
        "warning: rule 'mixed': id on public.dcim_device: id is relay's change id, not the"
        " column 'id': write data.id",
        "warning: rule 'mixed': secret on public.dcim_device: the column 'secret' is left out of"
        " the changes (exclude_columns)",
    ]
    assert "4 rule(s), 1 webhook(s): no problems, 4 warning(s)" in checked.stdout
    strict = relay("rules", "check", "--strict", dsn=relay_dsn)
    assert strict.returncode == 1
    assert "4 warning(s) in 4 rule(s), 1 webhook(s) (--strict)" in strict.stderr


def test_warnings_are_counted_beside_problems(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    rconn.execute("SELECT relay.track('orders')")
    hook = add_webhook(rconn, name="broken", body_template="{% if %}")
    conditions: dict[str, Any] = {"attr": "statu", "value": "paid"}
    add_rule(rconn, hook, name="typo", conditions=conditions)
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1
    assert "warning: rule 'typo': statu on public.orders: no column 'statu'" in checked.stdout
    assert "1 problem(s), 1 warning(s) in 1 rule(s), 1 webhook(s)" in checked.stderr


def test_netbox_s_conditions_match_the_changes_netbox_would_send(
    rconn: Conn, relay_dsn: str
) -> None:
    """status is text and the key is site_id in the database; NetBox's status.value and site.id
    reach them. A delete is judged by the old row; a truncate has no row and matches nothing."""
    rconn.execute("CREATE TABLE dcim_site (id bigint PRIMARY KEY, name text)")
    rconn.execute("INSERT INTO dcim_site VALUES (1, 'Paris'), (2, 'Lyon')")
    rconn.execute(
        "CREATE TABLE dcim_device (id bigint PRIMARY KEY, name text, status varchar(50),"
        " site_id bigint REFERENCES dcim_site)"
    )
    rconn.execute("SELECT relay.track('dcim_device', model => 'dcim.device')")
    conditions = {
        "and": [{"attr": "status.value", "value": "active"}, {"attr": "site.id", "value": 1}]
    }

    def settled(statuses: list[str]) -> bool:
        return len(statuses) == 7 and "pending" not in statuses

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook = add_webhook(rconn, payload_url=r.url)
            add_rule(rconn, hook, tables=["public.dcim_device"], conditions=conditions)
            async with running(relay_dsn):
                await sql(
                    relay_dsn,
                    "INSERT INTO dcim_device VALUES (1, 'a', 'active', 1)",
                    "INSERT INTO dcim_device VALUES (2, 'b', 'planned', 1)",
                    "INSERT INTO dcim_device VALUES (3, 'c', 'active', 2)",
                    "INSERT INTO dcim_device VALUES (4, 'd', NULL, NULL)",
                    "UPDATE dcim_device SET status = 'active' WHERE id = 2",
                    "DELETE FROM dcim_device WHERE id = 1",
                    "TRUNCATE dcim_device",
                )
                await until(
                    lambda: (
                        "pending" not in outbox_statuses(rconn) and len(outbox_statuses(rconn)) == 7
                    )
                )
            return r

    sent = [json.loads(request.body) for request in asyncio.run(scenario()).requests]
    assert sorted((body["event"], body["data"]["id"]) for body in sent) == [
        ("created", 1),
        ("deleted", 1),
        ("updated", 2),
    ]
    assert outbox_statuses(rconn) == [
        "delivered",
        "skipped",
        "skipped",
        "skipped",
        "delivered",
        "delivered",
        "skipped",
    ]
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout
    preview = relay(
        "preview",
        "--rule",
        "rule",
        "--table",
        "public.dcim_device",
        "--new",
        '{"id": 5, "status": "active", "site_id": null}',
        dsn=relay_dsn,
    )
    assert preview.returncode == 1
    assert "site.id: not present (site_id is null)" in preview.stdout + preview.stderr

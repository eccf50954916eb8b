"""A webhook's ``related`` option: rows the change's foreign keys reference, nested in ``data``
as NetBox nests related objects, read by the relay when it renders (relay.related_rows)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from relay.db import Conn
from relay.delivery import related
from relay.model import Change, Webhook, related_name
from relay.render.request import Renderer, default_body
from relay.store import Claimed
from support.cli import relay
from support.receivers import Receiver, receiver
from support.worker import FAST, running, until

SQL = Path(__file__).resolve().parents[2] / "sql"
SITES = "CREATE TABLE dcim_site (id bigint PRIMARY KEY, name text, slug text, secret text)"
DEVICES = (
    "CREATE TABLE dcim_device (id bigint PRIMARY KEY, name text,"
    " site_id bigint REFERENCES dcim_site, tenant_id int)"
)


def tables(conn: Conn) -> None:
    conn.execute(SITES)
    conn.execute(DEVICES)
    conn.execute("SELECT relay.track('public.dcim_device')")


def hook(conn: Conn, url: str, name: str = "h", **columns: Any) -> None:
    values = {"name": name, "payload_url": url, "secret": "s", **columns}
    conn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(values)})"
        f" VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()),
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id) SELECT %s,"
        " ARRAY['public.dcim_device'], id FROM relay.webhooks WHERE name = %s",
        (name, name),
    )


def bodies(r: Receiver) -> list[Any]:
    return [json.loads(request.body) for request in r.requests]


def failures(conn: Conn) -> list[str]:
    return [
        str(row[0])
        for row in conn.execute(
            "SELECT last_error FROM relay.deliveries WHERE status = 'failed' ORDER BY outbox_id"
        )
    ]


# Pure: naming and the splice of the default body.


def test_a_foreign_key_nests_under_netboxs_name() -> None:
    assert related_name("site_id") == "site"
    assert related_name("parent") == "parent_object"
    assert related_name("_id") == "_id_object"
    assert related_name("id") == "id_object"


def change(new: str, related: str | None) -> Change:
    return Change(
        id=1,
        schema_name="public",
        table_name="dcim_device",
        op="insert",
        old_json=None,
        new_json=new,
        pk_json='{"id": 1}',
        username=None,
        request_id=None,
        txid="1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        related_json=related,
    )


@pytest.mark.parametrize(
    ("new", "related", "data"),
    [
        ('{"id" : 1, "site_id" : 3}', '{"site":{"id":3}}',
         {"id": 1, "site_id": 3, "site": {"id": 3}}),
        ("{}", '{"site":null}', {"site": None}),
        (' { } ', '{"site":null}', {"site": None}),
        ('{"a": "}{"}', '{"a_object":null,"b":{"x":"{"}}',
         {"a": "}{", "a_object": None, "b": {"x": "{"}}),
        ('{"a": 1.50}', "{}", {"a": 1.50}),
    ],
)  # fmt: skip
def test_the_default_body_splices_related_rows_into_data_without_parsing(
    new: str, related: str, data: dict[str, Any]
) -> None:
    body = json.loads(default_body(change(new, related)))
    assert body["data"] == data
    assert body["snapshots"]["postchange"] == json.loads(new)
    assert b"1.50" in default_body(change('{"a": 1.50}', '{"b":null}'))  # digits as written


def test_templates_see_related_rows_in_data_only() -> None:
    renderer = Renderer()
    webhook = Webhook(
        id=1,
        name="t",
        payload_url="http://127.0.0.1/",
        body_template="{{ data.site.name }}|{{ snapshots.postchange.site is defined }}",
    )
    request = renderer.request(
        webhook,
        change('{"id": 1, "site_id": 3}', '{"site": {"id": 3, "name": "Ünïcode \\"q\\""}}'),
        timestamp=0,
        delivery_id="d",
    )
    assert request.body.decode() == 'Ünïcode "q"|False'


# End to end: a real relay, a real receiver.


def test_related_rows_reach_templates_and_the_default_body(rconn: Conn, relay_dsn: str) -> None:
    """A template reads data.site.name; the default body carries data.site; a NULL key and a
    row deleted before the relay rendered nest null; the snapshots stay as captured."""
    tables(rconn)
    rconn.execute("INSERT INTO dcim_site VALUES (3, 'Amsterdam', 'ams'), (5, 'Gone', 'g')")

    async def scenario() -> tuple[Receiver, Receiver]:
        async with receiver() as templated, receiver() as plain:
            hook(
                rconn,
                templated.url,
                "t",
                body_template="{{ data.name }}@{{ data.site.name if data.site else 'none' }}",
                related='{"site_id": ["name"]}',
            )
            hook(rconn, plain.url, "p", related='{"site_id": ["name", "slug"]}')
            rconn.execute("INSERT INTO dcim_device VALUES (1, 'r1', 3, 7)")
            rconn.execute("INSERT INTO dcim_device VALUES (2, 'r2', NULL, 7)")
            rconn.execute("INSERT INTO dcim_device VALUES (3, 'r3', 5, 7)")
            rconn.execute("UPDATE dcim_device SET site_id = 3 WHERE id = 3")
            rconn.execute("DELETE FROM dcim_site WHERE id = 5")  # before the relay reads it
            async with running(relay_dsn):
                await until(lambda: len(templated.requests) == 4 and len(plain.requests) == 4)
            return templated, plain

    templated, plain = asyncio.run(scenario())
    assert sorted(r.body.decode() for r in templated.requests) == [
        "r1@Amsterdam",
        "r2@none",
        "r3@Amsterdam",
        "r3@none",
    ]
    sent = sorted(bodies(plain), key=lambda body: body["id"])
    assert sent[0]["data"] == {
        "id": 1,
        "name": "r1",
        "site_id": 3,
        "tenant_id": 7,
        "site": {"id": 3, "name": "Amsterdam", "slug": "ams"},
    }
    assert sent[1]["data"]["site"] is None
    assert sent[2]["data"]["site"] is None and sent[2]["data"]["site_id"] == 5
    assert sent[3]["data"]["site"]["name"] == "Amsterdam"
    assert "site" not in sent[0]["snapshots"]["postchange"]


def test_a_batch_carries_each_changes_related_row(rconn: Conn, relay_dsn: str) -> None:
    tables(rconn)
    rconn.execute("INSERT INTO dcim_site SELECT g, 'site ' || g FROM generate_series(1, 6) g")

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, r.url, batch_size=3, batch_wait_ms=200, related='{"site_id": ["name"]}')
            rconn.execute(
                "INSERT INTO dcim_device SELECT g, 'd' || g, 7 - g FROM generate_series(1, 6) g"
            )
            async with running(relay_dsn):
                await until(lambda: sum(len(body) for body in bodies(r)) == 6)
            return r

    sent = [change for body in bodies(asyncio.run(scenario())) for change in body]
    assert {c["data"]["id"]: c["data"]["site"]["name"] for c in sent} == {
        g: f"site {7 - g}" for g in range(1, 7)
    }


def test_a_thousand_deliveries_in_a_claim_each_get_their_own_row(
    rconn: Conn, relay_dsn: str
) -> None:
    tables(rconn)
    rconn.execute(
        "INSERT INTO dcim_site SELECT g, 'site ' || g, 's' || g FROM generate_series(1, 1000) g"
    )
    settings = FAST.model_copy(update={"batch_size": 1000})

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, r.url, related='{"site_id": ["name"]}')
            rconn.execute(
                "INSERT INTO dcim_device SELECT g, 'd' || g, 1001 - g"
                " FROM generate_series(1, 1000) g"
            )
            async with running(relay_dsn, settings):
                await until(lambda: len(r.requests) == 1000, timeout=60)
            return r

    sent = bodies(asyncio.run(scenario()))
    assert all(body["data"]["site"]["name"] == f"site {1001 - body['data']['id']}" for body in sent)


def test_a_column_that_is_not_a_foreign_key_fails_its_deliveries_with_the_reason(
    rconn: Conn, relay_dsn: str
) -> None:
    tables(rconn)
    rconn.execute("INSERT INTO dcim_site VALUES (3, 'Amsterdam', 'ams')")

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, r.url, "bad", related='{"tenant_id": ["name"]}')
            hook(rconn, r.url, "good", related='{"site_id": ["name"]}')
            rconn.execute("INSERT INTO dcim_device VALUES (1, 'r1', 3, 7)")
            async with running(relay_dsn):
                await until(lambda: len(r.requests) == 1 and len(failures(rconn)) == 1)
            return r

    r = asyncio.run(scenario())
    assert bodies(r)[0]["data"]["site"]["name"] == "Amsterdam"  # the other webhook's went
    assert failures(rconn) == [
        'related: public.dcim_device.tenant_id is not a foreign key: take "tenant_id" out of '
        "related, or add the foreign key"
    ]


def grant_service_role(dsn: str, service: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    result = subprocess.run(
        [psql, dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"role={service}", "-f",
         str(SQL / "service_role.sql")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_without_select_on_the_referenced_table_the_reason_names_the_grant(
    rconn: Conn, relay_dsn: str, make_role: Callable[..., str]
) -> None:
    """The service role has what sql/service_role.sql grants, and SELECT on the tracked table,
    not on dcim_site: the delivery fails saying which GRANT to run; after it, `relay retry`
    sends it with the site."""
    service = make_role("svc")
    tables(rconn)
    rconn.execute("INSERT INTO dcim_site VALUES (3, 'Amsterdam', 'ams')")
    grant_service_role(relay_dsn, service)
    service_dsn = make_conninfo(relay_dsn, user=service)

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, r.url, related='{"site_id": ["name"]}')
            rconn.execute("INSERT INTO dcim_device VALUES (1, 'r1', 3, 7)")
            async with running(service_dsn):
                await until(lambda: len(failures(rconn)) == 1)
                assert failures(rconn) == [
                    f"related: {service} cannot read public.dcim_site: run GRANT USAGE ON SCHEMA"
                    f" public TO {service}; GRANT SELECT ON public.dcim_site TO {service}"
                ]
                rconn.execute(f"GRANT SELECT ON public.dcim_site TO {service}")
                retried = await asyncio.to_thread(relay, "retry", dsn=relay_dsn)
                assert retried.returncode == 0, retried.stderr
                await until(lambda: len(r.requests) == 1)
            return r

    assert bodies(asyncio.run(scenario()))[0]["data"]["site"] == {"id": 3, "name": "Amsterdam"}


# relay.related_rows on its own: what it refuses, and what it never runs.


def related_rows(conn: Conn, table: str, column: str, columns: list[str], keys: list[str]) -> Any:
    return sorted(
        conn.execute(
            "SELECT i, \"row\"::text FROM relay.related_rows('public', %s, %s, %s, %s, %s)",
            (table, column, related_name(column), columns, keys),
        ).fetchall()
    )


def test_a_composite_foreign_key_and_a_key_of_another_type_are_refused(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE pair (a int, b int, PRIMARY KEY (a, b))")
    rconn.execute("CREATE TABLE uses_pair (id int PRIMARY KEY, a int, b int,"
                  " FOREIGN KEY (a, b) REFERENCES pair)")  # fmt: skip
    with pytest.raises(psycopg.errors.RaiseException, match="part of a foreign key of several"):
        related_rows(rconn, "uses_pair", "a", ["b"], ["1"])
    rconn.execute("CREATE DOMAIN code AS text")
    rconn.execute("CREATE TABLE coded (c code PRIMARY KEY, name text)")
    rconn.execute("CREATE TABLE uses_code (id int PRIMARY KEY, c_id code REFERENCES coded)")
    with pytest.raises(psycopg.errors.RaiseException, match="not one of PostgreSQL's own"):
        related_rows(rconn, "uses_code", "c_id", ["name"], ["x"])
    rconn.execute("CREATE TABLE sites2 (id int PRIMARY KEY, name text)")
    rconn.execute("CREATE TABLE shadowed (id int PRIMARY KEY, site_id int REFERENCES sites2,"
                  " site text)")  # fmt: skip
    with pytest.raises(psycopg.errors.RaiseException, match="has a column site already"):
        related_rows(rconn, "shadowed", "site_id", ["name"], ["1"])
    rconn.execute("ALTER TABLE sites2 ENABLE ROW LEVEL SECURITY")
    rconn.execute("CREATE TABLE uses_sites2 (id int PRIMARY KEY, site_id int REFERENCES sites2)")
    with pytest.raises(psycopg.errors.RaiseException, match="row-level security"):
        related_rows(rconn, "uses_sites2", "site_id", ["name"], ["1"])
    with pytest.raises(psycopg.errors.RaiseException, match='has no column "nope"'):
        rconn.execute("ALTER TABLE sites2 DISABLE ROW LEVEL SECURITY")
        related_rows(rconn, "uses_sites2", "site_id", ["nope"], ["1"])
    # A key whose input looks a name up: a key naming a table dropped since raised
    # UndefinedTable, which restarted the relay's session at every lease (an attacker's probe).
    rconn.execute("CREATE TABLE by_class (id regclass PRIMARY KEY, name text)")
    rconn.execute("CREATE TABLE uses_class (id int PRIMARY KEY, c_id regclass REFERENCES by_class)")
    with pytest.raises(psycopg.errors.RaiseException, match="names looked up when read"):
        related_rows(rconn, "uses_class", "c_id", ["name"], ["public.dropped_long_ago"])


def test_hostile_names_and_other_roles_types_run_no_code_of_theirs(
    rconn: Conn, relay_dsn: str, make_role: Callable[..., str]
) -> None:
    """A referenced table in a schema with a hostile name, columns named with quotes, unicode and
    spaces, of an enum, a domain, a composite, and a type of another role with a cast to json
    that counts its calls: every value arrives as its text output (as the capture writes it),
    and the cast never runs."""
    mallory = make_role("mallory")
    dbname = rconn.info.dbname
    rconn.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {mallory}')
    with psycopg.connect(make_conninfo(relay_dsn, user=mallory), autocommit=True) as m:
        m.execute('CREATE SCHEMA "Ev""il; DROP.sch ema"')
        m.execute('SET search_path = "Ev""il; DROP.sch ema"')
        m.execute("CREATE SEQUENCE cast_calls")
        m.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        m.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        m.execute("CREATE TYPE pt AS (x int, y text)")
        m.execute("CREATE TYPE trapped AS (v text)")
        m.execute(
            "CREATE FUNCTION trapped_json(trapped) RETURNS json LANGUAGE sql AS"
            " $$ SELECT json_build_object('trap',"
            ' nextval(\'"Ev""il; DROP.sch ema".cast_calls\')) $$'
        )
        m.execute("CREATE CAST (trapped AS json) WITH FUNCTION trapped_json(trapped)")
        m.execute(
            'CREATE TABLE "Sï""te s" (id bigint PRIMARY KEY, "na""me ü" text, "m o" mood,'
            ' p posint, c pt, t trapped, "😀" text)'
        )
        m.execute(
            'INSERT INTO "Sï""te s"'
            " VALUES (3, 'x\"y', 'sad', 4, ROW(1, 'a\"b'), ROW('v'), 'ok')"
        )
        m.execute(f'GRANT USAGE ON SCHEMA "Ev""il; DROP.sch ema" TO {rconn.info.user}')
        m.execute(f'GRANT SELECT, REFERENCES ON "Sï""te s" TO {rconn.info.user}')
    rconn.execute(
        "CREATE TABLE dev (id int PRIMARY KEY,"
        ' site_id bigint REFERENCES "Ev""il; DROP.sch ema"."Sï""te s",'
        ' "wé""ird id_id" bigint REFERENCES "Ev""il; DROP.sch ema"."Sï""te s")'
    )
    rconn.execute("SELECT relay.track('public.dev')")
    rconn.execute("INSERT INTO dev VALUES (1, 3, 3)")
    columns = ['na"me ü', "m o", "p", "c", "t", "😀"]

    async def scenario() -> Receiver:
        async with receiver() as r:
            rconn.execute(
                "INSERT INTO relay.webhooks (name, payload_url, related) VALUES ('h', %s, %s)",
                (r.url, json.dumps({"site_id": columns, 'wé"ird id_id': ["😀"]})),
            )
            rconn.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                " SELECT 'r', ARRAY['public.dev'], id FROM relay.webhooks"
            )
            async with running(relay_dsn):
                await until(lambda: len(r.requests) == 1)
            return r

    sent = bodies(asyncio.run(scenario()))[0]
    assert sent["data"]["site"] == {
        "id": 3,
        'na"me ü': 'x"y',
        "m o": "sad",
        "p": 4,
        "c": {"x": 1, "y": 'a"b'},
        "t": {"v": "v"},
        "😀": "ok",
    }
    assert sent["data"]['wé"ird id'] == {"id": 3, "😀": "ok"}
    with psycopg.connect(make_conninfo(relay_dsn, user=mallory), autocommit=True) as m:
        calls = m.execute('SELECT is_called FROM "Ev""il; DROP.sch ema".cast_calls').fetchone()
    assert calls == (False,)  # the other role's cast never ran


# The option itself: its shape, the command line.


@pytest.mark.parametrize(
    ("related", "problem"),
    [
        ("[]", "related is an object of 1 to 20"),
        ("{}", "related is an object of 1 to 20"),
        ('{"site_id": []}', "takes a list of 1 to 50 distinct"),
        ('{"site_id": ["a", "a"]}', "takes a list of 1 to 50 distinct"),
        ('{"site_id": [1]}', "takes a list of 1 to 50 distinct"),
        ('{"site_id": "name"}', "takes a list of 1 to 50 distinct"),
        ('{"site_id": ["' + "x" * 64 + '"]}', "takes a list of 1 to 50 distinct"),
        ('{" ": ["a"]}', "is not a column name"),
        ('{"a": ["x"], "a_object_id": ["y"]}', "would nest under one name"),
    ],
)
def test_a_related_option_of_the_wrong_shape_is_refused(
    rconn: Conn, related: str, problem: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=problem):
        rconn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, related)"
            " VALUES ('h', 'http://127.0.0.1/', %s)",
            (related,),
        )


def test_the_command_line_sets_shows_and_refuses_the_option(relay_dsn: str) -> None:
    added = relay(
        "webhook", "add", "h", "--url", "http://127.0.0.1/", "--related", '{"site_id": ["name"]}',
        dsn=relay_dsn,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = relay("webhook", "show", "h", dsn=relay_dsn)
    assert '{"site_id": ["name"]}' in shown.stdout
    for bad, said in [
        ("{site", "--related is not valid JSON"),
        ('["site_id"]', "--related is a JSON object"),
        ('{"site_id": []}', "takes a list of 1 to 50 distinct"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "--related is not valid JSON: JSON nested too deeply"),
    ]:
        refused = relay("webhook", "edit", "h", "--related", bad, dsn=relay_dsn)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    cleared = relay("webhook", "edit", "h", "--related", "", dsn=relay_dsn)
    assert cleared.returncode == 0, cleared.stderr
    assert "related" in relay("webhook", "show", "h", dsn=relay_dsn).stdout


def test_keys_are_read_exactly_as_captured(rconn: Conn) -> None:
    """A numeric key keeps its digits (orjson would read 1.10 as the float 1.1, and a key
    past 64 bits not at all), and a text key with quotes is its text."""
    hook = Webhook(id=1, name="h", payload_url="http://127.0.0.1/", related=(("k_id", ("n",)),))
    for image, key in [
        ('{"k_id": 1.10}', "1.10"),
        ('{"k_id": 123456789012345678901234567890}', "123456789012345678901234567890"),
        ('{"k_id": "a\\"b"}', 'a"b'),
        ('{"k_id": true}', "true"),
    ]:
        claimed = Claimed(1, 1, 1, 1, 1, 10, change(image, None), "d")
        entries, problem = related.wants(claimed, hook)
        assert problem is None and [e[2] for e in entries] == [key]
    rconn.execute("CREATE TABLE k (id numeric PRIMARY KEY, n text)")
    rconn.execute("CREATE TABLE uses_k (id int PRIMARY KEY, k_id numeric REFERENCES k)")
    rconn.execute("INSERT INTO k VALUES (1.10, 'one point one')")
    assert related_rows(rconn, "uses_k", "k_id", ["n"], ["9", "1.10"]) == [
        (2, '{"id" : 1.10, "n" : "one point one"}')
    ]


def test_rules_check_reports_what_related_cannot_read(rconn: Conn, relay_dsn: str) -> None:
    tables(rconn)
    hook(rconn, "http://127.0.0.1/", related='{"tenant_id": ["name"], "site_id": ["nope"]}')
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1
    assert (
        "webhook 'h': related: public.dcim_device.tenant_id is not a foreign key" in checked.stdout
    )
    assert (
        "webhook 'h': related: public.dcim_site (which public.dcim_device.site_id references)"
        ' has no column "nope"' in checked.stdout
    )
    rconn.execute("""UPDATE relay.webhooks SET related = '{"site_id": ["name"]}'""")
    assert relay("rules", "check", dsn=relay_dsn).returncode == 0


def test_a_partitioned_referenced_table_and_two_foreign_keys_on_one_column(rconn: Conn) -> None:
    """A foreign key to a partitioned table (PostgreSQL adds a constraint per partition) is
    followed to the parent, rows from every partition; a column with foreign keys to two
    tables is refused: relay cannot tell which row to nest."""
    rconn.execute("CREATE TABLE region (id int PRIMARY KEY, name text) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE region_low PARTITION OF region FOR VALUES FROM (0) TO (100)")
    rconn.execute("CREATE TABLE region_high PARTITION OF region FOR VALUES FROM (100) TO (200)")
    rconn.execute("INSERT INTO region VALUES (1, 'low'), (150, 'high')")
    rconn.execute("CREATE TABLE place (id int PRIMARY KEY, region_id int REFERENCES region)")
    assert related_rows(rconn, "place", "region_id", ["name"], ["150", "1", "99"]) == [
        (1, '{"id" : 150, "name" : "high"}'),
        (2, '{"id" : 1, "name" : "low"}'),
    ]
    rconn.execute("CREATE TABLE other_region (id int PRIMARY KEY, name text)")
    rconn.execute("INSERT INTO other_region VALUES (1, 'other')")
    rconn.execute("ALTER TABLE place ADD FOREIGN KEY (region_id) REFERENCES other_region")
    with pytest.raises(psycopg.errors.RaiseException, match="foreign keys to more than one"):
        related_rows(rconn, "place", "region_id", ["name"], ["1"])

"""The relay command, run the way a person runs it."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from support.cli import relay
from support.db import one_row


def previewed_body(output: str) -> dict[str, Any]:
    """The JSON body `relay preview` prints last."""
    body: dict[str, Any] = json.loads(output.rstrip().splitlines()[-1])
    return body


def test_install_track_untrack_uninstall(db_dsn: str) -> None:
    first = relay("install", "--dsn", db_dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_capture" in first.stdout
    again = relay("install", dsn=db_dsn)  # RELAY_DSN works as well as --dsn
    assert again.returncode == 0 and "up to date" in again.stdout

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute('CREATE TABLE "Orders" (id int PRIMARY KEY, status text, token text)')
        result = relay(
            "track",
            '"Orders"',
            "--events",
            "insert,update",
            "--update-columns",
            "status",
            "--exclude-columns",
            "token",
            dsn=db_dsn,
        )
        assert result.returncode == 0, result.stderr
        listing = relay("tracked", dsn=db_dsn)
        assert listing.returncode == 0 and "public.Orders" in listing.stdout
        conn.execute("""INSERT INTO "Orders" VALUES (1, 'new', 'secret-token')""")
        conn.execute("""UPDATE "Orders" SET token = 't2'""")
        conn.execute("""UPDATE "Orders" SET status = 'paid'""")
        conn.execute("""DELETE FROM "Orders" """)
        rows = conn.execute("SELECT op, new FROM relay.outbox ORDER BY id").fetchall()
        assert rows == [
            ("insert", {"id": 1, "status": "new"}),
            ("update", {"id": 1, "status": "paid"}),
        ]

        assert relay("untrack", '"Orders"', dsn=db_dsn).returncode == 0
        assert one_row(conn.execute("SELECT count(*) FROM relay.tracked"))[0] == 0

    refused = relay("uninstall", dsn=db_dsn)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert relay("uninstall", "--yes", dsn=db_dsn).returncode == 0
    with psycopg.connect(db_dsn) as conn:
        assert one_row(conn.execute("SELECT to_regnamespace('relay')"))[0] is None


def test_errors_are_one_clear_line(db_dsn: str) -> None:
    assert relay("install", dsn=db_dsn).returncode == 0
    missing = relay("track", "public.nope", dsn=db_dsn)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "error: no table named 'public.nope': name it as in SQL, e.g. public.orders"
    )

    bad_event = relay("track", "public.nope", "--events", "upsert", dsn=db_dsn)
    assert bad_event.returncode == 2

    unreachable = relay("install", dsn="postgresql://postgres@127.0.0.1:1/none")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("error: cannot connect to the database")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert "Traceback" not in unreachable.stderr

    no_dsn = relay("install")
    assert no_dsn.returncode == 2 and "--dsn" in no_dsn.stderr


def test_demo_shows_changes_landing_and_cleans_up(server_dsn: str) -> None:
    def demo_databases() -> set[str]:
        """The demo databases nobody is connected to: another demo running beside this one
        (another test, another checkout's) is connected to its own."""
        with psycopg.connect(server_dsn) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database d WHERE datname LIKE 'relay_demo_%'"
                " AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.datname = d.datname)"
            )
            return {r[0] for r in rows}

    before = demo_databases()
    result = relay("demo", "--dsn", server_dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout
    assert "#1 insert public.orders" in lines and "username=alice" in lines
    assert '"status": "paid"' in lines and "delete public.orders" in lines
    assert "tok_1" not in lines.split("relay.outbox gained", 1)[1]  # excluded column
    # The relay really delivered, signed, to the demo's receiver; the receiver checked it.
    assert lines.count("POST /hooks/orders") == 4 and lines.count("POST /payments") == 1
    assert lines.count("signature: netbox, valid") == 4
    assert lines.count("signature: standard, valid") == 1
    assert '{"order": 1, "total": 120.00, "by": "bob"}' in lines
    assert "INVALID" not in lines
    summary = lines.split("Where every change went", 1)[1]
    assert "#3 update: delivered (payments delivered, sales delivered)" in summary
    assert demo_databases() <= before


def test_demo_piped_fits_a_terminal_of_80_columns(server_dsn: str) -> None:
    """``./demo | cat`` (or into a file, a pager) is read by a person: no line wider than a
    terminal's default 80 columns (rules of 10,000, bodies of 400 were), none padded, and a
    body folded still shows its numbers as sent."""
    result = relay("demo", "--dsn", server_dsn)  # stdout is a pipe
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    assert [line for line in lines if line != line.rstrip()] == []
    assert '"total": 120.00' in result.stdout and '"total": 75.50' in result.stdout


def test_output_without_a_terminal_is_never_cut_mid_name(db_dsn: str) -> None:
    """Piped, a table is as wide as its content: names and SQL can be copied back whole."""
    name = "a_table_name_long_enough_to_pass_eighty_columns_beside_others"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    assert relay("install", dsn=db_dsn).returncode == 0
    assert relay("track", name, dsn=db_dsn).returncode == 0
    shown = relay("tracked", dsn=db_dsn, env={"COLUMNS": "80"})
    assert shown.returncode == 0 and f"public.{name}" in shown.stdout


def test_help_shows_whole_option_names_and_no_type_for_flags() -> None:
    shown = relay("webhook", "add", "--help", env={"COLUMNS": "80"})
    assert shown.returncode == 0
    assert "--body-template-file" in shown.stdout
    assert "--ssl-verification / --no-ssl-verification" in shown.stdout
    assert "<bool>" not in shown.stdout and "…" not in shown.stdout


def test_a_tables_model_name_is_set_listed_previewed_and_checked(db_dsn: str) -> None:
    assert relay("install", dsn=db_dsn).returncode == 0
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE dcim_device (id int PRIMARY KEY, name text)")

        def model() -> str | None:
            name: str | None = one_row(conn.execute("SELECT model FROM relay.tracked"))[0]
            return name

        tracked = relay("track", "dcim_device", "--model", "dcim.device", dsn=db_dsn)
        assert tracked.returncode == 0, tracked.stderr
        assert model() == "dcim.device"
        (row,) = [
            line for line in relay("tracked", dsn=db_dsn).stdout.splitlines() if "dcim" in line
        ]
        assert row.split()[1:4] == ["public.dcim_device", "│", "dcim.device"]

        conn.execute("INSERT INTO relay.webhooks (name, payload_url) VALUES ('w', 'http://x/')")
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'r', ARRAY['public.dcim_device'], id FROM relay.webhooks"
        )
        made_up = ["--table", "public.dcim_device", "--new", '{"id": 1}']
        preview = relay("preview", "--rule", "r", *made_up, dsn=db_dsn)
        assert preview.returncode == 0, preview.stderr
        body = previewed_body(preview.stdout)
        assert (body["model"], body["object_type"]) == ("device", "dcim.device")

        for bad in ["", " device", "dcim.", ".device", "a\nb", "x" * 201, "a\u2028b", "\xa0a", "é"]:
            refused = relay("track", "dcim_device", "--model", bad, dsn=db_dsn)
            assert refused.returncode == 1, (bad, refused)
            assert "is not a model name such as device or dcim.device" in refused.stderr
            assert len(refused.stderr.splitlines()) == 1
        assert model() == "dcim.device"  # each refusal changed nothing

        assert relay("track", "dcim_device", dsn=db_dsn).returncode == 0
        assert model() is None  # tracking again replaces every option: the table name again


def test_names_with_dots_and_quotes_are_written_as_rules_write_them(db_dsn: str) -> None:
    assert relay("install", dsn=db_dsn).returncode == 0
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Sch""ema"')
        conn.execute('CREATE TABLE "Sch""ema"."We""ird.Täb" (id int PRIMARY KEY)')
        conn.execute("""SELECT relay.track('"Sch""ema"."We""ird.Täb"', model => 'x.y')""")
        conn.execute("INSERT INTO relay.webhooks (name, payload_url) VALUES ('w', 'http://x/')")
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            """ SELECT 'r', ARRAY['"Sch""ema"."We""ird.Täb"'], id FROM relay.webhooks"""
        )
    spelled = '"Sch""ema"."We""ird.Täb"'
    assert spelled in relay("tracked", dsn=db_dsn).stdout
    shown = relay("preview", "--rule", "r", "--table", spelled, "--new", '{"id": 1}', dsn=db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert "conditions matched" in shown.stdout and "note:" not in shown.stdout
    body = previewed_body(shown.stdout)
    assert (body["model"], body["object_type"]) == ("y", "x.y")
    unreadable = relay("preview", "--rule", "r", "--table", 'a."b', "--new", "{}", dsn=db_dsn)
    assert unreadable.returncode == 2 and "is not a table name as rules write" in unreadable.stderr

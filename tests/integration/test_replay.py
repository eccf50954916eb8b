"""`relay replay`: a webhook gets past changes again, with real receivers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.receivers import Receiver, receiver
from support.worker import FAST, running, setup, until


def deliveries_settled(conn: Conn) -> bool:
    return one_row(conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"))[
        0
    ] == 0 and "pending" not in [
        r[0] for r in conn.execute("SELECT status::text FROM relay.outbox")
    ]


def story(requests: list[Any]) -> list[tuple[str, int]]:
    told = []
    for request in requests:
        body = json.loads(request.body)
        told.append((body["event"], body["data"]["v"]))
    return told


async def deliver(dsn: str, conn: Conn, r: Receiver, count: int) -> None:
    async with running(dsn, FAST):
        await until(lambda: len(r.requests) >= count and deliveries_settled(conn))


def test_replay_sends_delivered_changes_again_in_order_under_their_delivery_ids(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> tuple[Receiver, str, str]:
        async with receiver() as r:
            setup(rconn, r.url)
            rconn.execute("INSERT INTO items VALUES (1, 0)")
            for v in (1, 2, 3):
                rconn.execute("UPDATE items SET v = %s WHERE id = 1", (v,))
            await deliver(relay_dsn, rconn, r, 4)
            dry = await asyncio.to_thread(
                relay, "replay", "--webhook", "hook", "--since", "1h", "--dry-run", dsn=relay_dsn
            )
            assert (
                one_row(
                    rconn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'")
                )[0]
                == 0
            )
            done = await asyncio.to_thread(
                relay, "replay", "--webhook", "hook", "--since", "1h", dsn=relay_dsn
            )
            assert done.returncode == 0, done.stderr
            await deliver(relay_dsn, rconn, r, 8)
            return r, dry.stdout, done.stdout

    r, dry, done = asyncio.run(scenario())
    assert "would replay 4 changes to webhook hook (4 delivered before, 0 failed" in dry
    assert "nothing changed (--dry-run)" in dry
    assert "replaying 4 changes to webhook hook" in done
    first, again = r.requests[:4], r.requests[4:]
    assert (
        story(again)
        == story(first)
        == [("created", 0), ("updated", 1), ("updated", 2), ("updated", 3)]
    )
    assert [q.headers["X-Relay-Delivery"] for q in again] == [
        q.headers["X-Relay-Delivery"] for q in first
    ], "a replay keeps the delivery ids of the first delivery"
    assert all(q.headers.get("X-Relay-Replay") == "true" for q in again)
    assert not any("X-Relay-Replay" in q.headers for q in first)
    logged = rconn.execute(
        "SELECT replay, attempt, count(*) FROM relay.attempts GROUP BY 1, 2 ORDER BY 1"
    ).fetchall()
    assert logged == [(False, 1, 4), (True, 2, 4)], "the attempt log marks the replays"


def test_replay_of_failed_changes_only(rconn: Conn, relay_dsn: str) -> None:
    refusing = {"on": True}

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if refusing["on"] and body["data"]["id"] % 2 == 0:
            return web.Response(status=500)
        return web.Response()

    async def scenario() -> Receiver:
        async with receiver(handle) as r:
            setup(rconn, r.url, max_attempts=1)
            rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
            await deliver(relay_dsn, rconn, r, 6)
            refusing["on"] = False
            done = await asyncio.to_thread(
                relay,
                "replay",
                "--webhook",
                "hook",
                "--since",
                "1h",
                "--status",
                "failed",
                dsn=relay_dsn,
            )
            assert done.returncode == 0, done.stderr
            assert "3 changes to webhook hook (0 delivered before, 3 failed before" in done.stdout
            await deliver(relay_dsn, rconn, r, 9)
            return r

    r = asyncio.run(scenario())
    replayed = sorted(json.loads(q.body)["data"]["id"] for q in r.requests[6:])
    assert replayed == [2, 4, 6]
    statuses = rconn.execute(
        "SELECT DISTINCT status::text FROM relay.deliveries ORDER BY 1"
    ).fetchall()
    assert statuses == [("delivered",)]


def test_replay_to_a_new_webhook_matches_its_rules_as_they_are_now(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> tuple[Receiver, Receiver]:
        async with receiver() as old, receiver() as new:
            setup(rconn, old.url, name="old")
            rconn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 5) g")
            rconn.execute("UPDATE items SET v = 10 WHERE id = 1")
            rconn.execute("DELETE FROM items WHERE id = 2")
            await deliver(relay_dsn, rconn, old, 7)
            rconn.execute(
                "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES ('new', %s, 's')",
                (new.url,),
            )
            rconn.execute(
                "INSERT INTO relay.event_rules (name, tables, events, conditions, webhook_id)"
                " SELECT 'new', ARRAY['public.items'], ARRAY['insert', 'update'],"
                ' \'{"attr": "data.v", "value": 3, "op": "gte"}\', id'
                " FROM relay.webhooks WHERE name = 'new'"
            )
            dry = relay("replay", "--webhook", "new", "--since", "1h", "--dry-run", dsn=relay_dsn)
            assert "would replay 4 changes to webhook new (0 delivered before, 0 failed" in (
                dry.stdout
            ), dry.stdout + dry.stderr
            done = await asyncio.to_thread(
                relay,
                "replay",
                "--webhook",
                "new",
                "--since",
                "1h",
                "--table",
                "public.items",
                dsn=relay_dsn,
            )
            assert "4 new to it" in done.stdout, done.stdout + done.stderr
            await deliver(relay_dsn, rconn, new, 4)
            return old, new

    old, new = asyncio.run(scenario())
    assert len(old.requests) == 7, "the other webhook gets nothing again"
    told = story(new.requests)
    assert sorted(told) == sorted([("created", 3), ("created", 4), ("created", 5), ("updated", 10)])
    assert all(q.headers.get("X-Relay-Replay") == "true" for q in new.requests)


def test_replay_says_what_retention_left_and_refuses_bad_arguments(
    rconn: Conn, relay_dsn: str
) -> None:
    """A warning about retention when changes made in the window were purged, and only then:
    an outbox younger than the window has lost nothing."""
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("CREATE TABLE others (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('others')")
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE relay.outbox SET status = 'delivered', processed_at = now()")
    young = relay("replay", "--webhook", "hook", "--since", "30d", "--dry-run", dsn=relay_dsn)
    assert young.returncode == 0 and young.stderr == ""

    # Three changes made ten days ago, finished, then purged.
    rconn.execute("INSERT INTO items VALUES (2, 0), (3, 0), (4, 0)")
    rconn.execute(
        "UPDATE relay.outbox SET status = 'delivered', created_at = now() - interval '10 days',"
        " processed_at = now() - interval '10 days' WHERE pk::jsonb->>'id' <> '1'"
    )
    assert relay("purge", "--older-than", "1d", dsn=relay_dsn).returncode == 0

    def warned(*args: str) -> str:
        replayed = relay("replay", "--webhook", "hook", "--dry-run", *args, dsn=relay_dsn)
        assert replayed.returncode == 0, replayed.stderr
        return replayed.stderr

    old = warned("--since", "30d")
    assert old.startswith("warning: up to 3 change(s) made from ") and old.count("\n") == 1
    assert "were purged (RELAY_RETENTION_DAYS, relay purge): they cannot be replayed" in old
    assert warned("--since", "11d", "--table", "items") == old
    assert warned("--since", "1h") == "", "the purged changes were made before the window"
    assert warned("--since", "30d", "--until", "20d") == "", "and after this one"
    assert warned("--since", "30d", "--table", "others") == "", "of another table"

    for args, message in [
        (["--webhook", "nope", "--since", "1h"], "no webhook named 'nope'"),
        (["--webhook", "hook", "--since", "yesterday"], "--since/--until"),
        (["--webhook", "hook", "--since", "1h", "--until", "2h"], "--until must be later"),
        (["--webhook", "hook", "--since", "1h", "--table", "a.b.c"], "not a table name"),
        (["--webhook", "hook", "--since", "1h", "--status", "some"], "--status"),
    ]:
        result = relay("replay", *args, dsn=relay_dsn)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    rconn.execute("UPDATE relay.webhooks SET enabled = false")
    disabled = relay("replay", "--webhook", "hook", "--since", "1h", dsn=relay_dsn)
    assert disabled.returncode == 2 and "is disabled" in disabled.stderr


def test_a_change_being_replayed_outlives_retention_until_it_is_sent(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    rconn.execute(
        "INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, status)"
        " SELECT o.id, r.webhook_id, r.id, 'k' || o.id, 'delivered'"
        " FROM relay.outbox o, relay.event_rules r"
    )
    rconn.execute(
        "UPDATE relay.outbox SET status = 'delivered', processed_at = now() - interval '2 days'"
    )
    done = relay("replay", "--webhook", "hook", "--since", "1h", "--table", "items", dsn=relay_dsn)
    assert "2 changes" in done.stdout, done.stdout + done.stderr
    purged = relay("purge", "--older-than", "1d", dsn=relay_dsn)
    assert purged.returncode == 0, purged.stderr
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 2


def delivered_by_hand(conn: Conn) -> None:
    """Every change delivered to the webhook, as a relay would have left it."""
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, status)"
        " SELECT o.id, r.webhook_id, r.id, 'public.items:' || o.pk::jsonb::text, 'delivered'"
        " FROM relay.outbox o, relay.event_rules r"
    )
    conn.execute("UPDATE relay.outbox SET status = 'delivered', processed_at = now()")


def in_flight(conn: Conn, moved_from: str | None = None) -> None:
    """The pending changes' deliveries, being sent right now by another relay (leased);
    ``moved_from``: the row key a key move left."""
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, old_row_key,"
        " leased_by, leased_until) SELECT o.id, r.webhook_id, r.id,"
        " 'public.items:' || o.pk::jsonb::text, %s, 'elsewhere', now() + interval '1 minute'"
        " FROM relay.outbox o, relay.event_rules r WHERE o.status = 'pending'",
        (moved_from,),
    )


def test_replay_leaves_out_rows_with_a_later_change_in_flight_and_changes_whose_rule_is_gone(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    rconn.execute("UPDATE items SET v = 1")
    delivered_by_hand(rconn)
    # A later change of row 1 is being sent right now (leased by a relay).
    rconn.execute("UPDATE items SET v = 99 WHERE id = 1")
    in_flight(rconn)
    done = relay("replay", "--webhook", "hook", "--since", "1h", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    assert "replaying 2 changes to webhook hook (2 delivered before" in done.stdout
    assert "2 change(s) left out: a later change of their row is being sent" in done.stderr
    rearmed = rconn.execute(
        "SELECT row_key FROM relay.deliveries WHERE replay ORDER BY outbox_id"
    ).fetchall()
    assert rearmed == [('public.items:{"id": 2}',)] * 2

    rconn.execute("UPDATE relay.deliveries SET status = 'delivered', replay = false")
    rconn.execute("UPDATE relay.event_rules SET enabled = false")
    rconn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id)"
        " SELECT 'now', ARRAY['public.items'], id FROM relay.webhooks"
    )
    gone = relay(
        "replay", "--webhook", "hook", "--since", "1h", "--status", "delivered", dsn=relay_dsn
    )
    assert gone.returncode == 0, gone.stderr
    assert "replaying 0 changes" in gone.stdout
    assert "5 change(s) left out: the rule that sent them is gone or disabled" in (gone.stderr)
    statuses = rconn.execute("SELECT DISTINCT status::text FROM relay.deliveries").fetchall()
    assert statuses == [("delivered",)], "what was delivered stays delivered"


def test_replay_leaves_out_a_row_whose_key_move_is_in_flight(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE items SET v = 1")
    delivered_by_hand(rconn)
    rconn.execute("UPDATE items SET id = 2")  # the key move, being sent right now
    in_flight(rconn, moved_from='public.items:{"id": 1}')
    done = relay("replay", "--webhook", "hook", "--since", "1h", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    assert "replaying 0 changes" in done.stdout
    assert "2 change(s) left out: a later change of their row is being sent" in done.stderr

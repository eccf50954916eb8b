"""Coalescing (issue 29) in whole cycles against PostgreSQL and a real receiver (the grouping
alone: tests/unit/test_coalesce.py), each crossed with a feature it must not break: retry,
replay, batches, ordering, key moves, a webhook beside it that does not coalesce, the option
switched on while changes wait, and size."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.receivers import receiver
from support.worker import FAST, running, until


def items(conn: Conn) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, note text)")
    conn.execute("SELECT relay.track('items')")


def webhook(
    conn: Conn,
    url: str,
    name: str,
    *,
    coalesce_changes: bool = True,
    events: tuple[str, ...] = ("insert", "update", "delete"),
    **columns: object,
) -> None:
    values = {"name": name, "payload_url": url, "secret": "s", **columns}
    values["coalesce_changes"] = coalesce_changes
    conn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(values)})"
        f" VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()),
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, events, webhook_id)"
        " SELECT %s, ARRAY['public.items'], %s, id FROM relay.webhooks WHERE name = %s",
        (name, list(events), name),
    )


def settled(conn: Conn) -> bool:
    found = conn.execute(
        "SELECT (SELECT count(*) FROM relay.outbox WHERE status = 'pending'),"
        " (SELECT count(*) FROM relay.deliveries WHERE status = 'pending')"
    ).fetchone()
    return found == (0, 0)


def bodies(requests: list[Any], path: str | None = None) -> list[dict[str, Any]]:
    """Every change the receiver took, in order (a batch's one by one)."""
    out: list[dict[str, Any]] = []
    for request in requests:
        if path is not None and request.path != path:
            continue
        body = json.loads(request.body)
        out.extend(body if isinstance(body, list) else [body])
    return out


def summary(body: dict[str, Any]) -> tuple[str, Any, Any]:
    snapshots = body["snapshots"]
    pre = snapshots["prechange"] and snapshots["prechange"]["v"]
    post = snapshots["postchange"] and snapshots["postchange"]["v"]
    return body["event"], pre, post


def netbox_like(conn: Conn) -> None:
    """What NetBox does when a device is created: the insert, then follow-up writes to the same
    row (counters, caches), in one transaction; and an edit, updated twice."""
    with conn.transaction():
        conn.execute("INSERT INTO items VALUES (1, 10, 'new')")
        conn.execute("UPDATE items SET v = 11 WHERE id = 1")
        conn.execute("UPDATE items SET v = 12 WHERE id = 1")
    with conn.transaction():
        conn.execute("UPDATE items SET v = 20 WHERE id = 1")
        conn.execute("UPDATE items SET note = 'cached' WHERE id = 1")


def run_with(
    relay_dsn: str,
    conn: Conn,
    write: Callable[[Conn], None],
    hooks: Callable[[str], None],
    handler: Any = None,
    **settings: Any,
) -> list[Any]:
    """Hooks made for the receiver's URL, the writes made while a relay runs; every request."""

    async def scenario() -> list[Any]:
        async with receiver(handler) as r:
            hooks(r.url)
            async with running(relay_dsn, FAST.model_copy(update=settings)):
                await asyncio.to_thread(write, conn)
                await until(lambda: settled(conn), timeout=30)
            return r.requests

    return asyncio.run(scenario())


def test_netbox_like_writes_make_one_event_per_row_per_transaction(
    rconn: Conn, relay_dsn: str
) -> None:
    """Beside it a webhook without the option gets every change, as before; the coalesced
    event is the last change's (its id), from the row before the transaction to the row after
    it; the absorbed changes end skipped, saying which change they went into."""
    items(rconn)

    def hooks(url: str) -> None:
        webhook(rconn, url + "/on", "on")
        webhook(rconn, url + "/off", "off", coalesce_changes=False)

    requests = run_with(relay_dsn, rconn, netbox_like, hooks)
    on, off = bodies(requests, "/hook/on"), bodies(requests, "/hook/off")
    assert [summary(b) for b in on] == [("created", None, 12), ("updated", 12, 20)]
    assert [b["id"] for b in on] == [3, 5]
    assert on[1]["data"]["note"] == "cached"
    assert [b["id"] for b in off] == [1, 2, 3, 4, 5]
    rows = rconn.execute(
        "SELECT id, status::text, last_error, coalesced_into FROM relay.outbox ORDER BY id"
    ).fetchall()
    assert [r[1] for r in rows] == ["delivered"] * 5  # "off" took each of them
    froms = rconn.execute(
        "SELECT outbox_id, coalesced_from FROM relay.deliveries d"
        " JOIN relay.webhooks w ON w.id = d.webhook_id WHERE w.name = 'on' ORDER BY outbox_id"
    ).fetchall()
    assert froms == [(3, 1), (5, 4)]
    assert [r[3] for r in rows] == [3, 3, None, 5, None]
    # relay preview shows what each webhook gets.
    event = relay("preview", "--rule", "on", "--outbox-id", "3", dsn=relay_dsn)
    assert event.returncode == 0, event.stderr
    assert '"event":"created"' in event.stdout and '"prechange":null' in event.stdout
    alone = relay("preview", "--rule", "off", "--outbox-id", "3", dsn=relay_dsn)
    assert '"event":"updated"' in alone.stdout
    absorbed = relay("preview", "--rule", "on", "--outbox-id", "1", dsn=relay_dsn)
    assert absorbed.returncode == 1
    assert "coalesces changes, and it is in the event of change 3" in absorbed.stdout


def test_preview_groups_changes_the_relay_has_not_fanned_out_yet(
    rconn: Conn, relay_dsn: str
) -> None:
    """Before any relay has seen them, relay preview shows a coalescing webhook's changes as it
    will get them (grouped as fan-out will group them), not each change on its own."""
    items(rconn)
    webhook(rconn, "http://127.0.0.1:9/hook", "on")
    webhook(rconn, "http://127.0.0.1:9/hook", "off", coalesce_changes=False)
    netbox_like(rconn)
    with rconn.transaction():
        rconn.execute("INSERT INTO items VALUES (2, 1, 'brief')")
        rconn.execute("DELETE FROM items WHERE id = 2")
    fanned = one_row(
        rconn.execute("SELECT count(*) FROM relay.outbox WHERE fanned_out_at IS NOT NULL")
    )
    assert fanned == (0,)

    event = relay("preview", "--rule", "on", "--outbox-id", "3", dsn=relay_dsn)
    assert event.returncode == 0, event.stderr
    assert '"event":"created"' in event.stdout and '"prechange":null' in event.stdout
    update = relay("preview", "--rule", "on", "--outbox-id", "5", dsn=relay_dsn)
    assert '"event":"updated"' in update.stdout
    assert '"prechange":{"id":1,"v":12,"note":"new"}' in update.stdout  # before its transaction
    alone = relay("preview", "--rule", "off", "--outbox-id", "3", dsn=relay_dsn)
    assert '"event":"updated"' in alone.stdout
    absorbed = relay("preview", "--rule", "on", "--outbox-id", "1", dsn=relay_dsn)
    assert absorbed.returncode == 1
    assert "coalesces changes, and it is in the event of change 3" in absorbed.stdout
    cancelled = relay("preview", "--rule", "on", "--outbox-id", "7", dsn=relay_dsn)
    assert cancelled.returncode == 1
    assert "its row was created and deleted in its transaction" in cancelled.stdout


def test_absorbed_changes_end_skipped_and_say_where_they_went(rconn: Conn, relay_dsn: str) -> None:
    """Only a coalescing webhook: created then deleted sends nothing at all."""
    items(rconn)

    def write(conn: Conn) -> None:
        netbox_like(conn)
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (2, 1, 'brief')")
            conn.execute("UPDATE items SET v = 2 WHERE id = 2")
            conn.execute("DELETE FROM items WHERE id = 2")

    requests = run_with(relay_dsn, rconn, write, lambda url: webhook(rconn, url, "on"))
    assert [summary(b) for b in bodies(requests)] == [("created", None, 12), ("updated", 12, 20)]
    cancelled = relay("preview", "--rule", "on", "--outbox-id", "8", dsn=relay_dsn)
    assert cancelled.returncode == 1
    assert "its row was created and deleted in its transaction" in cancelled.stdout
    rows = rconn.execute("SELECT id, status::text, last_error FROM relay.outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (1, "skipped", "coalesced into change 3"),
        (2, "skipped", "coalesced into change 3"),
        (3, "delivered", None),
        (4, "skipped", "coalesced into change 5"),
        (5, "delivered", None),
        (6, "skipped", "coalesced into change 8"),
        (7, "skipped", "coalesced into change 8"),
        (
            8,
            "skipped",
            "coalesced: the row was created (change 6) and deleted in one transaction, nothing"
            " to send to the webhooks that coalesce",
        ),
    ]


def test_rules_and_conditions_judge_the_event(rconn: Conn, relay_dsn: str) -> None:
    """A rule for created only, with a condition on the final row: created then updated
    matches it (as in NetBox, which judges the object as saved last); updated then deleted is
    a delete with the row as it was before the transaction."""
    items(rconn)

    def hooks(url: str) -> None:
        webhook(rconn, url + "/created", "created", events=("insert",))
        rconn.execute(
            "UPDATE relay.event_rules SET conditions = %s WHERE name = 'created'",
            (json.dumps({"attr": "data.v", "value": 12}),),
        )
        webhook(rconn, url + "/deleted", "deleted", events=("delete",))

    def write(conn: Conn) -> None:
        netbox_like(conn)
        with conn.transaction():
            conn.execute("UPDATE items SET v = 30 WHERE id = 1")
            conn.execute("DELETE FROM items WHERE id = 1")

    requests = run_with(relay_dsn, rconn, write, hooks)
    assert [summary(b) for b in bodies(requests, "/hook/created")] == [("created", None, 12)]
    assert [summary(b) for b in bodies(requests, "/hook/deleted")] == [("deleted", 20, None)]


def test_a_key_move_inside_the_group(rconn: Conn, relay_dsn: str) -> None:
    """Created as 1, updated, moved to 2: one created event of row 2. Updated, moved from 2 to
    3, updated: one update whose old image is row 2 as it was."""
    items(rconn)

    def write(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (1, 10, 'a')")
            conn.execute("UPDATE items SET v = 11 WHERE id = 1")
            conn.execute("UPDATE items SET id = 2 WHERE id = 1")
        with conn.transaction():
            conn.execute("UPDATE items SET v = 12 WHERE id = 2")
            conn.execute("UPDATE items SET id = 3 WHERE id = 2")
            conn.execute("UPDATE items SET v = 13 WHERE id = 3")

    requests = run_with(relay_dsn, rconn, write, lambda url: webhook(rconn, url, "on"))
    got = bodies(requests)
    assert [summary(b) for b in got] == [("created", None, 11), ("updated", 11, 13)]
    assert [b["data"]["id"] for b in got] == [2, 3]
    assert got[1]["snapshots"]["prechange"]["id"] == 2
    keys = rconn.execute(
        "SELECT row_key, old_row_key FROM relay.deliveries ORDER BY outbox_id"
    ).fetchall()
    assert keys == [
        ('public.items:{"id": 2}', None),
        ('public.items:{"id": 3}', 'public.items:{"id": 2}'),
    ]


def test_batches_carry_coalesced_events(rconn: Conn, relay_dsn: str) -> None:
    items(rconn)

    def write(conn: Conn) -> None:
        with conn.transaction():
            for n in range(30):
                conn.execute("INSERT INTO items VALUES (%s, 0, '')", (n,))
                conn.execute("UPDATE items SET v = 1 WHERE id = %s", (n,))
                conn.execute("UPDATE items SET v = 2 WHERE id = %s", (n,))

    requests = run_with(
        relay_dsn,
        rconn,
        write,
        lambda url: webhook(rconn, url, "on", batch_size=10, batch_wait_ms=200),
    )
    got = bodies(requests)
    assert len(requests) == 3
    assert [summary(b) for b in got] == [("created", None, 2)] * 30
    assert sorted(b["data"]["id"] for b in got) == list(range(30))


def test_ordered_by_transaction(rconn: Conn, relay_dsn: str) -> None:
    """Coalesced events take their last change's place in commit order: the transactions
    arrive one after another, each row once, and a pass cut by its limit reads on."""
    items(rconn)

    def write(conn: Conn) -> None:
        for t in range(5):
            with conn.transaction():
                for n in range(4):
                    key = t * 10 + n
                    conn.execute("INSERT INTO items VALUES (%s, 0, '')", (key,))
                    conn.execute("UPDATE items SET v = %s WHERE id = %s", (t, key))

    requests = run_with(
        relay_dsn,
        rconn,
        write,
        lambda url: webhook(rconn, url, "on", ordering="transaction"),
        batch_size=7,
    )
    got = bodies(requests)
    assert [b["data"]["id"] for b in got] == [t * 10 + n for t in range(5) for n in range(4)]
    assert {summary(b) for b in got} == {("created", None, t) for t in range(5)}


def test_ten_thousand_changes_to_a_thousand_rows_make_a_thousand_events(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn)

    def write(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO items SELECT g, 0, '' FROM generate_series(1, 1000) g")
            for v in range(1, 10):
                conn.execute("UPDATE items SET v = %s", (v,))

    requests = run_with(
        relay_dsn,
        rconn,
        write,
        lambda url: webhook(rconn, url, "on", batch_size=100),
        batch_size=500,
    )
    got = bodies(requests)
    assert len(got) == 1000
    assert {summary(b) for b in got} == {("created", None, 9)}
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 10_000


def test_a_retried_coalesced_delivery_is_the_same_event(rconn: Conn, relay_dsn: str) -> None:
    """It failed for good; `relay retry` of its change sends the same event again (created,
    with the last image, under the same delivery id), not the last change matched alone (an
    update, which this created-only rule would not even take)."""
    items(rconn)
    down = {"on": True}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=503 if down["on"] else 200)

    async def scenario() -> list[Any]:
        async with receiver(handle) as r:
            webhook(rconn, r.url, "on", events=("insert",), max_attempts=1)
            async with running(relay_dsn, FAST):
                await asyncio.to_thread(netbox_like, rconn)
                await until(lambda: settled(rconn), timeout=20)
            assert [
                s for (s,) in rconn.execute("SELECT status::text FROM relay.outbox ORDER BY id")
            ] == [
                "skipped",
                "skipped",
                "failed",
                "skipped",
                "skipped",
            ]
            # Retention: a change coalesced into another stays as long as that one does (3
            # is recent; 5 goes, then 4, coalesced into it).
            rconn.execute(
                "UPDATE relay.outbox SET processed_at = now() - interval '10 days' WHERE id <> 3"
            )
            for _ in range(2):
                purged = await asyncio.to_thread(
                    relay, "purge", "--older-than", "7d", dsn=relay_dsn
                )
                assert purged.stdout == "deleted 1 finished change older than 7d\n", purged.stderr
            left = [i for (i,) in rconn.execute("SELECT id FROM relay.outbox ORDER BY id")]
            assert left == [1, 2, 3]
            retried = await asyncio.to_thread(relay, "retry", "--id", "3", dsn=relay_dsn)
            assert "requeued 1 failed change" in retried.stdout, retried.stdout + retried.stderr
            down["on"] = False
            async with running(relay_dsn, FAST):
                await until(lambda: settled(rconn), timeout=20)
            return r.requests

    requests = asyncio.run(scenario())
    assert [summary(b) for b in bodies(requests)] == [("created", None, 12)] * 2
    first, again = requests
    assert first.headers["X-Relay-Delivery"] == again.headers["X-Relay-Delivery"]
    assert one_row(rconn.execute("SELECT status::text FROM relay.outbox WHERE id = 3")) == (
        "delivered",
    )
    assert one_row(rconn.execute("SELECT coalesced_from FROM relay.deliveries")) == (1,)


def test_replay_sends_the_events_again_and_never_an_absorbed_change_alone(
    rconn: Conn, relay_dsn: str
) -> None:
    """The webhook that had the events gets them again as they were; one added since that
    coalesces gets the same events, made from the stored grouping; one that does not gets
    every change."""
    items(rconn)

    async def scenario() -> tuple[list[Any], dict[str, str]]:
        async with receiver() as r:
            webhook(rconn, r.url + "/on", "on")
            async with running(relay_dsn, FAST):
                await asyncio.to_thread(netbox_like, rconn)
                await until(lambda: settled(rconn), timeout=20)
            webhook(rconn, r.url + "/late", "late")
            webhook(rconn, r.url + "/plain", "plain", coalesce_changes=False)
            said = {}
            for name in ("on", "late", "plain"):
                done = await asyncio.to_thread(
                    relay, "replay", "--webhook", name, "--since", "1h", dsn=relay_dsn
                )
                assert done.returncode == 0, done.stderr
                said[name] = done.stdout
            async with running(relay_dsn, FAST):
                await until(lambda: settled(rconn), timeout=20)
            return r.requests, said

    requests, said = asyncio.run(scenario())
    assert (
        "replaying 2 changes to webhook on (2 delivered before, 0 failed before, 0 new"
        in (said["on"])
    )
    assert (
        "replaying 2 changes to webhook late (0 delivered before, 0 failed before, 2 new"
        in (said["late"])
    )
    assert (
        "replaying 5 changes to webhook plain (0 delivered before, 0 failed before, 5 new"
        in (said["plain"])
    )
    on = [r for r in requests if r.path == "/hook/on"]
    assert [summary(b) for b in bodies(on)] == [("created", None, 12), ("updated", 12, 20)] * 2
    assert [q.headers["X-Relay-Delivery"] for q in on[2:]] == [
        q.headers["X-Relay-Delivery"] for q in on[:2]
    ]
    late = bodies(requests, "/hook/late")
    assert [summary(b) for b in late] == [("created", None, 12), ("updated", 12, 20)]
    assert [b["id"] for b in late] == [3, 5]
    assert [b["id"] for b in bodies(requests, "/hook/plain")] == [1, 2, 3, 4, 5]


def test_switched_on_while_changes_wait(rconn: Conn, relay_dsn: str) -> None:
    """What was fanned out before stays as it was; what waits is coalesced at the next
    fan-out; nothing is lost or sent twice. `webhook show` says so."""
    items(rconn)

    async def scenario() -> list[Any]:
        async with receiver() as r:
            webhook(rconn, r.url, "hook", coalesce_changes=False)
            async with running(relay_dsn, FAST):
                with rconn.transaction():
                    rconn.execute("INSERT INTO items VALUES (1, 10, '')")
                    rconn.execute("UPDATE items SET v = 11 WHERE id = 1")
                await until(lambda: settled(rconn) and len(r.requests) == 2, timeout=20)
            with rconn.transaction():
                rconn.execute("INSERT INTO items VALUES (2, 20, '')")
                rconn.execute("UPDATE items SET v = 21 WHERE id = 2")
            edited = await asyncio.to_thread(
                relay, "webhook", "edit", "hook", "--coalesce", dsn=relay_dsn
            )
            assert edited.returncode == 0, edited.stderr
            async with running(relay_dsn, FAST):
                await until(lambda: settled(rconn), timeout=20)
            return r.requests

    requests = asyncio.run(scenario())
    assert [(b["event"], b["data"]["v"]) for b in bodies(requests)] == [
        ("created", 10),
        ("updated", 11),
        ("created", 21),
    ]
    shown = relay("webhook", "show", "hook", dsn=relay_dsn).stdout
    assert "coalesce_changes" in shown and "True" in shown
    off = relay("webhook", "edit", "hook", "--no-coalesce", dsn=relay_dsn)
    assert off.returncode == 0, off.stderr
    assert one_row(rconn.execute("SELECT coalesce_changes FROM relay.webhooks")) == (False,)


def test_truncates_and_tables_without_a_key_are_never_coalesced(
    rconn: Conn, relay_dsn: str
) -> None:
    """A truncate stands alone and ends the groups of its table before it; a row of a table
    without a primary key cannot be told from another, so each change goes on its own."""
    items(rconn)
    rconn.execute("CREATE TABLE log (v int)")
    rconn.execute("SELECT relay.track('log')")

    def hooks(url: str) -> None:
        webhook(rconn, url, "on", events=("insert", "update", "delete", "truncate"))
        rconn.execute("UPDATE relay.event_rules SET tables = ARRAY['public.items', 'public.log']")

    def write(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (1, 1, '')")
            conn.execute("UPDATE items SET v = 2 WHERE id = 1")
            conn.execute("TRUNCATE items")
            conn.execute("INSERT INTO items VALUES (1, 3, '')")
            conn.execute("UPDATE items SET v = 4 WHERE id = 1")
            conn.execute("INSERT INTO log VALUES (1)")
            conn.execute("UPDATE log SET v = 2")

    requests = run_with(relay_dsn, rconn, write, hooks)
    got = [(b["event"], b["model"], b["id"]) for b in bodies(requests)]
    assert sorted(got, key=lambda g: g[2]) == [
        ("created", "items", 2),
        ("truncated", "items", 3),
        ("created", "items", 5),
        ("created", "log", 6),
        ("updated", "log", 7),
    ]


def test_an_event_whose_ordering_key_fails_fails_at_once_as_the_event(
    rconn: Conn, relay_dsn: str
) -> None:
    """Ordered by a key rendered from the event (its last image): one that fails fails the
    event's delivery at once, with the reason, and still names the group's first change."""
    items(rconn)

    def write(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (1, 1, '')")
            conn.execute("UPDATE items SET v = 0 WHERE id = 1")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (2, 0, '')")
            conn.execute("UPDATE items SET v = 2 WHERE id = 2")

    requests = run_with(
        relay_dsn,
        rconn,
        write,
        lambda url: webhook(rconn, url, "on", ordering="key", ordering_key="{{ 1 // data.v }}"),
    )
    assert [summary(b) for b in bodies(requests)] == [("created", None, 2)]
    failed = rconn.execute(
        "SELECT outbox_id, coalesced_from, status::text, last_error FROM relay.deliveries"
        " WHERE status = 'failed'"
    ).fetchall()
    assert [(f[0], f[1], f[2]) for f in failed] == [(2, 1, "failed")]
    assert "ZeroDivisionError" in failed[0][3]

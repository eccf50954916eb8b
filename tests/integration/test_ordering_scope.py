"""Ordering scope (issue 25): a webhook ordered by transaction hears whole transactions in commit
order, one after another; one ordered by a key template hears each key's changes in order and
different keys side by side. Real receivers, real concurrent writers."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web

from relay.db import Conn
from relay.settings import Settings
from support.cli import relay
from support.db import one_row
from support.interleave import interleave
from support.ordering import changes, hook, settled
from support.receivers import receiver
from support.worker import FAST, running, until


def runs(accepted: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """The changes as the receiver took them, cut into runs of one transaction each."""
    out: list[tuple[str, list[int]]] = []
    for change in accepted:
        if out and out[-1][0] == change["txid"]:
            out[-1][1].append(change["id"])
        else:
            out.append((change["txid"], [change["id"]]))
    return out


def whole_transactions(conn: Conn, accepted: list[dict[str, Any]]) -> list[str]:
    """What a mirror applying one transaction at a time needs, as problems: each transaction's
    changes together (one run), all of them, in id order."""
    problems = []
    seen: set[str] = set()
    for txid, ids in runs(accepted):
        if txid in seen:
            problems.append(f"transaction {txid} interleaved with another (again with {ids})")
        seen.add(txid)
        if ids != sorted(ids):
            problems.append(f"transaction {txid} out of id order: {ids}")
        made = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM relay.outbox WHERE txid = %s::xid8 ORDER BY id", (txid,)
            )
        ]
        if sorted(ids) != made:
            problems.append(f"transaction {txid}: got {ids}, made {made}")
    return problems


def fk_mirror(accepted: list[dict[str, Any]]) -> list[str]:
    """Apply the changes to a mirror of authors and books one transaction at a time (a run), as
    a mirror with foreign keys does, and say where a transaction left a book without its
    author."""
    authors: dict[int, dict[str, Any]] = {}
    books: dict[int, dict[str, Any]] = {}
    problems = []
    for txid, ids in runs(accepted):
        for change in (c for c in accepted if c["txid"] == txid and c["id"] in ids):
            table = authors if change["model"] == "authors" else books
            key = change["data"]["id"]
            if change["event"] == "deleted":
                table.pop(key, None)
            else:
                table[key] = change["data"]
        for book in books.values():
            if book["author_id"] not in authors:
                problems.append(f"after transaction {txid}: book {book['id']} has no author")
    return problems


def mirror_receiver(
    refuse: Callable[[dict[str, Any]], bool],
) -> tuple[Callable[[web.Request], Any], list[dict[str, Any]]]:
    """Answers 503 to the first attempt of each change ``refuse`` picks (a receiver briefly
    down), and notes in order the changes it accepted."""
    refused: set[str] = set()
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = changes(json.loads(await request.read()))
        delivery = request.headers["X-Relay-Delivery"]
        if delivery not in refused and any(refuse(c) for c in body):
            refused.add(delivery)
            return web.Response(status=503)
        accepted.extend(body)
        return web.Response()

    return handle, accepted


def authors_and_books(conn: Conn) -> None:
    conn.execute("CREATE TABLE authors (id int PRIMARY KEY, name text)")
    conn.execute(
        "CREATE TABLE books (id int PRIMARY KEY,"
        " author_id int NOT NULL REFERENCES authors ON DELETE CASCADE, title text)"
    )
    conn.execute("SELECT relay.track('authors')")
    conn.execute("SELECT relay.track('books')")


def write_library(conn: Conn) -> None:
    """Authors with books, a cascaded delete of one, a new author with a book moved to it."""
    with conn.transaction():
        conn.execute("INSERT INTO authors VALUES (1, 'Ann'), (2, 'Bob')")
        conn.execute("INSERT INTO books VALUES (10, 1, 'a'), (11, 1, 'b'), (20, 2, 'c')")
    conn.execute("DELETE FROM authors WHERE id = 1")  # cascades to books 10 and 11
    with conn.transaction():
        conn.execute("INSERT INTO authors VALUES (3, 'Cy')")
        conn.execute("UPDATE books SET author_id = 3 WHERE id = 20")
        conn.execute("DELETE FROM authors WHERE id = 2")
    with conn.transaction():
        conn.execute("INSERT INTO authors VALUES (1, 'Ann again')")
        conn.execute("INSERT INTO books VALUES (10, 1, 'a again')")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_cascaded_delete_reaches_a_mirror_transaction_by_transaction(
    rconn: Conn, relay_dsn: str, batch_size: int
) -> None:
    """The issue: an author's cascaded delete reached the receiver before its books' deletes.
    Ordered by transaction, the mirror gets whole transactions in commit order even though the
    receiver refuses the first attempt of every book delete (in row scope the author's delete,
    and the next transactions, went on without them)."""
    authors_and_books(rconn)
    handle, accepted = mirror_receiver(lambda c: c["model"] == "books" and c["event"] == "deleted")

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.authors", "public.books"],
                ordering="transaction",
                batch_size=batch_size,
            )
            async with running(relay_dsn, FAST):
                write_library(rconn)
                await until(lambda: settled(rconn), timeout=20)

    asyncio.run(scenario())
    assert whole_transactions(rconn, accepted) == []
    assert fk_mirror(accepted) == []
    order = [txid for txid, _ in runs(accepted)]
    assert order == sorted(order, key=int)  # one writer: commit order is txid order


def test_row_scope_is_what_the_issue_saw(rconn: Conn, relay_dsn: str) -> None:
    """The same story in row scope (the default): the mirror sees a transaction in pieces."""
    authors_and_books(rconn)
    handle, accepted = mirror_receiver(lambda c: c["model"] == "books" and c["event"] == "deleted")

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.authors", "public.books"])
            async with running(relay_dsn, FAST):
                write_library(rconn)
                await until(lambda: settled(rconn), timeout=20)

    asyncio.run(scenario())
    assert whole_transactions(rconn, accepted) != []


def writers(dsn: str, count: int, transactions: int, seed: int) -> None:
    """``count`` connections at once, each making ``transactions`` transactions of 2-6 changes
    whose ids interleave with the others'; each transaction's last statement, under a lock held
    to its commit, numbers its commit (commits.seq) and is captured too, so its last id is in
    commit order."""
    failures: list[BaseException] = []

    def write(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for t in range(transactions):
                    with conn.transaction():
                        for k in range(rng.randint(2, 6)):
                            conn.execute(
                                "INSERT INTO ledger (writer, tx, k) VALUES (%s, %s, %s)",
                                (n, t, k),
                            )
                            time.sleep(rng.random() * 0.003)
                        conn.execute("SELECT pg_advisory_xact_lock(25)")
                        conn.execute("INSERT INTO commits (writer, tx) VALUES (%s, %s)", (n, t))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


@pytest.mark.parametrize("batch_size", [1, 4])
def test_concurrent_transactions_arrive_whole_in_commit_order(
    rconn: Conn, relay_dsn: str, batch_size: int
) -> None:
    """Four writers interleave their transactions' ids; fan-out takes 7 changes a pass, so its
    limit cuts transactions. The receiver hears each transaction whole, in id order, and the
    transactions in the order they committed (commits.seq)."""
    rconn.execute("CREATE TABLE ledger (id serial PRIMARY KEY, writer int, tx int, k int)")
    rconn.execute(
        "CREATE TABLE commits (seq bigserial PRIMARY KEY, writer int, tx int, UNIQUE (writer, tx))"
    )
    rconn.execute("SELECT relay.track('ledger')")
    rconn.execute("SELECT relay.track('commits')")
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        accepted.extend(changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.ledger", "public.commits"],
                ordering="transaction",
                batch_size=batch_size,
            )
            settings = FAST.model_copy(update={"batch_size": 7, "webhook_concurrency": 8})
            async with running(relay_dsn, settings):
                await asyncio.to_thread(writers, relay_dsn, 4, 8, batch_size)
                await until(lambda: settled(rconn), timeout=60)

    asyncio.run(scenario())
    assert len(accepted) == one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0]
    assert whole_transactions(rconn, accepted) == []
    seqs = [
        next(c["data"]["seq"] for c in accepted if c["txid"] == txid and c["model"] == "commits")
        for txid, _ in runs(accepted)
    ]
    assert seqs == sorted(seqs)


def test_in_row_scope_concurrent_transactions_interleave(rconn: Conn, relay_dsn: str) -> None:
    """The same writers in row scope: transactions arrive in pieces (what the test above rules
    out)."""
    rconn.execute("CREATE TABLE ledger (id serial PRIMARY KEY, writer int, tx int, k int)")
    rconn.execute("CREATE TABLE commits (seq bigserial PRIMARY KEY, writer int, tx int)")
    rconn.execute("SELECT relay.track('ledger')")
    rconn.execute("SELECT relay.track('commits')")
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(random.random() * 0.01)
        accepted.extend(changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.ledger", "public.commits"])
            settings = FAST.model_copy(update={"batch_size": 7, "webhook_concurrency": 8})
            async with running(relay_dsn, settings):
                await asyncio.to_thread(writers, relay_dsn, 4, 8, 1)
                await until(lambda: settled(rconn), timeout=60)

    asyncio.run(scenario())
    assert whole_transactions(rconn, accepted) != []


def tenant_receiver() -> tuple[Callable[[web.Request], Any], dict[str, Any]]:
    """Takes 50 ms a request; notes each tenant's changes in order, and how many requests were
    in flight at most, per tenant and in all."""
    seen: dict[str, Any] = {
        "order": defaultdict(list),
        "flying": defaultdict(int),
        "most": defaultdict(int),
        "all": 0,
        "most_all": 0,
    }

    async def handle(request: web.Request) -> web.Response:
        body = changes(json.loads(await request.read()))
        tenants = {c["data"]["tenant"] for c in body}
        seen["all"] += 1
        seen["most_all"] = max(seen["most_all"], seen["all"])
        for tenant in tenants:
            seen["flying"][tenant] += 1
            seen["most"][tenant] = max(seen["most"][tenant], seen["flying"][tenant])
        await asyncio.sleep(0.05)
        for change in body:
            seen["order"][change["data"]["tenant"]].append(change["id"])
        for tenant in tenants:
            seen["flying"][tenant] -= 1
        seen["all"] -= 1
        return web.Response()

    return handle, seen


def tenant_writes(conn: Conn) -> None:
    """Three tenants, each with several rows changed in turn, the tenants' changes mixed."""
    for round_ in range(4):
        for tenant in ("acme", "globex", "initech"):
            conn.execute(
                "INSERT INTO orders (tenant, v) VALUES (%s, %s), (%s, %s)",
                (tenant, round_, tenant, round_),
            )
            conn.execute(
                "UPDATE orders SET v = v + 10 WHERE tenant = %s AND v = %s", (tenant, round_ - 1)
            )


def test_a_key_orders_each_tenant_and_sends_tenants_side_by_side(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE orders (id serial PRIMARY KEY, tenant text, v int)")
    rconn.execute("SELECT relay.track('orders')")
    handle, seen = tenant_receiver()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.orders"], ordering="key", ordering_key="{{ data.tenant }}")
            async with running(relay_dsn, FAST.model_copy(update={"webhook_concurrency": 8})):
                tenant_writes(rconn)
                await until(lambda: settled(rconn), timeout=30)

    asyncio.run(scenario())
    for tenant, ids in seen["order"].items():
        assert ids == sorted(ids), tenant
        assert seen["most"][tenant] == 1, tenant
    assert seen["most_all"] > 1  # different tenants in parallel
    keys = {row[0] for row in rconn.execute("SELECT DISTINCT order_key FROM relay.deliveries")}
    assert keys == {"acme", "globex", "initech"}


def test_in_row_scope_a_tenant_has_several_requests_in_flight(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE orders (id serial PRIMARY KEY, tenant text, v int)")
    rconn.execute("SELECT relay.track('orders')")
    handle, seen = tenant_receiver()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.orders"])
            async with running(relay_dsn, FAST.model_copy(update={"webhook_concurrency": 8})):
                tenant_writes(rconn)
                await until(lambda: settled(rconn), timeout=30)

    asyncio.run(scenario())
    assert max(seen["most"].values()) > 1


def test_a_row_whose_key_changes_keeps_its_order(rconn: Conn, relay_dsn: str) -> None:
    """Key scope, a row inserted under tenant a and moved to tenant b while its insert waits
    for a retry (the receiver refuses every first attempt of a change of a): the update, first
    of key b, still waits for the insert (relay.placed_first), and the receiver hears them in
    order."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, tenant text, v int)")
    rconn.execute("SELECT relay.track('orders')")
    handle, accepted = mirror_receiver(lambda c: c["data"]["tenant"] == "a")

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.orders"], ordering="key", ordering_key="{{ data.tenant }}")
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO orders VALUES (1, 'a', 0)")
                rconn.execute("UPDATE orders SET tenant = 'b', v = 1 WHERE id = 1")
                rconn.execute("INSERT INTO orders VALUES (2, 'b', 2)")
                await until(lambda: settled(rconn))

    asyncio.run(scenario())
    assert [c["data"]["v"] for c in accepted if c["data"]["id"] == 1] == [0, 1]
    keys = rconn.execute("SELECT order_key FROM relay.deliveries ORDER BY position").fetchall()
    assert keys == [("a",), ("b",), ("b",)]


def test_an_ordering_key_that_fails_to_render_fails_its_delivery_and_the_rest_flows(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE orders (id serial PRIMARY KEY, tenant text, v int)")
    rconn.execute("SELECT relay.track('orders')")
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        accepted.extend(changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.orders"],
                ordering="key",
                ordering_key="{{ data.tenant }}{{ 1 // data.v }}",
            )
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO orders (tenant, v) VALUES ('a', 1), ('a', 0), ('a', 2)")
                await until(
                    lambda: (
                        one_row(
                            rconn.execute(
                                "SELECT count(*) FROM relay.outbox WHERE status = 'pending'"
                            )
                        )[0]
                        == 0
                    )
                )

    asyncio.run(scenario())
    assert [c["data"]["v"] for c in accepted] == [1, 2]
    failed = rconn.execute(
        "SELECT d.last_error, d.order_key FROM relay.deliveries d WHERE d.status = 'failed'"
    ).fetchall()
    assert failed == [("ordering_key: ZeroDivisionError: integer division or modulo by zero", None)]


def test_a_delivery_failed_for_good_lets_its_key_go_and_a_retry_takes_its_place_back(
    rconn: Conn, relay_dsn: str
) -> None:
    """Transaction scope with one attempt: a change the receiver refuses fails for good, and the
    changes after it go (it no longer holds the key). The SQL reset arms it again with the
    position it had, so it goes before what was placed after it and is still pending."""
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")
    accepted: list[int] = []
    refuse = {"on": True}

    async def handle(request: web.Request) -> web.Response:
        body = changes(json.loads(await request.read()))
        if refuse["on"] and any(c["data"]["v"] == 13 for c in body):
            return web.Response(status=500)
        accepted.extend(c["data"]["v"] for c in body)
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.items"], ordering="transaction", max_attempts=1)
            async with running(relay_dsn, FAST):
                for v in (12, 13, 14):
                    rconn.execute("INSERT INTO items VALUES (%s, %s)", (v, v))
                await until(lambda: accepted == [12, 14])
            placed = rconn.execute(
                "SELECT position FROM relay.deliveries d JOIN relay.outbox o ON o.id = d.outbox_id"
                " WHERE o.new->>'v' = '13'"
            ).fetchone()
            # Nothing runs while these are written: the re-armed change is placed before 15.
            refuse["on"] = False
            rconn.execute("INSERT INTO items VALUES (15, 15)")
            rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
            async with running(relay_dsn, FAST):
                await until(lambda: settled(rconn))
            again = rconn.execute(
                "SELECT position FROM relay.deliveries d JOIN relay.outbox o ON o.id = d.outbox_id"
                " WHERE o.new->>'v' = '13'"
            ).fetchone()
            assert again == placed

    asyncio.run(scenario())
    assert accepted == [12, 14, 13, 15]


def test_positions_follow_commit_order_not_id_order(rconn: Conn, relay_dsn: str) -> None:
    """Two transactions whose ids interleave (the first one to write commits last): the one that
    committed first is placed first, each whole."""
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")
    hook(rconn, "http://127.0.0.1:9/never", ["public.items"], ordering="transaction")
    with (
        psycopg.connect(relay_dsn, autocommit=True) as late,
        psycopg.connect(relay_dsn, autocommit=True) as early,
    ):
        late.execute("BEGIN")
        early.execute("BEGIN")
        late.execute("INSERT INTO items VALUES (1, 0)")
        early.execute("INSERT INTO items VALUES (2, 0)")
        late.execute("INSERT INTO items VALUES (3, 0)")
        early.execute("INSERT INTO items VALUES (4, 0)")
        early.execute("COMMIT")
        late.execute("INSERT INTO items VALUES (5, 0)")
        late.execute("COMMIT")

    async def scenario() -> None:
        settings = FAST.model_copy(update={"batch_size": 2})
        async with running(relay_dsn, settings):
            await until(
                lambda: (
                    one_row(
                        rconn.execute(
                            "SELECT count(*) FROM relay.deliveries WHERE position IS NOT NULL"
                        )
                    )[0]
                    == 5
                )
            )

    asyncio.run(scenario())
    placed = [
        row[0]
        for row in rconn.execute(
            "SELECT (o.new->>'id')::int FROM relay.deliveries d"
            " JOIN relay.outbox o ON o.id = d.outbox_id ORDER BY d.position"
        )
    ]
    assert placed == [2, 4, 1, 3, 5]


def backfill(conn: Conn, table: str) -> None:
    """relay.backfill to the webhook, a chunk (a transaction) of 10 rows per call, to the end."""
    while conn.execute(
        "SELECT relay.backfill(%s, webhook => 'mirror', chunk => 10)", (table,)
    ).fetchone() != (0,):
        conn.execute(
            "INSERT INTO authors VALUES (100, 'live') ON CONFLICT (id) DO UPDATE"
            " SET name = authors.name || '.'"
        )


def test_a_backfill_goes_chunk_by_chunk_among_live_transactions(
    rconn: Conn, relay_dsn: str
) -> None:
    """Backfill snapshots to a webhook ordered by transaction: each chunk is a transaction, and
    the receiver takes it whole, between the live transactions, in commit order, with every
    row's snapshot after nothing newer of that row."""
    authors_and_books(rconn)
    with rconn.transaction():
        rconn.execute("INSERT INTO authors SELECT g, 'a' || g FROM generate_series(1, 25) g")
        rconn.execute("INSERT INTO books SELECT g, g, 'b' FROM generate_series(1, 25) g")
    rconn.execute("UPDATE relay.outbox SET status = 'skipped'")  # made before the webhook
    rconn.execute(
        "UPDATE relay.fan_out_position SET scanned_to = (SELECT max(id) FROM relay.outbox)"
    )
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        accepted.extend(changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.authors", "public.books"],
                ordering="transaction",
                batch_size=4,
            )
            settings = FAST.model_copy(update={"batch_size": 6})
            async with running(relay_dsn, settings):
                backfill(rconn, "authors")
                rconn.execute("DELETE FROM authors WHERE id = 3")  # and its book
                backfill(rconn, "books")
                await until(lambda: settled(rconn), timeout=30)

    asyncio.run(scenario())
    assert whole_transactions(rconn, accepted) == []
    assert fk_mirror(accepted) == []
    order = [txid for txid, _ in runs(accepted)]
    assert order == sorted(order, key=int)
    assert sum(c["event"] == "snapshot" for c in accepted) == 26 + 24


def test_a_replay_that_would_land_inside_a_batch_due_again_waits(
    rconn: Conn, relay_dsn: str
) -> None:
    """Transaction scope, batches: A and C (table one) are replayed and go in one batch, which
    the receiver refuses; B (table two), placed between them, is then replayed. Armed, it could
    go neither before the batch (A is in it) nor after it (C is), and the webhook stalled for
    good (found by the interleavings, key scope, seed 2120); now the replay leaves it out, as it
    leaves out a row in flight, and everything drains."""
    rconn.execute("CREATE TABLE one (id int PRIMARY KEY)")
    rconn.execute("CREATE TABLE two (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('one')")
    rconn.execute("SELECT relay.track('two')")
    state = {"refuse": False}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=500 if state["refuse"] else 200)

    def batched() -> bool:
        return rconn.execute(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
            " AND batch_id IS NOT NULL AND attempts >= 1 AND leased_until IS NULL"
        ).fetchone() == (2,)

    async def scenario() -> tuple[str, str]:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.one", "public.two"],
                ordering="transaction",
                batch_size=3,
                max_attempts=20,
                retry_base_seconds=1,
            )
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO one VALUES (1)")
                rconn.execute("INSERT INTO two VALUES (2)")
                rconn.execute("INSERT INTO one VALUES (3)")
                await until(lambda: settled(rconn))
            first = await asyncio.to_thread(
                relay,
                "replay",
                "--webhook",
                "mirror",
                "--since",
                "1h",
                "--table",
                "one",
                dsn=relay_dsn,
            )
            assert "replaying 2 changes" in first.stdout, first.stdout + first.stderr
            state["refuse"] = True
            async with running(relay_dsn, FAST):
                await until(batched)
            second = await asyncio.to_thread(
                relay,
                "replay",
                "--webhook",
                "mirror",
                "--since",
                "1h",
                "--table",
                "two",
                dsn=relay_dsn,
            )
            state["refuse"] = False
            async with running(relay_dsn, FAST):
                await until(lambda: settled(rconn), timeout=20)
            return first.stdout, second.stdout + second.stderr

    _, second = asyncio.run(scenario())
    assert "1 change(s) left out" in second, second


def test_a_retry_that_would_land_inside_a_batch_due_again_stays_failed_with_the_reason(
    rconn: Conn, relay_dsn: str
) -> None:
    """As above, with B failed for good (410) and made pending again by the SQL reset while
    the batch of A and C waits: B stays failed, saying why, and the rest drains."""
    rconn.execute("CREATE TABLE one (id int PRIMARY KEY)")
    rconn.execute("CREATE TABLE two (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('one')")
    rconn.execute("SELECT relay.track('two')")
    state = {"refuse": False}

    async def handle(request: web.Request) -> web.Response:
        body = changes(json.loads(await request.read()))
        if any(c["model"] == "two" for c in body):
            return web.Response(status=410)
        return web.Response(status=500 if state["refuse"] else 200)

    def batched() -> bool:
        return rconn.execute(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
            " AND batch_id IS NOT NULL AND attempts >= 1 AND leased_until IS NULL"
        ).fetchone() == (2,)

    def finished() -> bool:
        return rconn.execute(
            "SELECT count(*) FROM relay.outbox WHERE status = 'pending'"
        ).fetchone() == (0,)

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.one", "public.two"],
                ordering="transaction",
                batch_size=1,
                max_attempts=20,
                retry_base_seconds=1,
            )
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO one VALUES (1)")
                rconn.execute("INSERT INTO two VALUES (2)")
                rconn.execute("INSERT INTO one VALUES (3)")
                await until(finished)
            rconn.execute("UPDATE relay.webhooks SET batch_size = 3")
            done = await asyncio.to_thread(
                relay,
                "replay",
                "--webhook",
                "mirror",
                "--since",
                "1h",
                "--table",
                "one",
                dsn=relay_dsn,
            )
            assert "replaying 2 changes" in done.stdout, done.stdout + done.stderr
            state["refuse"] = True
            async with running(relay_dsn, FAST):
                await until(batched)
                rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
                await until(
                    lambda: (
                        rconn.execute(
                            "SELECT count(*) FROM relay.outbox WHERE status = 'failed'"
                        ).fetchone()
                        == (1,)
                    )
                )
                state["refuse"] = False
                await until(finished, timeout=20)

    asyncio.run(scenario())
    assert rconn.execute(
        "SELECT d.status::text, d.last_error FROM relay.deliveries d"
        " JOIN relay.outbox o ON o.id = d.outbox_id WHERE o.table_name = 'two'"
    ).fetchone() == (
        "failed",
        f"not sent again: batch {batch_of_one(rconn)} of its ordering key holds changes placed"
        " before and after it; retry it once that batch is done",
    )


def batch_of_one(conn: Conn) -> int:
    row = conn.execute(
        "SELECT DISTINCT d.batch_id FROM relay.deliveries d JOIN relay.outbox o"
        " ON o.id = d.outbox_id WHERE o.table_name = 'one'"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("before", "after"), [("row", "transaction"), ("key", "row")])
def test_changing_the_ordering_with_deliveries_pending_drains_everything(
    rconn: Conn, relay_dsn: str, before: str, after: str
) -> None:
    """When the webhook's ordering changes with deliveries pending, they take the new scope
    (to row: no order key; from row: positions in id order, before the new changes): nothing
    is left behind (docs/rules.md)."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, tenant text)")
    rconn.execute("SELECT relay.track('orders')")
    state = {"refuse": True}
    accepted: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        if state["refuse"]:
            return web.Response(status=503)
        accepted.extend(c["data"]["id"] for c in changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.orders"],
                ordering=before,
                ordering_key="{{ data.tenant }}" if before == "key" else None,
                retry_base_seconds=0.2,
                max_attempts=100,
            )
            async with running(relay_dsn, FAST.model_copy(update={"breaker_failures": 1000})):
                rconn.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'a')")
                await until(
                    lambda: (
                        one_row(
                            rconn.execute(
                                "SELECT count(*) FROM relay.deliveries WHERE attempts > 0"
                            )
                        )[0]
                        > 0
                    )
                )
                rconn.execute(
                    "UPDATE relay.webhooks SET ordering = %s, ordering_key = %s",
                    (after, "{{ data.tenant }}" if after == "key" else None),
                )
                await asyncio.sleep(0.5)  # the relay reads the rules again
                rconn.execute("INSERT INTO orders VALUES (4, 'a'), (5, 'b')")
                await until(
                    lambda: one_row(rconn.execute("SELECT count(*) FROM relay.deliveries"))[0] == 5
                )
                state["refuse"] = False
                await until(lambda: settled(rconn), timeout=20)

    asyncio.run(scenario())
    assert sorted(accepted) == [1, 2, 3, 4, 5]
    keyed = [
        row[0]
        for row in rconn.execute(
            "SELECT o.new->>'id' FROM relay.deliveries d JOIN relay.outbox o ON o.id = d.outbox_id"
            " WHERE d.order_key IS NOT NULL ORDER BY 1"
        )
    ]
    # The change of ordering re-keyed the deliveries pending (relay.rekey_deliveries).
    assert keyed == ([] if after == "row" else ["1", "2", "3", "4", "5"])


def test_row_scope_deliveries_have_no_order_key(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")

    async def scenario() -> None:
        async with receiver() as r:
            hook(rconn, r.url, ["public.items"])
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO items VALUES (1, 1), (2, 2)")
                await until(lambda: settled(rconn))

    asyncio.run(scenario())
    assert rconn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE order_key IS NOT NULL OR position IS NOT NULL"
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("seed", "ordering", "key"),
    [
        (1, "transaction", None),
        (2, "transaction", None),
        (105, "key", "{{ pk.id % 2 }}"),
        (7, "key", "{{ pk.id % 2 }}"),
        (2120, "key", "{{ pk.id % 2 }}"),
    ],
)
def test_every_interleaving_drains_in_order_when_ordered(
    relay_dsn: str, seed: int, ordering: str, key: str | None
) -> None:
    """tests/integration/test_interleavings.py's interleavings (writes, key moves, relay replay,
    relay retry, the SQL reset, restarts, a receiver that fails and stalls), both webhooks
    ordered: everything drains, per-row order holds, every row ends on its newest delivered
    change."""
    run = asyncio.run(interleave(relay_dsn, seed, steps=20, ordering=ordering, ordering_key=key))
    problems = run.problems()
    assert not problems, "\n".join([f"seed {seed}:", *problems, "steps:", *run.steps])


_ = Settings  # settings come from FAST.model_copy

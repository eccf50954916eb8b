"""Keeping the outbox small: `relay purge` and the relay's own retention."""

from __future__ import annotations

import asyncio

from relay.db import Conn
from relay.settings import Settings
from support.cli import relay
from support.db import one_row
from support.delivery import claim, fan_out, finish, setup
from support.receivers import receiver
from support.worker import FAST, outbox_statuses, running, until
from support.worker import setup as setup_hook


def counts(rconn: Conn) -> tuple[int, int, int]:
    return one_row(
        rconn.execute(
            "SELECT (SELECT count(*) FROM relay.outbox), (SELECT count(*) FROM relay.deliveries),"
            " (SELECT count(*) FROM relay.attempts)"
        )
    )


def test_purge_deletes_old_finished_changes_with_their_history_in_batches(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g")
    rconn.execute("INSERT INTO notes VALUES ('no rule: skipped')")
    fan_out(rconn)
    ids = [r[0] for r in rconn.execute("SELECT id FROM relay.outbox ORDER BY id")]
    for outbox_id, webhook_id in claim(rconn)[:4]:  # the fifth stays pending
        finish(rconn, outbox_id, webhook_id, "failed" if outbox_id == ids[3] else "delivered")
    assert outbox_statuses(rconn) == ["delivered"] * 3 + ["failed", "pending", "skipped"]
    # Everything finished but the third change happened long ago.
    rconn.execute(
        "UPDATE relay.outbox SET processed_at = now() - interval '10 days'"
        " WHERE status <> 'pending' AND id <> %s",
        (ids[2],),
    )
    assert counts(rconn) == (6, 5, 4)

    result = relay("purge", "--older-than", "7d", "--batch", "2", dsn=relay_dsn)
    assert result.returncode == 0, result.stderr
    # Nothing but the result: no empty line left by a progress bar where there is no terminal.
    assert result.stdout == "deleted 4 finished changes older than 7d\n"
    left = rconn.execute("SELECT id, status::text FROM relay.outbox ORDER BY id").fetchall()
    assert left == [(ids[2], "delivered"), (ids[4], "pending")]
    assert counts(rconn) == (2, 2, 1)  # deliveries and attempts went with their changes

    again = relay("purge", "--older-than", "7d", dsn=relay_dsn)
    assert "deleted 0 finished changes" in again.stdout
    bad = relay("purge", "--older-than", "a week", dsn=relay_dsn)
    assert bad.returncode == 2 and "--older-than" in bad.stderr


def test_the_relay_purges_on_its_own_a_week_after_by_default(rconn: Conn, relay_dsn: str) -> None:
    """With no RELAY_RETENTION_DAYS the relay keeps a week of finished changes; 0 keeps every
    one, a shorter retention keeps less."""

    async def scenario() -> None:
        async with receiver() as r:
            setup_hook(rconn, r.url)
            keep_all = Settings(**{**FAST.model_dump(), "retention_days": 0})
            async with running(relay_dsn, keep_all):
                rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 4) g")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 4)
                for age, position in (("8 days", 1), ("6 days", 2), ("3 days", 3)):
                    rconn.execute(
                        "UPDATE relay.outbox SET processed_at = now() - %s::interval WHERE id ="
                        " (SELECT id FROM relay.outbox ORDER BY id OFFSET %s LIMIT 1)",
                        (age, position - 1),
                    )
            async with running(relay_dsn, keep_all):
                await asyncio.sleep(1)  # a relay sweeps as it starts
                assert counts(rconn) == (4, 4, 4)
            assert Settings().retention_days == 7
            async with running(relay_dsn):  # FAST leaves the retention at its default
                await until(lambda: counts(rconn)[0] == 3)
            keep_two_days = Settings(**{**FAST.model_dump(), "retention_days": 2})
            async with running(relay_dsn, keep_two_days):
                await until(lambda: counts(rconn)[0] == 1)

    asyncio.run(scenario())
    assert counts(rconn) == (1, 1, 1)
    assert outbox_statuses(rconn) == ["delivered"]

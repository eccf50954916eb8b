"""`relay retry`: the SQL reset behind a command, with its filters."""

from __future__ import annotations

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.delivery import claim, fan_out, finish, setup


def fail_everything(rconn: Conn) -> list[int]:
    """Three changes to items: every delivery fails for good. Returns the change ids."""
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    rconn.execute("UPDATE items SET v = 1 WHERE id = 1")  # webhook b takes updates only
    fan_out(rconn)
    while claimed := claim(rconn):  # a row's later change is claimable once the earlier failed
        for outbox_id, webhook_id in claimed:
            finish(rconn, outbox_id, webhook_id, "failed")
    return [r[0] for r in rconn.execute("SELECT id FROM relay.outbox ORDER BY id")]


def statuses(rconn: Conn) -> list[str]:
    return [r[0] for r in rconn.execute("SELECT status::text FROM relay.outbox ORDER BY id")]


def test_retry_requeues_failed_changes_by_id_webhook_and_age(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn)
    first, second, _ = fail_everything(rconn)
    assert statuses(rconn) == ["failed"] * 3

    one = relay("retry", "--id", str(first), dsn=relay_dsn)
    assert one.returncode == 0, one.stderr
    assert "requeued 1 failed change" in one.stdout
    assert statuses(rconn) == ["pending", "failed", "failed"]

    only_b = relay("retry", "--webhook", "b", dsn=relay_dsn)  # b got only the update
    assert "requeued 1 failed change" in only_b.stdout
    assert statuses(rconn) == ["pending", "failed", "pending"]

    rconn.execute(
        "UPDATE relay.outbox SET created_at = now() - interval '3 days' WHERE id = %s", (second,)
    )
    recent = relay("retry", "--since", "1d", dsn=relay_dsn)
    assert "requeued 0 failed changes" in recent.stdout
    old = relay("retry", "--since", "2026-01-01T00:00", dsn=relay_dsn)
    assert "requeued 1 failed change" in old.stdout
    assert statuses(rconn) == ["pending"] * 3
    # Requeued changes go back to the fan-out, which re-arms their failed deliveries.
    assert (
        one_row(rconn.execute("SELECT count(*) FROM relay.outbox WHERE fanned_out_at IS NULL"))[0]
        == 3
    )


def test_retry_says_what_is_wrong(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn)
    unknown = relay("retry", "--webhook", "nope", dsn=relay_dsn)
    assert unknown.returncode == 2 and "no webhook named 'nope'" in unknown.stderr
    bad_age = relay("retry", "--since", "yesterday", dsn=relay_dsn)
    assert bad_age.returncode == 2 and "--since" in bad_age.stderr

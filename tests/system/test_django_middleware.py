"""relay.contrib.django.RelayContextMiddleware with Django's own test client: each change of
a request carries its user and one request id, whatever the request's transactions did."""

from __future__ import annotations

import json
import subprocess
import sys

from relay.db import Conn
from support.db import one_row
from support.sites import DJANGO_SITE


def test_every_change_of_a_request_carries_its_user_and_request_id(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id serial PRIMARY KEY, note text)")
    rconn.execute("SELECT relay.track('items')")
    done = subprocess.run(
        [sys.executable, str(DJANGO_SITE), relay_dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["status"].values()) == {200}
    ids = result["request_ids"]
    assert ids["given id"] == "req-from-proxy"
    assert len({ids[name] for name in ids if name != "given id"}) == len(ids) - 1
    assert "bad id" not in ids["hostile id"]  # not a plain token: a new id instead

    role = one_row(rconn.execute("SELECT current_user"))[0]
    changes = rconn.execute(
        "SELECT new ->> 'note', username, request_id FROM relay.outbox ORDER BY id"
    ).fetchall()
    assert changes == [
        ("/write first", "alice", "req-from-proxy"),
        ("/write second", "alice", "req-from-proxy"),
        ("/write first", "alice", ids["made id"]),
        ("/write second", "alice", ids["made id"]),
        ("/write first", "alice", ids["hostile id"]),
        ("/write second", "alice", ids["hostile id"]),
        ("after rollbacks", "alice", ids["rollbacks"]),
        ("after a reconnect", "alice", ids["reconnect"]),
        ("after a manual rollback", "alice", ids["manual"]),
        ("/write first", role, ids["anonymous"]),  # no user: the database role, as without
        ("/write second", role, ids["anonymous"]),
    ]
    # The connection serves the next request untagged.
    assert result["left_on_the_connection"] == ["", ""]

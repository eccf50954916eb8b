"""relay.contrib.django.RelayContextMiddleware under Django REST Framework, in a small
NetBox-shaped application (tests/support/drf_site.py): each change carries the user the request has
when it is written (an API token's user, one who logs in or out on the way), the application's
own request id, one per request, and the request's path and method."""

from __future__ import annotations

import uuid
from typing import Any

from relay.db import Conn
from support.db import one_row
from support.sites import run_site

EMPTY = {"username": "", "request_id": "", "request_path": "", "request_method": ""}


def changes(rconn: Conn) -> list[tuple[Any, ...]]:
    return rconn.execute(
        "SELECT table_name, op, coalesce(new, old) ->> 'name', username, request_id "
        "FROM relay.outbox ORDER BY id"
    ).fetchall()


def test_token_and_session_users_and_the_applications_request_id(
    rconn: Conn, relay_dsn: str
) -> None:
    result, _ = run_site(relay_dsn, "api")
    status, ids, bodies = result["status"], result["request_ids"], result["bodies"]
    assert status["token device"] == 201 and status["session site"] == 201
    assert status["bad token"] == 403  # SessionAuthentication first, as NetBox: 403, not 401
    assert status["api fails"] == status["atomic fails"] == 500
    for name in ids:
        uuid.UUID(ids[name])  # every one the application's (NetBox's request.id)
    assert ids["token device"] != "client-id"
    role = one_row(rconn.execute("SELECT current_user"))[0]
    device = ids["token device"]
    assert changes(rconn) == [
        ("dcim_site", "insert", "ams1", "alice", ids["token site"]),
        ("dcim_tag", "insert", "core", "alice", ids["token tag core"]),
        ("dcim_tag", "insert", "edge", "alice", ids["token tag edge"]),
        # One request: the device, its tags (the many-to-many table), the follow-up write.
        ("dcim_device", "insert", "sw1", "alice", device),
        ("dcim_device_tags", "insert", None, "alice", device),
        ("dcim_device_tags", "insert", None, "alice", device),
        ("dcim_device", "update", "sw1", "alice", device),
        ("dcim_device", "update", "sw1", "alice", ids["token patch"]),
        ("dcim_site", "insert", "fra1", "bob", ids["session site"]),
        ("dcim_device", "update", "sw2", "alice", ids["atomic patch"]),  # ATOMIC_REQUESTS
        # Nothing of the refused token's request, nor of the one that failed in its
        # transaction; the anonymous request after them writes nothing either.
    ]
    assert role not in ("alice", "bob")
    follow_up = rconn.execute(
        "SELECT old ->> 'serial', new ->> 'serial', new ->> 'status', new ->> 'site_id' "
        "FROM relay.outbox WHERE op = 'update' ORDER BY id LIMIT 1"
    ).fetchone()
    assert follow_up == ("", "SN-000001", "planned", str(bodies["token site"]["id"]))
    # Each change records its own request's path and method (NetBox 4's request.path, .method).
    requests = rconn.execute(
        "SELECT DISTINCT request_id, request_method, request_path FROM relay.outbox"
    ).fetchall()
    assert sorted(requests) == sorted(
        [
            (ids["token site"], "POST", "/api/sites/"),
            (ids["token tag core"], "POST", "/api/tags/"),
            (ids["token tag edge"], "POST", "/api/tags/"),
            (device, "POST", "/api/devices/"),
            (ids["token patch"], "PATCH", f"/api/devices/{bodies['token device']['id']}/"),
            (ids["session site"], "POST", "/api/sites/"),
            (ids["atomic patch"], "PATCH", f"/api/devices/{bodies['token device']['id']}/"),
        ]
    )

    # What a change written in the view would carry, read by the view itself.
    assert bodies["token settings"] == {
        "username": "alice",
        "request_id": ids["token settings"],
        "request_path": "/api/settings/",
        "request_method": "POST",
    }
    assert bodies["session settings"] == {
        "username": "bob",
        "request_id": ids["session settings"],
        "request_path": "/api/settings/",
        "request_method": "PATCH",
    }
    # The same connection serves the anonymous request after a failed one: no user carried.
    assert bodies["anonymous after"]["username"] == ""
    assert bodies["anonymous at the end"] == {
        "username": "",
        "request_id": ids["anonymous at the end"],
        "request_path": "/echo/end",
        "request_method": "GET",
    }
    assert result["left_on_the_connection"] == EMPTY


def test_the_user_of_each_write_when_it_changes_mid_request(rconn: Conn, relay_dsn: str) -> None:
    result, _ = run_site(relay_dsn, "users")
    ids = result["request_ids"]
    assert result["status"] == {
        "switch": 200,
        "odd users": 200,
        "fails": 500,
        "anonymous at the end": 200,
    }
    role = one_row(rconn.execute("SELECT current_user"))[0]
    switch, odd = ids["switch"], ids["odd users"]
    assert changes(rconn) == [
        ("dcim_site", "insert", "anonymous", role, switch),
        ("dcim_site", "insert", "before login", role, switch),
        ("dcim_site", "insert", "after login", "carol", switch),
        # The savepoint that logged out rolled back with its tag (back to carol in the
        # session), but the request's user stays logged out: re-tagged.
        ("dcim_site", "insert", "after the undone logout", role, switch),
        ("dcim_site", "insert", "logged in again", "carol", switch),
        ("dcim_site", "insert", "logged out", role, switch),
        ("dcim_site", "insert", "a NUL in the name", "ev\ufffde", odd),  # PostgreSQL has no NUL
        ("dcim_site", "insert", "an empty name", role, odd),
        ("dcim_site", "insert", "kept", "bob", ids["fails"]),  # before the failed transaction
    ]
    assert result["bodies"]["anonymous at the end"]["username"] == ""
    assert result["left_on_the_connection"] == EMPTY


def test_request_ids_the_application_gives_late_or_hostile(rconn: Conn, relay_dsn: str) -> None:
    result, logged = run_site(relay_dsn, "ids")
    ids, bodies = result["request_ids"], result["bodies"]
    assert set(result["status"].values()) == {200}
    assert ids["id int"] == bodies["id int"]["request_id"] == "42"
    for kind in ("none", "nul", "huge", "spaces"):  # not plain tokens: a new UUID stands in
        uuid.UUID(ids[f"id {kind}"])
        assert bodies[f"id {kind}"]["request_id"] == ids[f"id {kind}"]
    # None is no id, not a bad one; a function's hostile id made anew at each query: once.
    assert logged.count("request id not recorded") == 4
    assert "length=10000" in logged

    # An id the application gives after the request's first write names the writes after it.
    before, after = rconn.execute(
        "SELECT request_id FROM relay.outbox WHERE username IS NOT NULL ORDER BY id"
    ).fetchall()
    assert after == ("late-id",) and ids["id late"] == "late-id"
    uuid.UUID(before[0])

    assert bodies["nul path"]["request_path"] == "/echo/a\ufffdb"
    # Placed before the middleware that sets request.id, relay still records it: it reads the
    # id at each query.
    assert bodies["relay first"]["request_id"] == ids["relay first"]
    uuid.UUID(ids["relay first"])
    # RELAY_REQUEST_ID: a function's dotted path; None leaves the client's header.
    assert bodies["setting function"]["request_id"] == ids["setting function"] == "trace-echo-x"
    assert bodies["setting none"]["request_id"] == ids["setting none"] == "client-7"
    assert bodies["function hostile"]["request_id"] == ids["function hostile"] == "client-7"
    assert result["errors"] == {
        "bad": "ImproperlyConfigured: RELAY_REQUEST_ID must name a request attribute (such as "
        "'id'), give the dotted path of a function of the request, or be None; not 5",
        "nowhere": "ImproperlyConfigured: RELAY_REQUEST_ID: cannot import no.where: No module "
        "named 'no'",
    }

"""Issue 29 end to end: NetBox 4's dialect as an operator gets it by following the docs.

A Django REST Framework application shaped like NetBox (tests/support/drf_site.py, relay's Django
middleware in it) makes NetBox-like REST requests with an API token; the operator then runs the
commands of docs/netbox.md's "The commands" as written (tracking under
NetBox's model names, a netbox4 webhook that coalesces, nests the site and has NetBox's
condition, a webhook with the documented NetBox 4 template, `relay rules check`), adds two
webhooks to count with, and runs a real relay against real receivers on 127.0.0.1, two of them
written for NetBox 4 (they verify the signature and read `event`, `object_type`,
`request.user`, `request.id` and `data`'s columns).

The changes wait in the outbox while the operator sets relay up, and relay matches them when it
fans them out: what it sends is what it would have sent had it been running during the
requests (matching reads the rules of the moment, not of the change).

NetBox gathers a request's events, one per object (extras/events.py, enqueue_event: a second
change of an object in the request refreshes the queued event's data and postchange; created
stays created); relay coalesces per transaction. They agree here because each request writes in
one transaction, as NetBox's API views do, through the DRF views' own atomic saves, not
ATOMIC_REQUESTS (off): perform_create and perform_update wrap serializer.save() in
transaction.atomic as NetBox's NetBoxModelViewSet does, and Django's delete is atomic.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shlex
from pathlib import Path
from typing import Any

from relay.db import Conn
from support.cli import in_process
from support.db import one_row
from support.receivers import NetBox4Receiver, Receiver, netbox4_receiver, receiver
from support.sites import run_site
from support.worker import running, until

DOCS = Path(__file__).parents[2] / "docs" / "netbox.md"
SECTION = "### The commands"
DOCUMENTED_URLS = {
    "inventory": "https://inventory.example.com/api/netbox-webhook/",
    "chat": "https://chat.example.com/hooks/netbox",
}
COLUMNS: dict[str, type | tuple[type, ...]] = {"id": int, "name": str, "status": str}
"""The columns of ``data`` the NetBox 4 receivers read: sites and devices both have them."""

NETBOX = {
    "site ams1": ["created"],
    "site lab": ["created"],
    "tag core": [],  # a tag: neither rule takes it (nor would NetBox's, on sites and devices)
    "device created": ["created"],  # saved twice and tagged: one event, the last data
    "device active": ["updated"],
    "device renamed": ["updated"],
    "device untagged": ["updated"],  # m2m_changed on the device's tags
    "device offline": ["updated"],
    "device deleted": ["deleted"],
}
"""The events NetBox 4 sends for each of tests/support/drf_site.py's "netbox" requests, to an event
rule on sites and devices without conditions."""

RELAY = {**NETBOX, "device untagged": []}
"""relay's, coalescing: NetBox's but for a PATCH of the tags alone, which leaves the device's
row as it was (Django's UPDATE writes the same values: capture records no UPDATE that changes
nothing, docs/sql.md) and writes only the many-to-many table, which is not the device's (nor in
the rules)."""

RELATED = '{"site_id": ["name", "slug"]}'
"""The docs' webhook's related option, for the webhook that counts beside it."""

MATCHED = ["site ams1", "device created", "device active", "device renamed", "device untagged"]
"""The requests whose object NetBox's condition `status.value in [active, planned]` matches:
Lab is retired; the device went offline, and its deletion's data is the offline device."""


def documented_setup() -> tuple[list[list[str]], dict[str, str], str]:
    """The docs' example: each `relay` command's arguments, the exported environment, and the
    template file's text."""
    section = DOCS.read_text().split(SECTION, 1)[1].split("\n### ", 1)[0]
    shell = section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    template = section.split("```jinja\n", 1)[1].split("```", 1)[0]
    commands, env = [], {}
    for line in shell.splitlines():
        words = shlex.split(line)
        if words[0] == "export":
            name, value = words[1].split("=", 1)
            env[name] = value
        else:
            assert words[0] == "relay", line
            commands.append(words[1:])
    return commands, env, template


def run(dsn: str, *args: str, env: dict[str, str] | None = None) -> str:
    """A relay command as the operator types it; it must succeed."""
    done = in_process(*args, dsn=dsn, env=env)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def pending(rconn: Conn) -> int:
    """Changes relay has not finished with."""
    count: int = one_row(
        rconn.execute("SELECT count(*) FROM relay.outbox WHERE status = 'pending'")
    )[0]
    return count


def by_request(body: dict[str, Any]) -> str:
    """A body's request id, to sort bodies that went side by side."""
    return str(body["request"]["id"])


def per_request(bodies: list[dict[str, Any]], names: dict[str, str]) -> dict[str, list[str]]:
    """Each request's events, in the order received, by the request's name."""
    events: dict[str, list[str]] = {name: [] for name in NETBOX}
    for body in bodies:
        events[names[body["request"]["id"]]].append(body["event"])
    return events


def test_netbox_4s_receivers_conditions_templates_and_counts(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    site, _ = run_site(relay_dsn, "netbox")
    ids, sent, answers = site["request_ids"], site["sent"], site["bodies"]
    assert set(site["status"].values()) <= {200, 201, 204}
    names = {ids[name]: name for name in NETBOX}
    assert len(names) == len(NETBOX)  # one X-Request-ID per request
    commands, env, template = documented_setup()
    (tmp_path / "device-chat.j2").write_text(template)

    inventory, every, uncoalesced = NetBox4Receiver(), NetBox4Receiver(), NetBox4Receiver()
    secret = env["NETBOX_SECRET"].encode()

    async def scenario() -> tuple[Receiver, Receiver]:
        async with (
            receiver(netbox4_receiver(secret, COLUMNS, inventory)) as to_inventory,
            receiver() as to_chat,
            receiver(netbox4_receiver(secret, COLUMNS, every)) as to_every,
            receiver(netbox4_receiver(secret, COLUMNS, uncoalesced)) as to_uncoalesced,
        ):
            urls = {
                DOCUMENTED_URLS["inventory"]: to_inventory.url,
                DOCUMENTED_URLS["chat"]: to_chat.url,
            }
            checked = ""
            for command in commands:
                args = [urls.get(word, word) for word in command]
                args = [str(tmp_path / w) if w == "device-chat.j2" else w for w in args]
                checked = run(relay_dsn, *args, env=env)
            assert command == ["rules", "check"]  # the docs' last command, clean
            assert checked.strip().endswith("no problems"), checked
            # To count with: every event of both tables, coalesced (as the docs' webhook) and
            # not.
            for name, url, options in (
                ("every", to_every.url, ["--coalesce", "--related", RELATED]),
                ("uncoalesced", to_uncoalesced.url, []),
            ):
                run(
                    relay_dsn,
                    *("webhook", "add", name, "--url", url, "--secret-env", "NETBOX_SECRET"),
                    *("--body-format", "netbox4", *options),
                    env=env,
                )
                run(
                    relay_dsn,
                    *("rule", "add", name, "--webhook", name),
                    *("--table", "public.dcim_site", "--table", "public.dcim_device"),
                )
            assert run(relay_dsn, "rules", "check").strip().endswith("no problems")
            async with running(relay_dsn):
                await until(lambda: pending(rconn) == 0, timeout=20)
            return to_chat, to_every

    to_chat, to_every = asyncio.run(scenario())
    undelivered = rconn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE status <> 'delivered'"
    ).fetchone()
    assert undelivered == (0,)

    # Every delivery accepted by the receivers written for NetBox 4: signature, keys, types.
    assert inventory.refused == every.refused == uncoalesced.refused == []
    assert len(to_every.requests) == len(every.accepted)

    # Per request, the events NetBox sends, with coalescing on (but for the tags' PATCH).
    # Without it, relay's figure differs for the device's creation: 2 (created, then updated by
    # the second save). Relay coalesced / relay not coalesced / NetBox, per request: site
    # 1/1/1, site 1/1/1, tag 0/0/0, device created 1/2/1, status 1/1/1, rename 1/1/1, tags
    # taken off 0/0/1, offline 1/1/1, delete 1/1/1: 8 / 9 / 9 events in all.
    assert per_request(every.accepted, names) == RELAY
    assert per_request(uncoalesced.accepted, names) == {
        **RELAY,
        "device created": ["created", "updated"],
    }

    # NetBox's condition: exactly the requests whose object is active or planned.
    assert per_request(inventory.accepted, names) == {
        name: RELAY[name] if name in MATCHED else [] for name in NETBOX
    }
    assert sorted(inventory.accepted, key=by_request) == sorted(
        (body for body in every.accepted if names[body["request"]["id"]] in MATCHED),
        key=by_request,
    )  # the same bodies; rows go side by side, so the order may differ

    # Each body: the object type, the request as NetBox 4 gives it (the response's
    # X-Request-ID, the token's user, the request's method and path), data's columns as the
    # REST API answered them, the site nested from the related option.
    ams1 = answers["site ams1"]
    nested_site = {"id": ams1["id"], "name": "AMS1", "slug": "ams1"}
    device = answers["device created"]
    for body in [*every.accepted, *uncoalesced.accepted]:
        name = names[body["request"]["id"]]
        method, path = sent[name]
        assert body["request"] == {"id": ids[name], "path": path, "method": method, "user": "alice"}
        assert body["object_type"] == ("dcim.site" if name.startswith("site") else "dcim.device")
    by_name = {names[body["request"]["id"]]: body for body in every.accepted}
    assert [by_name[name]["data"] for name in ("site ams1", "site lab")] == [
        answers["site ams1"],
        answers["site lab"],
    ]  # a site has no site_id: nothing nested
    for name in ("device created", "device active", "device renamed", "device offline"):
        answer = dict(answers[name])
        del answer["tags"]  # in the many-to-many table, not the row (docs/netbox.md)
        answer["site_id"] = answer.pop("site")
        assert by_name[name]["data"] == {**answer, "site": nested_site}
    assert by_name["device created"]["data"]["serial"] == f"SN-{device['id']:06d}"  # the last
    assert by_name["device created"]["snapshots"]["prechange"] is None
    assert by_name["device deleted"]["data"] == by_name["device offline"]["data"]
    assert by_name["device deleted"]["snapshots"]["postchange"] is None
    assert by_name["device active"]["snapshots"]["prechange"]["status"] == "planned"

    # The documented template: the user, the request's id and the site's name, one message per
    # event of the device, in order.
    for request in to_chat.requests:  # signed as NetBox signs
        signature = hmac.new(secret, request.body, hashlib.sha512).hexdigest()
        assert request.headers["X-Hook-Signature"] == signature
    messages = [json.loads(request.body)["text"] for request in to_chat.requests]
    assert messages == [
        f"Device sw1 at AMS1 created by alice (request {ids['device created']})",
        f"Device sw1 at AMS1 updated by alice (request {ids['device active']})",
        f"Device ams1-sw1 at AMS1 updated by alice (request {ids['device renamed']})",
        f"Device ams1-sw1 at AMS1 updated by alice (request {ids['device offline']})",
        f"Device ams1-sw1 at AMS1 deleted by alice (request {ids['device deleted']})",
    ]
    assert [request.headers["X-Relay-Event"] for request in to_chat.requests] == [
        "dcim.device.created",
        *["dcim.device.updated"] * 3,
        "dcim.device.deleted",
    ]

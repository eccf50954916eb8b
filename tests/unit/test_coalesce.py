"""Coalescing (issue 29), the grouping alone (no database): a webhook that asks gets one event
per row per transaction (relay/delivery/coalesce.py, relay/delivery/plan.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.delivery import coalesce, plan
from relay.model import Webhook
from relay.rules.ruleset import Rule, RuleSet
from relay.store import FanOutRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(
    id: int,
    op: str,
    pk: int | None,
    *,
    txid: str = "7",
    old_pk: int | None = None,
    table: str = "items",
    old_bytes: int = 10,
    new_bytes: int = 10,
    **extra: Any,
) -> FanOutRow:
    """A changes_to_fan_out row."""
    made: FanOutRow = {
        "id": id,
        "fresh": True,
        "schema_name": "public",
        "table_name": table,
        "op": op,
        "pk": None if pk is None else json.dumps({"id": pk}),
        "old_pk": None if old_pk is None else json.dumps({"id": old_pk}),
        "bytes": (0 if op == "insert" else old_bytes) + (0 if op == "delete" else new_bytes),
        "old_bytes": 0 if op == "insert" else old_bytes,
        "username": None,
        "request_id": None,
        "request_path": None,
        "request_method": None,
        "txid": txid,
        "created_at": NOW,
        "target": None,
        "requeued": False,
        "coalesced_into": None,
        "coalesced_from": None,
    }
    made.update(extra)  # type: ignore[typeddict-item]
    return made


def events(rows: list[FanOutRow]) -> list[tuple[str, int, int]]:
    """Each event as (op, first id, last id)."""
    return [(e["op"], e["coalesced_from"] or 0, e["id"]) for e in coalesce.group(rows).events]


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        (["insert", "update"], "insert"),
        (["insert", "update", "update"], "insert"),
        (["update", "update"], "update"),
        (["insert", "delete"], None),
        (["update", "delete"], "delete"),
        (["delete", "insert"], "update"),
        (["insert", "delete", "insert"], "insert"),
        (["delete", "insert", "delete"], "delete"),
    ],
)
def test_the_semantics_table(ops: list[str], expected: str | None) -> None:
    rows = [row(n + 1, op, 5) for n, op in enumerate(ops)]
    grouping = coalesce.group(rows)
    assert grouping.grouped == {r["id"] for r in rows}
    if expected is None:
        assert grouping.events == []
        assert "created (change 1) and deleted" in grouping.notes[len(ops)]
    else:
        [made] = grouping.events
        assert (made["op"], made["id"], made["coalesced_from"]) == (expected, len(ops), 1)
    assert grouping.into == {n + 1: len(ops) for n in range(len(ops) - 1)}
    assert grouping.notes[1] == f"coalesced into change {len(ops)}"


def test_images_and_bytes_are_the_first_old_and_the_last_new() -> None:
    made = coalesce.event(row(1, "update", 5, old_bytes=100), row(2, "update", 5, new_bytes=7))
    assert made is not None
    assert (made["bytes"], made["old_bytes"]) == (107, 100)
    images = {1: ('{"v": "before"}', '{"v": "mid"}'), 2: ('{"v": "mid"}', '{"v": "after"}')}
    assert plan.images_of(made, images) == ('{"v": "before"}', '{"v": "after"}')
    assert plan.image_ids([made]) == [2, 1]
    created = coalesce.event(row(1, "insert", 5), row(2, "update", 5, new_bytes=7))
    assert created is not None and (created["bytes"], created["old_bytes"]) == (7, 0)


def test_one_group_per_row_per_transaction() -> None:
    rows = [
        row(1, "insert", 5),
        row(2, "insert", 6),
        row(3, "update", 5, txid="8"),  # another transaction: its own group
        row(4, "update", 5),
        row(5, "update", 6, table="other"),  # another table, same key
        row(6, "update", 6),
    ]
    assert events(rows) == [("insert", 1, 4), ("insert", 2, 6)]


def test_what_is_never_coalesced() -> None:
    rows = [
        row(1, "insert", 5),
        row(2, "update", 5, target=3),  # a backfill's, for one webhook
        row(3, "update", 5, requeued=True),  # re-queued: alone (or as it was grouped)
        row(4, "insert", None),  # no primary key
        row(5, "update", None),
        row(6, "truncate", None),  # ends the groups of its table before it
        row(7, "insert", 5),
        row(8, "update", 5),
    ]
    grouping = coalesce.group(rows)
    assert [(e["coalesced_from"], e["id"]) for e in grouping.events] == [(7, 8)]
    assert grouping.grouped == {7, 8}
    # A group the truncate ended is one event, once.
    ended = coalesce.group([row(1, "insert", 5), row(2, "update", 5), row(3, "truncate", None)])
    assert [(e["coalesced_from"], e["id"]) for e in ended.events] == [(1, 2)]


def test_a_key_move_joins_the_group_of_its_old_key() -> None:
    rows = [row(1, "update", 5), row(2, "update", 9, old_pk=5), row(3, "update", 9)]
    grouping = coalesce.group(rows)
    [made] = grouping.events
    assert (made["coalesced_from"], made["id"]) == (1, 3)
    assert made["old_pk"] == json.dumps({"id": 5})  # the key before the transaction
    assert made["pk"] == json.dumps({"id": 9})
    # Moved away and back: no move left to tell.
    back = coalesce.group([row(1, "update", 9, old_pk=5), row(2, "update", 5, old_pk=9)])
    assert back.events[0]["old_pk"] is None


def test_again_makes_the_same_event_from_the_stored_grouping() -> None:
    first = row(1, "insert", 5)
    last = row(3, "update", 5, requeued=True, coalesced_from=1)
    absorbed = row(2, "update", 5, requeued=True, coalesced_into=3)
    grouping = coalesce.group([last, absorbed], {1: first})
    [made] = grouping.events
    assert (made["op"], made["coalesced_from"], made["requeued"]) == ("insert", 1, True)
    assert grouping.grouped == {2, 3}
    assert grouping.notes == {2: "coalesced into change 3"}


def hook_of(name: str, id: int, coalesce_changes: bool) -> Webhook:
    return Webhook(id=id, name=name, payload_url="http://x", coalesce_changes=coalesce_changes)


def test_a_coalescing_webhook_gets_the_event_and_the_other_every_change() -> None:
    """Matched on the event: created-then-updated matches a rule for created only."""
    on, off = hook_of("on", 1, True), hook_of("off", 2, False)
    rules = RuleSet(
        [
            Rule(1, "on", ("public.items",), ("insert",), None, {}, on),
            Rule(2, "off", ("public.items",), ("insert", "update"), None, {}, off),
        ]
    )
    rows = [row(1, "insert", 5), row(2, "update", 5), row(3, "update", 6)]
    grouping = coalesce.group(rows)
    ready, to_read = plan.sort_out(rows + grouping.events, rules, 10_000, None, grouping.grouped)
    assert to_read == []
    made = plan.plan(ready, rules)
    sent = sorted(
        zip(
            made.to_send.webhook_ids,
            made.to_send.outbox_ids,
            made.to_send.coalesced_froms,
            strict=True,
        )
    )
    assert sent == [(1, 2, 1), (2, 1, None), (2, 2, None), (2, 3, None)]

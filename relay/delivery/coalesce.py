"""Coalescing: a row's changes within one transaction as one event, for the webhooks that ask.

Pure, testable without a database: fan-out (relay/delivery/fanout.py) groups a pass's changes
with :func:`group`, matches each group's event (:func:`event`) against the coalescing webhooks'
rules and each change against the others' (relay/delivery/plan.py). A group is a transaction's
changes to one row in id order, following key moves (an UPDATE of the primary key joins the
group of the key it moved from). Only the first change and the last make the event: the op
from the first's and the last's (:func:`op_of`), the first's old image (the row as it was
before the transaction), the last's new image, the last's id. A backfill's snapshot, a
truncate (which ends every group of its table before it), a change of a table without a
primary key, a change for one webhook, and a re-queued one are never grouped: each stands
alone. The grouping is the same for every coalescing webhook, and is written on the outbox
(coalesced_into, 0031_coalesce.sql), so that a retry or a replay makes the same event again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.store import FanOutRow

GROUPED_OPS = frozenset({"insert", "update", "delete"})


def op_of(first: str, last: str) -> str | None:
    """The op of a group whose first change is ``first`` and last ``last``; None when they
    cancel out (the row was created and deleted in the transaction: nothing to send)."""
    if first == "insert":
        return None if last == "delete" else "insert"
    if last == "delete":
        return "delete"
    return "update"  # updated, or deleted and created again


def event(first: FanOutRow, last: FanOutRow) -> FanOutRow | None:
    """The row of a group's event, as ``changes_to_fan_out`` returns rows: the last change's,
    with the group's op, the key the row had before the transaction when it differs from its
    last (a key move), the bytes of the first's old image and the last's new one, and
    ``coalesced_from``, the first change's id (whose old image it carries). None when the
    changes cancel out."""
    op = op_of(first["op"], last["op"])
    if op is None:
        return None
    before = first["old_pk"] or first["pk"]
    old_bytes = first["old_bytes"] if op != "insert" else 0
    new_bytes = last["bytes"] - last["old_bytes"]
    return {
        **last,
        "op": op,
        "old_pk": before if op != "insert" and before != last["pk"] else None,
        "bytes": old_bytes + new_bytes,
        "old_bytes": old_bytes,
        "coalesced_from": first["id"],
        "event": True,
    }


@dataclass
class Grouping:
    """What a pass's changes become for the coalescing webhooks."""

    events: list[FanOutRow] = field(default_factory=list)
    """One row per group of two changes or more that does not cancel out (:func:`event`)."""
    grouped: set[int] = field(default_factory=set)
    """Every change in such a group (its last included): the coalescing webhooks match it only
    as part of its group's event."""
    into: dict[int, int] = field(default_factory=dict)
    """Each grouped change but the last -> the last (relay.outbox.coalesced_into)."""
    notes: dict[int, str] = field(default_factory=dict)
    """Why a grouped change has no delivery of its own, for relay.outbox.last_error when it
    ends skipped."""


def _key(row: FanOutRow, pk: str | None) -> tuple[str, str, str, str | None]:
    return (row["txid"], row["schema_name"], row["table_name"], pk)


def _alone(row: FanOutRow) -> bool:
    return (
        not row["fresh"]
        or row["requeued"]
        or row["target"] is not None
        or row["op"] not in GROUPED_OPS
        or row["pk"] is None
    )


def group(rows: Iterable[FanOutRow], firsts: Mapping[int, FanOutRow] | None = None) -> Grouping:
    """Group fresh changes by transaction and row (see the module's docstring), in id order;
    re-queued ones as they were grouped (:func:`again`, with their groups' ``firsts``)."""
    rows = list(rows)
    result = again((row for row in rows if row["requeued"]), firsts or {})
    open_groups: dict[tuple[str, str, str, str | None], list[FanOutRow]] = {}
    done: list[list[FanOutRow]] = []
    for row in sorted(rows, key=lambda row: row["id"]):
        if row["op"] == "truncate":
            table = (row["txid"], row["schema_name"], row["table_name"])
            for key in [key for key in open_groups if key[:3] == table]:
                del open_groups[key]  # closed: it is in ``done`` already
            continue
        if _alone(row):
            continue
        members = open_groups.pop(_key(row, row["old_pk"] or row["pk"]), None)
        if members is None:
            members = []
            done.append(members)
        members.append(row)
        open_groups[_key(row, row["pk"])] = members
    for members in done:
        if len(members) < 2:
            continue
        first, last = members[0], members[-1]
        made = event(first, last)
        if made is not None:
            result.events.append(made)
        else:
            result.notes[last["id"]] = (
                f"coalesced: the row was created (change {first['id']}) and deleted in one "
                "transaction, nothing to send to the webhooks that coalesce"
            )
        for member in members:
            result.grouped.add(member["id"])
        for member in members[:-1]:
            result.into[member["id"]] = last["id"]
            result.notes[member["id"]] = f"coalesced into change {last['id']}"
    result.events.sort(key=lambda row: row["id"])
    return result


def again(rows: Iterable[FanOutRow], firsts: Mapping[int, FanOutRow]) -> Grouping:
    """What re-queued or replayed changes are to the coalescing webhooks, from the grouping
    stored when they were fanned out: a change coalesced into another (``coalesced_into``) is
    nothing; a group's last (``coalesced_from``: its first, read into ``firsts``) is its
    group's event again."""
    result = Grouping()
    for row in rows:
        if row["coalesced_into"] is not None:
            result.grouped.add(row["id"])
            result.notes[row["id"]] = f"coalesced into change {row['coalesced_into']}"
            continue
        first_id = row["coalesced_from"]
        if first_id is None or first_id not in firsts:
            continue
        result.grouped.add(row["id"])
        made = event(firsts[first_id], row)
        if made is not None:
            result.events.append(made)
    return result

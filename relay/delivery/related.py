"""The rows a webhook's ``related`` option nests in ``data``, read once per claim.

NetBox nests the objects a row refers to (``site: {id, name, slug}``); relay captures the row
as it is (``site_id: 3``). A webhook with ``related = {"site_id": ["name", "slug"]}`` has the
relay read the referenced rows when it claims the deliveries, with its own rights, after the
writer's transaction is long over: one query (relay.related_rows) per claim and (table, foreign
key, columns), however many deliveries it holds. What it reads is the referenced row as it is
then, not as it was at the change; a row since deleted nests as null, and so does a NULL key.
A claim whose rows cannot be read (a grant missing, a column that is no foreign key) fails
those deliveries with the reason (relay.related_rows' message names the GRANT to run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
import psycopg

from relay.model import Webhook, loads, related_name
from relay.reasons import reason
from relay.store import AsyncStore, Claimed

FOR_GOOD = (
    psycopg.errors.RaiseException,
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.DataException,
)
"""What relay.related_rows raises that trying again cannot fix: its own refusals (no such
foreign key...), a grant missing, a key its type cannot read. Anything else (a lost
connection, a statement timeout) ends the session: the deliveries go again when their leases
end."""


class Lookup(NamedTuple):
    """One query's worth: the referenced rows of one foreign key of one table, with the same
    columns (webhooks that ask alike share it). A tuple: hashed once per change, in C."""

    table: tuple[str, str]
    fk_column: str
    nested_as: str
    columns: tuple[str, ...]


Entry = tuple[str, Lookup | None, str | None]
"""What one change nests under one name: from which lookup and key (None, None: null)."""


def key_text(value: Any) -> str | None:
    """A captured key value as relay.related_rows takes it (the text its type's input reads), or
    None for one it cannot look up (an array or object: no single-column key of PostgreSQL's
    own types is written so)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return str(value)
    return None


def wants(item: Claimed, hook: Webhook | None) -> tuple[list[Entry], str | None]:
    """What the delivery's change nests (its data's columns that the webhook's option names),
    or why it cannot. A change without data (a truncate) or whose image is not an object nests
    nothing; neither does a table without the column (a webhook's rules may cover tables that
    lack it)."""
    if hook is None or not hook.related:
        return [], None
    change = item.change
    text = change.new_json if change.new_json is not None else change.old_json
    if text is None:
        return [], None
    row = _row(text, [column for column, _ in hook.related])
    if row is None:
        return [], None  # rendering says why it cannot read the change
    entries: list[Entry] = []
    for column, columns in hook.related:
        if column not in row:
            continue
        name = related_name(column)
        value = row[column]
        if value is None:
            entries.append((name, None, None))
            continue
        key = key_text(value)
        if key is None:
            return [], f"related: {column!r} holds {type(value).__name__}, not a key to look up"
        entries.append((name, Lookup(change.table_key, column, name, columns), key))
    return entries, None


def _row(text: str, keys: list[str]) -> dict[str, Any] | None:
    """The image as an object, for its ``keys``: orjson's (a tenth of relay.model.loads'
    time), unless a key is what orjson reads inexactly (a fraction, as a float; an integer past
    64 bits fails it): then loads', exact. None when it is no JSON object."""
    try:
        row = orjson.loads(text)
        if isinstance(row, dict) and any(isinstance(row.get(key), float) for key in keys):
            row = loads(text)
    except ValueError:
        try:
            row = loads(text)
        except ValueError:
            return None
    return row if isinstance(row, dict) else None


async def attach(
    store: AsyncStore, items: list[Claimed], webhook: Callable[[int], Webhook | None]
) -> list[Claimed]:
    """``items`` with their changes' related rows (Change.related_json), each (table, foreign
    key, columns) read in one query; an item whose rows could not be read has its
    ``related_problem`` instead. Items of webhooks without the option come back as they were.
    What :data:`FOR_GOOD` holds is the reason of the deliveries that needed that query; any
    other database error raises (the session starts again)."""
    planned: list[tuple[list[Entry], str | None]] = []
    keys: dict[Lookup, dict[str, None]] = {}
    for item in items:
        entries, problem = wants(item, webhook(item.webhook_id))
        planned.append((entries, problem))
        for _, lookup, key in entries:
            if lookup is not None and key is not None:
                keys.setdefault(lookup, {})[key] = None
    if not any(entries or problem for entries, problem in planned):
        return items
    found: dict[Lookup, dict[str, str] | str] = {}
    for lookup, wanted in keys.items():
        ordered = list(wanted)
        try:
            rows = await store.related_rows(
                lookup.table, lookup.fk_column, lookup.nested_as, lookup.columns, ordered
            )
        except FOR_GOOD as exc:
            found[lookup] = _problem(exc)
        else:
            found[lookup] = {ordered[position]: row for position, row in rows.items()}
    return [
        _attached(item, entries, problem, found)
        for item, (entries, problem) in zip(items, planned, strict=True)
    ]


def _attached(
    item: Claimed,
    entries: list[Entry],
    problem: str | None,
    found: dict[Lookup, dict[str, str] | str],
) -> Claimed:
    if problem is not None:
        return dataclasses.replace(item, related_problem=reason(problem))
    if not entries:
        return item
    nested: dict[str, orjson.Fragment | None] = {}
    for name, lookup, key in entries:
        if lookup is None or key is None:
            nested[name] = None
            continue
        rows = found[lookup]
        if isinstance(rows, str):
            return dataclasses.replace(item, related_problem=rows)
        row = rows.get(key)
        nested[name] = None if row is None else orjson.Fragment(row)
    change = dataclasses.replace(item.change, related_json=orjson.dumps(nested).decode())
    return dataclasses.replace(item, change=change)


def _problem(exc: psycopg.Error) -> str:
    """A failed lookup's one-line reason: relay.related_rows' own message, which says what to do;
    a function the service role may not run means sql/service_role.sql was not run again."""
    message = exc.diag.message_primary or str(exc)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "function" in message:
        message += " (run sql/service_role.sql again as relay's owner: docs/operations.md)"
    return reason(message if message.startswith("related") else f"related: {message}")

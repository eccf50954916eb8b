"""What ``relay rules check`` says of conditions' paths, held against the tracked tables' columns.

A path that no column can satisfy is not an error: evaluation takes it (it is well formed) and
the condition is simply false for every change, so the rule sends nothing and nobody is told.
These warnings say so before that happens, naming the rule, the path, the table and what to
write instead. They know the database's columns only: a path into a json, composite or array
column goes unchecked past the column, and a table not tracked (yet) is not looked at.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relay.rules import conditions
from relay.rules.ruleset import Problem, Rule, table_key
from relay.store import ColumnRow


@dataclass(frozen=True)
class Column:
    """A tracked table's column, as a condition's path meets it."""

    name: str
    type: str
    scalar: bool
    """A plain JSON scalar: only NetBox's last ``.value`` goes past it."""
    excluded: bool
    """Left out of the images (exclude_columns)."""


Tables = Mapping[tuple[str, str], Mapping[str, Column]]
"""Each tracked table's columns by name, keyed by (schema, table)."""

MEANINGS = {
    "event": "the change's event",
    "timestamp": "when the change was made",
    "model": "the model name",
    "object_type": "the object type",
    "username": "who made the change",
    "request_id": "the change's request id",
    "request": "the request",
    "data": "the row",
    "snapshots": "the row's images",
    "id": "relay's change id",
    "pk": "the primary key",
    "txid": "the transaction id",
    "action_data": "the rule's action_data",
}
"""What each context name means, for a path that takes it where a column of that name was meant."""
assert set(MEANINGS) == conditions.CONTEXT_KEYS

SERIALIZER_ONLY = {
    "url": "the object's API URL",
    "display_url": "the object's web URL",
    "display": "the object's display text",
    "tags": "NetBox keeps tags in a many-to-many table",
    "custom_fields": "the database holds them as custom_field_data",
}
"""Fields NetBox's serializer adds to ``data`` that the row does not hold."""


def tables_of(rows: Iterable[ColumnRow]) -> Tables:
    """:data:`Tables` from ``tracked_columns`` rows."""
    tables: dict[tuple[str, str], dict[str, Column]] = defaultdict(dict)
    for row in rows:
        name = row["column_name"]
        tables[(row["schema_name"], row["table_name"])][name] = Column(
            name, row["column_type"], row["scalar"], row["excluded"]
        )
    return tables


def warnings(rules: Iterable[Rule], tables: Tables) -> list[Problem]:
    """A line for each path of each rule's conditions that leads nowhere in one of its tracked
    tables (each rule, path and table once)."""
    found: list[Problem] = []
    for rule in rules:
        seen: set[tuple[str, str, str]] = set()
        for attr, op in leaves(rule.conditions):
            for table in rule.tables:
                key = table_key(table)
                columns = tables.get(key) if key is not None else None
                if columns is None or (attr, op, table) in seen:
                    continue
                seen.add((attr, op, table))
                message = path_warning(attr, op, columns, rule.action_data)
                if message is not None:
                    found.append(Problem(f"rule {rule.name!r}", f"{attr} on {table}: {message}"))
    return found


def leaves(document: Any) -> Iterator[tuple[str, str]]:
    """Each condition's ``attr`` and ``op`` in a validated document, in order."""
    pending = [document] if document else []
    while pending:
        node = pending.pop()
        items = node.get("and") or node.get("or")
        if items is not None:
            pending.extend(reversed(items))
        else:
            yield node["attr"], node.get("op", "eq")


def path_warning(
    attr: str, op: str, columns: Mapping[str, Column], action_data: Mapping[str, Any]
) -> str | None:
    """Why ``attr`` can lead nowhere in a table with these columns, and what to write instead;
    None when it can lead somewhere (or cannot be told from the columns)."""
    parts = attr.split(".")
    if op in conditions.NO_VALUE_OPS:
        row_path = conditions.row_path(attr)
        return None if row_path is None else _steps(row_path.split("."), columns, action_data)
    first = parts[0]
    if first not in conditions.CONTEXT_KEYS:
        return _steps(parts, columns, action_data)
    if first == "data" and len(parts) > 1:
        return _steps(parts[1:], columns, action_data)
    if first == "snapshots" and len(parts) > 2 and parts[1] in ("prechange", "postchange"):
        return _steps(parts[2:], columns, action_data)
    if first in columns:
        return f"{first} is {MEANINGS[first]}, not the column {first!r}: write data.{attr}"
    return None


def _steps(
    steps: list[str], columns: Mapping[str, Column], action_data: Mapping[str, Any]
) -> str | None:
    """What :func:`path_warning` says of a path into the row, ``steps`` from its column on. A
    column exclude_columns leaves out is absent from the images, as evaluation finds it."""
    name, rest = steps[0], steps[1:]
    present = {n: column for n, column in columns.items() if not column.excluded}
    column, key = present.get(name), present.get(f"{name}_id")
    if column is not None:
        return _into(column, rest, key)
    if key is not None and rest == ["id"]:
        return None
    left_out = columns.get(name) or (columns.get(f"{name}_id") if rest == ["id"] else None)
    if left_out is not None:
        return f"the column {left_out.name!r} is left out of the changes (exclude_columns)"
    if key is not None and rest:
        return (
            f"the row holds {key.name}, not {name}'s columns: write {name}.id (or {key.name}) "
            f"for the key; {name}'s other columns are not in the captured row a condition "
            "sees (the related option nests them for templates, after matching)"
        )
    if name == "custom_fields" and "custom_field_data" in present:
        instead = ".".join(["custom_field_data", *rest])
        return f"custom_fields is NetBox's serializer's: the row holds {instead}: write {instead}"
    if name in SERIALIZER_ONLY:
        return f"{name} is NetBox's serializer's, never in the row ({SERIALIZER_ONLY[name]})"
    if name in action_data:
        return f"no column {name!r}: write action_data.{'.'.join(steps)} for the rule's action_data"
    path = ".".join(steps)
    dotted = [c for c in present if "." in c and (path == c or path.startswith(f"{c}."))]
    if dotted:
        unnamed = dotted[0]
        return f"no column {name!r}; the column {unnamed!r} cannot be named (a dot separates parts)"
    close = difflib.get_close_matches(name, [c for c in present if "." not in c], n=1)
    return f"no column {name!r}" + (f": did you mean {close[0]}?" if close else "")


def _into(column: Column, rest: list[str], key: Column | None) -> str | None:
    """What a path says past a column the images hold (``key``: its ``X_id`` column, if held)."""
    name = column.name
    if not rest or not column.scalar or rest == ["value"]:
        return None
    if rest[-1] == "label":
        return (
            "a label is NetBox's serializer's, never in the database: "
            f"write {name} (or {name}.value) and compare the value"
        )
    if rest == ["id"] and key is not None:
        return f"the column {name!r} ({column.type}) is followed, not {key.name}: write {key.name}"
    return f"the column {name!r} is {column.type}: nothing is past it but .value; write {name}"

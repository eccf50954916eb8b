"""What the console's pages are asked for in their query strings, read into typed filters or
refused with a sentence: pure, no database (tests/test_console_security.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from relay.store import DeliveryFilter

STATUSES = ("pending", "delivered", "failed")
"""A delivery's statuses (relay.delivery_status), the choices of the log's filter."""

MAX_FIELD = 1000
"""No filter value is longer: a key, a name or a table is never this long."""


@dataclass(frozen=True)
class Asked:
    """A filter, and what was wrong with the query string (shown above the log, which then
    shows nothing rather than guess)."""

    wanted: DeliveryFilter
    problem: str | None = None


def _value(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    return value or None


def delivery_filter(query: Mapping[str, str]) -> Asked:
    """The deliveries log's filter from ``webhook``, ``status``, ``table`` (``schema.table``,
    or a table in any schema), ``key`` (an object's primary key: its JSON, or the one value of
    a single-column key) and ``before`` (the page's cursor, ``outbox_id-webhook_id``)."""
    for name in ("webhook", "status", "table", "key", "before"):
        if len(query.get(name, "")) > MAX_FIELD:
            return Asked(DeliveryFilter(), f"{name}: longer than {MAX_FIELD} characters")
        if "\x00" in query.get(name, ""):
            return Asked(DeliveryFilter(), f"{name}: holds a NUL character, which no name has")
    webhook, status, table, key = (_value(query, n) for n in ("webhook", "status", "table", "key"))
    if status is not None and status not in STATUSES:
        return Asked(DeliveryFilter(), f"status: one of {', '.join(STATUSES)}, or any")
    schema = None
    if table is not None and "." in table:
        schema, table = table.split(".", 1)
        if not schema or not table:
            return Asked(DeliveryFilter(), "table: schema.table, or a table's name")
    key_json = key_text = None
    if key is not None:
        if key.startswith("{"):
            try:
                parsed = json.loads(key)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or not parsed:
                return Asked(
                    DeliveryFilter(), 'key: a JSON object of the key\'s columns ({"id": 42})'
                )
            key_json = key  # PostgreSQL reads it again, numbers with all their digits
        else:
            key_text = key
    try:
        before = cursor(query.get("before"))
    except ValueError as exc:
        return Asked(DeliveryFilter(), f"before: {exc}")
    wanted = DeliveryFilter(webhook, status, schema, table, key_json, key_text, before)
    return Asked(wanted)


BIGINT_MAX = 2**63 - 1


def cursor(text: str | None) -> tuple[int, int] | None:
    """A page's cursor, ``outbox_id-webhook_id``, or None for the first page; ValueError for
    anything else."""
    if not text:
        return None
    parts = text.split("-")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError("not a page of this log: start from the first page")
    first, second = int(parts[0]), int(parts[1])
    if first > BIGINT_MAX or second > BIGINT_MAX:
        raise ValueError("not a page of this log: start from the first page")
    return first, second


def whole_number(text: str | None) -> int | None:
    """An id from a URL or a form (1 to the largest bigint), or None."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= BIGINT_MAX else None

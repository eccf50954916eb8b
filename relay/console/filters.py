"""What the console's pages are asked for in their query strings, read into typed filters or
refused with a sentence: pure, no database (tests/unit/test_console_security.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from relay.ages import parse_since
from relay.rules.ruleset import table_key
from relay.store import DeliveryFilter

STATUSES = ("pending", "delivered", "failed")
"""A delivery's statuses (relay.delivery_status), the choices of the log's filter."""
EVENTS = ("insert", "update", "delete", "truncate", "snapshot")
"""A change's operations (relay.change_op; snapshot: a backfill's), the choices of the log's
event filter."""
FIELDS = ("webhook", "status", "table", "event", "since", "until", "key", "before", "after")
"""The query string's names the log reads; the bulk retry's forms carry them on."""

MAX_FIELD = 1000
"""No other filter value is longer: a name, a table or a time is never this long."""
MAX_KEY = 4000
"""No key is longer: a text key (a URL, a path) can pass 1000 characters, and one whose JSON
passes 2048 bytes has its SHA-256 for row key (relay/delivery/plan.py), which the log finds
too."""


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
    or a table in any schema), ``event`` (a change's operation), ``since`` and ``until`` (when
    the change was recorded: an age such as 2h, or a time, UTC unless it names its zone),
    ``key`` (an object's primary key: its JSON, or the one value of a single-column key) and
    the page's cursor, ``outbox_id-webhook_id``: ``before`` it for the log, newest first;
    ``after`` it for an object's key, oldest first."""
    for name in FIELDS:
        most = MAX_KEY if name == "key" else MAX_FIELD
        if len(query.get(name, "")) > most:
            return Asked(DeliveryFilter(), f"{name}: longer than {most} characters")
        if "\x00" in query.get(name, ""):
            return Asked(DeliveryFilter(), f"{name}: holds a NUL character, which no name has")
    webhook, status, table, event, key = (
        _value(query, n) for n in ("webhook", "status", "table", "event", "key")
    )
    if status is not None and status not in STATUSES:
        return Asked(DeliveryFilter(), f"status: one of {', '.join(STATUSES)}, or any")
    if event is not None and event not in EVENTS:
        return Asked(DeliveryFilter(), f"event: one of {', '.join(EVENTS)}, or any")
    schema = None
    if table is not None:
        named = _table(table, None)
        if named is None:
            return Asked(DeliveryFilter(), f"table: {TABLE_FORMS}, or a table's name")
        schema, table = named
    moments = {}
    for name in ("since", "until"):
        given = _value(query, name)
        try:
            moments[name] = parse_since(given) if given is not None else None
        except (ValueError, OverflowError):
            return Asked(
                DeliveryFilter(), f"{name}: an age (30m, 12h, 7d) or a time (2026-11-23T10:00)"
            )
    since, until = moments["since"], moments["until"]
    if since is not None and until is not None and until <= since:
        return Asked(DeliveryFilter(), "until: later than since, or empty")
    wanted = DeliveryFilter(
        webhook=webhook,
        status=status,
        schema=schema,
        table=table,
        event=event,
        since=since,
        until=until,
    )
    if key is not None:
        if key.startswith("{"):
            try:
                parsed = _postgres_json(key)
            except (ValueError, RecursionError):
                parsed = None
            if not isinstance(parsed, dict) or not parsed:
                return Asked(
                    DeliveryFilter(), 'key: a JSON object of the key\'s columns ({"id": 42})'
                )
            unreadable = _unreadable(parsed)
            if unreadable is not None:
                return Asked(DeliveryFilter(), f"key: {unreadable}, which no key holds")
            # PostgreSQL reads it again, numbers with all their digits.
            wanted = replace(wanted, key_json=key)
        else:
            wanted = replace(wanted, key_text=key, key_raw=key if _json_scalar(key) else None)
    name = "after" if wanted.keyed else "before"
    try:
        return Asked(replace(wanted, cursor=cursor(query.get(name))))
    except ValueError as exc:
        return Asked(DeliveryFilter(), f"{name}: {exc}")


TABLE_FORMS = 'schema.table (a part that holds a dot or a quote in double quotes: public."a.b")'
"""How a table is named, as in rules and ``relay replay --table``."""


def _table(text: str, schema: str | None) -> tuple[str | None, str] | None:
    """The (schema, table) ``text`` names as rules and ``relay replay --table`` read it
    (:func:`relay.rules.ruleset.table_key`): ``schema.table``, either part quoted when it holds
    a dot or a quote; or a table's name alone (quoted likewise), in ``schema``. None for
    neither."""
    qualified = table_key(text)
    if qualified is not None:
        return qualified
    alone = table_key(f"public.{text}")
    return None if alone is None else (schema, alone[1])


def _json_scalar(text: str) -> bool:
    """Whether ``text`` is a JSON number, true, false or null that PostgreSQL's jsonb reads:
    how a key column of a number (or boolean) type is written in a change's key. NaN,
    Infinity and 1e999999 are not (a key of text may be them)."""
    try:
        value = _postgres_json(text)
    except (ValueError, RecursionError):
        return False
    return not isinstance(value, str | list | dict) and _unreadable(value) is None


MOST_EXPONENT = MAX_KEY
"""A number's exponent in a key, either way: PostgreSQL's numeric overflows past about 131072
digits, and no key typed in MAX_KEY characters has more."""


def _refused_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's JSON reader takes and jsonb does not."""
    raise ValueError(f"{name} is not JSON")


def _postgres_json(text: str) -> Any:
    """``text`` read as JSON as PostgreSQL's jsonb reads it: without NaN and Infinity (which
    Python's reader takes), its numbers as decimals (1e999999 is no float's inf)."""
    return json.loads(text, parse_constant=_refused_constant, parse_float=Decimal)


def _unreadable(value: Any) -> str | None:
    """What in a parsed JSON value PostgreSQL's jsonb refuses (a NUL, a lone surrogate) or its
    numeric cannot hold (an exponent past MOST_EXPONENT), or None. Walked without recursion:
    MAX_KEY characters nest 2000 deep."""
    left = [value]
    while left:
        item = left.pop()
        if isinstance(item, dict):
            left.extend(item.keys())
            left.extend(item.values())
        elif isinstance(item, list):
            left.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "a NUL character"
            if not item.isascii() and any("\ud800" <= c <= "\udfff" for c in item):
                return "a lone surrogate (\\ud800 to \\udfff)"
        elif isinstance(item, int | Decimal) and not isinstance(item, bool):
            number = Decimal(item)
            if number and abs(number.adjusted()) > MOST_EXPONENT:
                return f"a number with an exponent past ±{MOST_EXPONENT}"
    return None


REPLAY_STATUSES = ("all", "delivered", "failed")
"""Which of a webhook's changes a replay sends again, as relay replay --status: all (also those
it never had, matched against its rules as they are now), those delivered, those failed."""
REPLAY_FIELDS = ("webhook", "since", "until", "table", "status", "superseded")


@dataclass(frozen=True)
class ReplayAsked:
    """A replay, as ``relay replay``'s options give it."""

    webhook: str
    since: datetime
    until: datetime | None
    schema: str | None
    table: str | None
    status: str
    superseded: bool


@dataclass(frozen=True)
class AskedReplay:
    """A replay asked for, or what is wrong with it (``wanted`` None: not all given)."""

    wanted: ReplayAsked | None
    problem: str | None = None


def replay_filter(query: Mapping[str, str]) -> AskedReplay:
    """A replay from ``webhook``, ``since`` and ``until`` (ages or times, as relay replay
    reads them), ``table`` (schema.table, or a table of schema public), ``status`` (all,
    delivered or failed) and ``superseded`` (yes: send them too, marked)."""
    for name in REPLAY_FIELDS:
        if len(query.get(name, "")) > MAX_FIELD:
            return AskedReplay(None, f"{name}: longer than {MAX_FIELD} characters")
        if "\x00" in query.get(name, ""):
            return AskedReplay(None, f"{name}: holds a NUL character, which no name has")
    webhook, given_since = _value(query, "webhook"), _value(query, "since")
    if webhook is None or given_since is None:
        return AskedReplay(None, "Give a webhook and since when.")
    status = _value(query, "status") or "all"
    if status not in REPLAY_STATUSES:
        return AskedReplay(None, f"status: one of {', '.join(REPLAY_STATUSES)}")
    given_until = _value(query, "until")
    try:
        since = parse_since(given_since)
        until = parse_since(given_until) if given_until is not None else None
    except (ValueError, OverflowError):
        return AskedReplay(None, "since, until: an age (30m, 12h, 7d) or a time (2026-11-23T10:00)")
    if until is not None and until <= since:
        return AskedReplay(None, "until: later than since, or empty")
    schema = table = None
    given = _value(query, "table")
    if given is not None:
        named = _table(given, "public")
        if named is None:
            return AskedReplay(None, f"table: {TABLE_FORMS}, or a table of schema public")
        schema, table = named
    superseded = query.get("superseded") == "yes"
    return AskedReplay(ReplayAsked(webhook, since, until, schema, table, status, superseded))


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

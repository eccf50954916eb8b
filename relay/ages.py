"""Reading the times and ages operators type: ``30m``, ``12h``, ``7d``, ``2w`` or a timestamp."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


LONGEST = timedelta(days=36_500)
"""The oldest an age may reach back: a century, as RELAY_RETENTION_DAYS. Longer ones would take
PostgreSQL's now() - interval out of its range ("timestamp out of range")."""


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w``, at most :data:`LONGEST`."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30m, 12h, 7d or 2w")
    try:
        age = timedelta(**{_UNITS[match[2]]: float(match[1])})
    except OverflowError:
        age = LONGEST * 2
    if age > LONGEST:
        raise ValueError(f"{text!r} is longer than an age may be: at most 36500d (100 years)")
    return age


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An age back from now (``2h``) or an ISO 8601 time (UTC when it names no zone)."""
    if _AGE.match(text):
        return (now or datetime.now(UTC)) - parse_age(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (30m, 12h, 7d) nor a time (2026-11-23T10:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

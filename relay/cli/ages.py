"""Reading the times and ages operators type: ``30m``, ``12h``, ``7d``, ``2w`` or a timestamp."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w``."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30m, 12h, 7d or 2w")
    try:
        return timedelta(**{_UNITS[match[2]]: float(match[1])})
    except OverflowError:
        raise ValueError(f"{text!r} is longer than an age can be") from None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An age back from now (``2h``) or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return (now or datetime.now(UTC)) - parse_age(text)
    except OverflowError:
        raise ValueError(f"{text!r} reaches back before the year 1") from None
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (30m, 12h, 7d) nor a time (2026-11-23T10:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""How the console's pages write ages, times and what came from elsewhere: pure, for the
templates' filters (tests/test_console_security.py)."""

from __future__ import annotations

from datetime import datetime

from relay.reasons import reason, scrub, url_shown


def age(seconds: float | None) -> str:
    """An age to read at a glance, as ``relay status`` writes it: 4.2 s, 12 min, 3.5 h, 2.0 d;
    - for none."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def when(moment: datetime | None) -> str:
    """A time to the second, in the database's time zone as it gave it (with its offset)."""
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S %z").strip()


def reason_shown(text: str | None) -> str:
    """A recorded reason as ``relay status`` shows it: masked again (an older relay may have
    recorded it unmasked), one line."""
    return "-" if text is None else reason(text)


def excerpt_shown(text: str | None) -> str:
    """A response body's excerpt with URLs cut to their origin and known secrets masked (a
    receiver may echo a token back); its lines kept."""
    return "" if text is None else scrub(text)


def url(text: str) -> str:
    """A webhook's URL with its user part and query values masked (``relay webhook list``)."""
    return url_shown(text)

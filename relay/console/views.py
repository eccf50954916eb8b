"""How the console's pages write ages, times and what came from elsewhere: pure, for the
templates' filters (tests/unit/test_console_security.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    """A response body's excerpt with URLs cut to their origin; its lines kept. A receiver
    may echo a token back: the relay masked the secrets it knew when it recorded the excerpt
    (relay/delivery/send.py), for the console knows none."""
    return "" if text is None else scrub(text)


@dataclass(frozen=True)
class Exchange:
    """What an attempt kept of its request as sent and of the response's headers, as the
    delivery page lays it out; ``kept`` False when RELAY_ATTEMPT_DETAILS kept nothing."""

    kept: bool
    method: str = ""
    url: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    body_bytes: int = 0
    body_cut: bool = False
    answered: bool = False
    """A response came (its headers were kept)."""
    response_headers: list[tuple[str, str]] = field(default_factory=list)


def exchange(text: str | None) -> Exchange:
    """An attempt's ``details`` (JSON text, relay/delivery/details.py) for the page. Whatever
    its shape (another release may have written it), nothing here raises: what is missing or
    of the wrong type shows as empty."""
    try:
        found = json.loads(text) if text else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        return Exchange(kept=False)
    request = _object(found.get("request"))
    response = found.get("response")
    size = request.get("body_bytes")
    return Exchange(
        kept=True,
        method=_string(request.get("method")),
        url=_string(request.get("url")),
        request_headers=_pairs(request.get("headers")),
        body=_string(request.get("body")),
        body_bytes=size if isinstance(size, int) else 0,
        body_cut=request.get("body_cut") is True,
        answered=isinstance(response, dict),
        response_headers=_pairs(_object(response).get("headers")),
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _pairs(value: Any) -> list[tuple[str, str]]:
    """Headers as ``[name, value]`` pairs; anything else is left out."""
    if not isinstance(value, list):
        return []
    return [
        (pair[0], pair[1])
        for pair in value
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
    ]


def url(text: str) -> str:
    """A webhook's URL with its user part and query values masked (``relay webhook list``)."""
    return url_shown(text)

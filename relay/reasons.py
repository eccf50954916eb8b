"""One-line reasons: what the relay records and logs when something about one change fails."""

from __future__ import annotations

import re
from collections.abc import Iterable

from relay.db import first_line

MAX_CHARS = 500
"""A reason is read in `relay status` and in a table cell: longer ones are cut."""
MASK = "******"
MIN_SECRET = 6
"""Shorter values are not masked: they are no credential, and masking every "s" of a message
would make it unreadable."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def reason(text: str) -> str:
    """``text`` as one line that any database column and log line can hold: control
    characters (line breaks, NUL) become a space, lone surrogates a '?', and the whole is at
    most MAX_CHARS characters."""
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 1] + "…"
    text = _CONTROL.sub(" ", text).strip()
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def describe(exc: BaseException) -> str:
    """An unexpected exception in one line: its type, then the first line of its message (a
    message that cannot even be turned into text is left out)."""
    try:
        message = first_line(exc)
    except Exception:
        message = ""
    name = type(exc).__name__
    return reason(f"{name}: {message}" if message and message != name else name)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (of MIN_SECRET characters or more) masked: for
    messages of unknown origin, which might quote a secret they were handed."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return text

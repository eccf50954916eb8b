"""What an attempt keeps of the request as sent and of the response's headers
(RELAY_ATTEMPT_DETAILS), with every credential masked.

The delivery page shows them to whoever may read deliveries, so nothing kept may let a reader
sign a request or call the endpoint as relay does: the value of a signature header
(X-Hook-Signature, webhook-signature: computed with the webhook's secret), of Authorization,
Proxy-Authorization, Cookie and Set-Cookie, of any header whose name says it is a credential
(:func:`relay.reasons.sensitive`), and of any header whose value holds one of the attempt's
secrets (the webhook's secret, its URL's password, values templates read with ``env``...) is
kept as ``******``, whole. The URL keeps its path but not its user part, its query values nor
its fragment (:func:`relay.reasons.url_shown`), and a secret in its path is masked (one read
with ``env`` too); the body excerpt has those secrets masked wherever they stand and its
URLs shown by their origin, as a response's excerpt is. Everything is text a database column
and a JSON document can hold (no NUL, no lone surrogate).

Pure: no database, no network (tests/unit/test_attempt_details.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from relay.reasons import MASK, MIN_SECRET, longest, masked, scrub, sensitive, url_shown

Keep = Literal["failed", "all", "none"]
"""RELAY_ATTEMPT_DETAILS: which attempts keep their request and response headers."""

BODY_BYTES = 4096
"""The request body kept per attempt: its start, and how long it was in all."""
HEADER_CHARS = 2048
"""A header value longer than this is cut (a receiver can answer with any)."""
MOST_HEADERS = 64
"""Headers kept per request or response, in their order; the count left out is said."""
MASKED_NAMES = frozenset(
    {
        "x-hook-signature",
        "webhook-signature",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    }
)
"""Headers kept masked whatever their value (the names are checked without case)."""


def kept(keep: Keep, *, ok: bool) -> bool:
    """Whether an attempt that ended ``ok`` (or not) keeps its details under ``keep``: a
    success keeps them only with ``all``, so that the default costs a delivered attempt
    nothing."""
    if keep == "all":
        return True
    return keep == "failed" and not ok


def _text(value: str) -> str:
    """``value`` as jsonb and a text column hold it: no NUL, no lone surrogate."""
    value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def masked_value(name: str, value: str, secrets: Sequence[str]) -> str:
    """One header's value as kept: ``******`` for a credential or a signature, or for a value
    that holds a secret; otherwise the value with URLs and secrets the process knows scrubbed
    (:func:`relay.reasons.scrub`), cut at HEADER_CHARS."""
    lowered = name.lower()
    if lowered in MASKED_NAMES or sensitive(lowered):
        return MASK
    if any(len(secret) >= MIN_SECRET and secret in value for secret in secrets):
        return MASK
    shown = scrub(value)
    if MASK in shown:  # a secret the process knows: the whole value, as for the attempt's own
        return MASK
    if len(shown) > HEADER_CHARS:
        shown = shown[: HEADER_CHARS - 1] + "…"
    return _text(shown)


def masked_headers(headers: Iterable[tuple[str, str]], secrets: Sequence[str]) -> list[list[str]]:
    """Headers as kept: ``[name, value]`` pairs in their order (a response may repeat a name),
    at most MOST_HEADERS, each value masked by :func:`masked_value`; a last pair
    ``["…", "N more not kept"]`` says how many were left out."""
    pairs = list(headers)
    shown = [
        [_text(name[:200]), masked_value(name, value, secrets)]
        for name, value in pairs[:MOST_HEADERS]
    ]
    if len(pairs) > MOST_HEADERS:
        shown.append(["…", f"{len(pairs) - MOST_HEADERS} more not kept"])
    return shown


def body_excerpt(body: bytes, secrets: Sequence[str]) -> str:
    """The body's first BODY_BYTES as text, its secrets masked: masked before it is cut, so
    that a secret across the cut leaves no part of itself. Masking shortens the text, so the
    start masked is made long enough that what is kept ends well before it does: else a body
    of secrets would bring into view the part of one cut by the end of that start."""
    reach = 4 * longest(secrets) + 64  # a character is up to 4 bytes; a URL's origin, "/…" more
    start = 2 * BODY_BYTES
    while True:
        head = scrub(body[:start].decode("utf-8", errors="replace"), secrets).encode("utf-8")
        if start >= len(body) or len(head) >= BODY_BYTES + reach:
            break
        start *= 2
    return _text(head[:BODY_BYTES].decode("utf-8", errors="ignore"))


def request_details(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
) -> dict[str, Any]:
    """The request as sent, as an attempt keeps it: method, URL (user part and query values
    masked), headers masked, the body's start and whether it was cut."""
    return {
        "method": _text(method[:20]),
        "url": _text(masked(url_shown(url), secrets)),
        "headers": masked_headers(headers.items(), secrets),
        "body": body_excerpt(body, secrets),
        "body_bytes": len(body),
        "body_cut": len(body) > BODY_BYTES,
    }

"""One-line reasons, and the one path by which anything relay did not write itself reaches a
recorded reason, a log line or a command's output.

That path (:func:`scrub`, and :func:`reason` for what is recorded) shows a URL by its origin
alone (``https://hooks.example/…``: a token can live in the user part, the query or the path, as
Slack's and Discord's do) and masks every secret it is given and every secret the process knows
(:class:`Secrets`, see :func:`masking`). Commands that show a webhook's own URL use
:func:`url_shown`, which keeps the path (it is what tells endpoints apart) but masks the user
part and every query value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import urlsplit

from relay.db import first_line

MAX_CHARS = 500
"""A reason is read in `relay status` and in a table cell: longer ones are cut."""
MASK = "******"
MIN_SECRET = 6
"""Shorter values are not masked: they are no credential, and masking every "s" of a message
would make it unreadable."""
SENSITIVE_NAMES = ("auth", "token", "key", "secret", "signature", "sig", "cookie", "pass", "pwd")
"""Words in a header's or a query parameter's name that say its value is a credential."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s'\"<>`]*")
"""A URL inside free text, up to the first space or quote (what ends one in every message
seen: aiohttp's ``url='...'``, yarl's ``URL('...')``, a Location header)."""
_REST = re.compile(r"[/?#@;\\]")
_USERINFO = re.compile(r"^[^/?#@]*@")


def sensitive(name: str) -> bool:
    """Whether a header or query parameter named ``name`` carries a credential."""
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_NAMES)


def url_origin(url: str) -> str:
    """``url`` as a reason or a log line may show it: scheme, host and port (``https://h:8443``),
    then ``/…`` when it has more. Without a host: the scheme (``ftp:…``), or the text up to the
    first ``/ ? # @ ;`` (a path or a query is never shown)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracket that opens an IPv6 address and never closes
        parts = urlsplit("")
    if parts.netloc:
        host = parts.netloc.rpartition("@")[2]
        shown = f"{parts.scheme}://{host}" if parts.scheme else f"//{host}"
        more = parts.path not in ("", "/") or parts.query or parts.fragment
        return f"{shown}/…" if more else shown
    if parts.scheme:
        return f"{parts.scheme}:…"
    head = _REST.split(url, maxsplit=1)[0]
    return head if head == url else f"{head}…"


def url_shown(url: str) -> str:
    """A webhook's URL (or URL template) as a command shows it: path kept, the user part
    (``user:password@``: a token is often the user name), every query value and the fragment
    masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url_origin(url)
    if not parts.netloc:  # not a URL ("user:password@host" reads as scheme "user")
        return _USERINFO.sub(f"{MASK}@", url, count=1)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{part.partition('=')[0]}={MASK}" if part else part for part in parts.query.split("&")
    )
    fragment = MASK if parts.fragment else ""  # never sent; a token is often kept there
    return parts._replace(netloc=netloc, query=query, fragment=fragment).geturl()


class Secrets:
    """The secrets one process knows (the webhooks' secrets, a URL's password, values templates
    may read with ``env``...), by where they come from: each source is replaced whole when it
    changes (rules reloaded), so a removed webhook's secret is no longer searched for."""

    def __init__(self) -> None:
        self._by_source: dict[str, frozenset[str]] = {}
        self._pattern: re.Pattern[str] | None = None
        self.longest = 0
        """The length of the longest secret known."""
        self._seen: dict[str, str] = {}
        """Masked texts by text: log lines repeat the same names and words."""

    def update(self, source: str, values: Iterable[str]) -> None:
        """Know ``values`` (of MIN_SECRET characters or more) as the secrets of ``source``."""
        kept = frozenset(value for value in values if len(value) >= MIN_SECRET)
        if self._by_source.get(source) == kept:
            return
        self._by_source[source] = kept
        every = sorted(set().union(*self._by_source.values()), key=len, reverse=True)
        self.longest = len(every[0]) if every else 0
        self._pattern = re.compile("|".join(map(re.escape, every))) if every else None
        self._seen = {}

    def mask(self, text: str) -> str:
        """``text`` with every known secret masked."""
        if self._pattern is None or len(text) < MIN_SECRET:
            return text
        masked = self._seen.get(text)
        if masked is None:
            masked = self._pattern.sub(MASK, text)
            if len(text) <= 200:
                if len(self._seen) > 4096:
                    self._seen = {}
                self._seen[text] = masked
        return masked


_known: ContextVar[Secrets | None] = ContextVar("relay_known_secrets", default=None)


@contextmanager
def masking(secrets: Secrets) -> Iterator[Secrets]:
    """Within this block (and in every task started in it), :func:`scrub` and :func:`reason`
    also mask ``secrets``: ``relay run``'s worker holds one for its whole run, so a message of
    unknown origin in any of its stages cannot carry a webhook's secret to a log line or a
    recorded reason."""
    token = _known.set(secrets)
    try:
        yield secrets
    finally:
        _known.reset(token)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (of MIN_SECRET characters or more) masked: for
    messages of unknown origin, which might quote a secret they were handed."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return text


def masked(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets`` and those the process knows (:func:`masking`) masked, its URLs
    left whole: for a URL shown with its path (:func:`url_shown`), where a template may have put
    a value read with ``env``."""
    if secrets:
        text = redact(text, secrets)
    known = _known.get()
    if known is not None:
        text = known.mask(text)
    return text


def longest(secrets: Iterable[str] = ()) -> int:
    """The length of the longest of ``secrets`` and of those the process knows that
    :func:`masked` looks for: how far back from the end of a text cut short a secret it cut
    can start."""
    known = _known.get()
    given = [len(secret) for secret in secrets if len(secret) >= MIN_SECRET]
    return max([*given, known.longest if known is not None else 0])


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it shown by its origin (:func:`url_origin`), and ``secrets``
    and those the process knows (:func:`masking`) masked: what every log field and every value
    a command shows from elsewhere goes through."""
    text = masked(text, secrets)
    if "://" in text:
        text = _URL.sub(lambda m: url_origin(m.group()), text)
    return text


def reason(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` as a recorded reason: :func:`scrub`-bed, then one line that any database column
    and log line can hold (control characters such as line breaks and NUL become a space, lone
    surrogates a '?'), of at most MAX_CHARS characters."""
    text = scrub(text, secrets)
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 1] + "…"
    text = _CONTROL.sub(" ", text).strip()
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """An unexpected exception as a reason: its type, then the first line of its message (a
    message that cannot even be turned into text is left out)."""
    try:
        message = first_line(exc)
    except Exception:
        message = ""
    name = type(exc).__name__
    return reason(f"{name}: {message}" if message and message != name else name, secrets)

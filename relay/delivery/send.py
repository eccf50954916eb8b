"""Sending a rendered request and saying, in words, what happened.

One :class:`Sender` holds one aiohttp session (keep-alive connection pools per host) for the
whole process. Proxies come from ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as read when the
Sender starts; we pick them ourselves rather than with aiohttp's ``trust_env``, which also
looks up ``~/.netrc`` for every request (in a thread: over half the relay's CPU time at load)
and would send credentials from it that nobody configured for a webhook. Redirects are never
followed. Only the first 4 KB of a response are read, whatever its size. Nothing here raises:
every attempt ends in an :class:`Outcome`, whose ``error`` is a reason (relay/reasons.py): it
names the host, never a full URL (whose user part, path or query may carry a token), nor a
secret, and never quotes the HTTP client's own message where that holds the URL. A request that
cannot be made at all (a header or URL that the HTTP client refuses) fails for good; an
exception nobody foresaw is retried like a network error, since relay cannot know that it will
happen again. Once a response's status has arrived, it decides the outcome: a body that cannot
be read (a broken gzip stream, a connection closed half way) is said in the excerpt, and a 2xx
stays delivered. A body over the limit is never sent, so no receiver ever gets part of one.
An attempt keeps the request as sent and the response's headers, masked, when
RELAY_ATTEMPT_DETAILS says so (relay/delivery/details.py): by default only a failed one, so that
a delivered attempt costs what it did before.
"""

from __future__ import annotations

import os
import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass

import aiohttp
import yarl
from pydantic import ByteSize

from relay.db import first_line
from relay.delivery import details, tls
from relay.model import Request, Webhook
from relay.reasons import describe, masked, reason, url_origin
from relay.render.request import secrets_of

EXCERPT_BYTES = 4096
_SECONDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Proxy:
    """The proxy for one origin, taken from the environment when the Sender started, with the
    credentials of its URL moved into a header."""

    url: str
    headers: dict[str, str] | None
    """Proxy-Authorization, from credentials in the proxy's URL."""


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. ``status`` is None when no response came; ``error`` says why in words,
    naming the host but never the URL or a secret."""

    ok: bool
    status: int | None
    duration: float
    error: str | None = None
    excerpt: str = ""
    retry_after: float | None = None
    """Seconds the receiver asked us to wait (429 or 503 with Retry-After)."""
    permanent: bool = False
    """Retrying cannot help (410 Gone): fail the delivery now."""
    sent: bool = True
    """False when the request never left (a template or rule problem on our side)."""
    details: dict[str, Any] | None = None
    """The request as sent and the response's headers, masked (relay/delivery/details.py),
    when RELAY_ATTEMPT_DETAILS keeps them for this attempt."""

    @classmethod
    def not_sent(cls, error: str, *, permanent: bool) -> Outcome:
        """The request never left: a problem on our side, not the receiver's."""
        return cls(False, None, 0.0, error, permanent=permanent, sent=False)


def over_limit(what: str, size: int, limit: int) -> str:
    """Why a change or body is not sent: one line with both sizes."""
    return (
        f"{what} of {ByteSize(size).human_readable()} is over RELAY_MAX_BODY_BYTES"
        f" ({ByteSize(limit).human_readable()})"
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds (ASCII digits only: ``str.isdigit`` also takes "²", which
    no number parser reads) or an HTTP date; None when absent or anything else, and then the
    retry policy alone decides. Never raises: the receiver's answer must stay an outcome."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)  # a number too large for a float is inf, which the policy caps
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": UTC, with no claim about the sender's zone
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (now if now is not None else time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return max(0.0, seconds)


class Sender:
    """Sends rendered requests for the whole process on one aiohttp session; use it as an async
    context manager. A body over ``max_body_bytes`` is never sent. ``keep`` says which
    attempts keep their details (RELAY_ATTEMPT_DETAILS)."""

    def __init__(self, max_body_bytes: int | None = None, keep: details.Keep = "none") -> None:
        self.max_body_bytes = max_body_bytes
        self.keep = keep
        self._session: aiohttp.ClientSession | None = None
        self._proxies = getproxies_environment()
        self._proxy_by_origin: dict[tuple[str, str], Proxy | None] = {}

    async def __aenter__(self) -> Sender:
        self._session = aiohttp.ClientSession(
            # No pool limit of its own: the worker bounds requests per webhook.
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            trust_env=False,
            auto_decompress=True,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self, request: Request, webhook: Webhook, within: float | None = None
    ) -> Outcome:
        """Send ``request`` with ``webhook``'s timeout and TLS settings, and within ``within``
        seconds when that is shorter (what is left of the delivery's lease). Never raises:
        every failure, ours or the receiver's, comes back as an :class:`Outcome`."""
        assert self._session is not None, "use Sender as an async context manager"
        if self.max_body_bytes is not None and len(request.body) > self.max_body_bytes:
            error = over_limit("body", len(request.body), self.max_body_bytes)
            return Outcome(
                ok=False, status=None, duration=0.0, error=error, permanent=True, sent=False
            )
        url = urlsplit(request.url)
        host = url.netloc.rpartition("@")[2]  # never the user:password@ part
        attempt = _Attempt(host, webhook, request, self.keep)
        try:
            verify = tls.context(webhook, url.scheme)
        except tls.CAFileProblem as exc:
            # The file can be fixed on disk (it is read again when it changes): retried.
            return attempt.not_made(str(exc), permanent=False)
        proxy = self.proxy(url.scheme, url.hostname or "")
        headers, proxy_headers = request.headers, None
        if proxy and proxy.headers:
            # Plain HTTP: the proxy reads the request itself. HTTPS: only the CONNECT is the
            # proxy's; the tunnelled request must not carry its credentials to the receiver.
            if url.scheme == "https":
                proxy_headers = proxy.headers
            else:
                headers = {**headers, **proxy.headers}
        attempt.headers = headers
        timeout = float(webhook.timeout_seconds)
        cut = ""
        if within is not None and within < timeout:
            timeout = max(within, 0.001)
            cut = " (the end of its lease: keep RELAY_LEASE_SECONDS above twice the timeout)"
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                ssl=verify,
                timeout=aiohttp.ClientTimeout(total=timeout),
                proxy=proxy.url if proxy else None,
                proxy_headers=proxy_headers,
            ) as response:
                # The receiver has answered: whatever happens to its body, the status decides.
                raw, unread = await _excerpt(response, timeout)
                return attempt.judge(response, raw, unread)
        except TimeoutError:
            shown = f"{timeout:.3g}" if cut else f"{timeout:g}"
            return attempt.failed(f"no response from {host} within {shown} s{cut}")
        except aiohttp.ClientConnectorCertificateError as exc:
            return attempt.failed(
                f"TLS certificate of {host} not trusted: {_reason(exc.certificate_error)}"
            )
        except aiohttp.ClientSSLError as exc:
            return attempt.failed(f"TLS with {host} failed: {_reason(exc)}")
        except aiohttp.ClientConnectorDNSError as exc:
            return attempt.failed(f"cannot resolve host {host}: {_reason(exc.os_error)}")
        except aiohttp.ClientConnectorError as exc:
            return attempt.failed(f"cannot connect to {host}: {_reason(exc.os_error)}")
        except aiohttp.ServerDisconnectedError:
            return attempt.failed(f"{host} closed the connection without answering")
        except aiohttp.ClientHttpProxyError as exc:
            where = url_origin(proxy.url) if proxy else "the proxy"
            return attempt.failed(f"proxy {where} refused: {exc.status} {_words(exc)}".rstrip())
        except aiohttp.ClientResponseError as exc:  # the parser's: its status is no HTTP status
            return attempt.failed(f"the response from {host} cannot be read: {_words(exc)}")
        except aiohttp.InvalidURL as exc:  # its text is the whole URL
            why = f"the URL cannot be used: {exc.description or 'invalid'}"
            return attempt.not_made(why, permanent=True)
        except aiohttp.ClientError as exc:
            return attempt.failed(f"request to {host} failed: {_words(exc)}")
        except OSError as exc:
            return attempt.failed(f"request to {host} failed: {_reason(exc)}")
        except (ValueError, TypeError) as exc:  # e.g. a header the client refuses to write
            return attempt.not_made(describe(exc), permanent=True)
        except Exception as exc:
            return attempt.not_made(f"unexpected {describe(exc)}", permanent=False)

    def proxy(self, scheme: str, hostname: str) -> Proxy | None:
        """The proxy for requests to ``scheme://hostname``, or None to connect directly."""
        origin = (scheme, hostname)
        if origin not in self._proxy_by_origin:
            address = self._proxies.get(scheme)
            if not address or proxy_bypass(hostname):
                self._proxy_by_origin[origin] = None
            else:
                parsed = yarl.URL(address if "://" in address else f"http://{address}")
                auth = aiohttp.BasicAuth.from_url(parsed)
                self._proxy_by_origin[origin] = Proxy(
                    str(parsed.with_user(None)),
                    {"Proxy-Authorization": auth.encode()} if auth else None,
                )
        return self._proxy_by_origin[origin]


class _Attempt:
    """One attempt's reasons: each names ``host`` and masks the webhook's secrets and the
    credentials of the request rendered for it (found only when a reason is made: most
    attempts need none)."""

    def __init__(self, host: str, webhook: Webhook, request: Request, keep: details.Keep) -> None:
        self.host = host
        self.webhook = webhook
        self.request = request
        self.keep = keep
        self.headers = request.headers
        """The headers as sent (with a plain HTTP proxy's credentials)."""
        self.started = time.monotonic()

    def _took(self) -> float:
        return time.monotonic() - self.started

    def failed(self, why: str) -> Outcome:
        """No answer: a network or TLS failure, or a response that could not be read."""
        return Outcome(
            ok=False,
            status=None,
            duration=self._took(),
            error=self._said(why),
            details=self._details(None),
        )

    def not_made(self, why: str, *, permanent: bool) -> Outcome:
        """Our side could not make the request: not the receiver's failure (the circuit
        breaker does not count it)."""
        return Outcome(
            ok=False,
            status=None,
            duration=self._took(),
            error=self._said(f"request to {self.host} could not be made: {why}"),
            permanent=permanent,
            sent=False,
            details=self._details(None),
        )

    def judge(self, response: aiohttp.ClientResponse, raw: bytes, unread: str | None) -> Outcome:
        """The receiver's status decides; ``unread`` says why its body could not be read."""
        status = response.status
        # Text columns cannot hold NUL: a binary body keeps the rest of its excerpt.
        excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "")
        if unread is not None:
            excerpt = f"{excerpt}(relay could not read the body: {self._said(unread)})"
        if 200 <= status < 300:
            took = self._took()
            kept = self._details(response, ok=True) if self.keep == "all" else None
            # A receiver may echo a credential back: the secrets the process knows (webhooks'
            # and env's, a lookup it caches) are masked; the rendered request's own only when
            # it failed, as its reason is (finding them costs a delivered attempt 50 µs).
            excerpt = masked(excerpt)
            return Outcome(ok=True, status=status, duration=took, excerpt=excerpt, details=kept)
        if 300 <= status < 400:
            error = f"HTTP {status}: redirect to {_target(response)} not followed"
        else:
            error = f"HTTP {status} {response.reason or ''}".rstrip()
        retry_after = None
        if status in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return Outcome(
            ok=False,
            status=status,
            duration=self._took(),
            error=self._said(error),
            excerpt=masked(excerpt, secrets_of(self.webhook, self.request)),
            retry_after=retry_after,
            permanent=status == 410,
            details=self._details(response),
        )

    def _said(self, why: str) -> str:
        return reason(why, secrets_of(self.webhook, self.request))

    def _details(
        self, response: aiohttp.ClientResponse | None, *, ok: bool = False
    ) -> dict[str, Any] | None:
        """The request as sent and the response's headers (None when no response came),
        masked, if RELAY_ATTEMPT_DETAILS keeps them for this attempt."""
        if not details.kept(self.keep, ok=ok):
            return None
        secrets = secrets_of(self.webhook, self.request)
        request = self.request
        kept: dict[str, Any] = {
            "request": details.request_details(
                request.method, request.url, self.headers, request.body, secrets
            )
        }
        if response is not None:
            headers = details.masked_headers(response.headers.items(), secrets)
            kept["response"] = {"headers": headers}
        return kept


async def _excerpt(response: aiohttp.ClientResponse, timeout: float) -> tuple[bytes, str | None]:
    """The first EXCERPT_BYTES of the body, and why the rest of it (or all of it) could not be
    read, None when it could."""
    try:
        return await response.content.read(EXCERPT_BYTES), None
    except TimeoutError:
        return b"", f"not within {timeout:g} s"
    except aiohttp.ClientError as exc:
        return b"", _words(exc)
    except (OSError, ValueError) as exc:
        return b"", _reason(exc)


def _target(response: aiohttp.ClientResponse) -> str:
    """Where a redirect points, by scheme and host alone: a Location can carry a token in its
    path or query (a Slack-style URL)."""
    location = response.headers.get("Location", "").strip()
    if not location:
        return "nowhere (no Location)"
    shown = url_origin(location)
    return shown if "://" in shown else "another path on the same host"


_OPENSSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")
_PARSER_PREFIX = re.compile(r"^\d{3}, message[:=]\s*")
_URL_SUFFIX = re.compile(r",\s*url=.*$", re.DOTALL)


def _words(exc: BaseException) -> str:
    """What aiohttp says went wrong, without what misleads or leaks in its text: the code its
    parser puts first (400 for any malformed response: nobody sent a 400) and the URL it adds
    after (with its query)."""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    text = _URL_SUFFIX.sub("", _PARSER_PREFIX.sub("", text.strip()))
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line.strip("^ ")) or type(exc).__name__


def _reason(exc: BaseException | Any) -> str:
    """The cause in words: an OS error by its name ("Connection refused", not "[Errno 111]
    Connect call failed ('127.0.0.1', 9)"), a TLS error by OpenSSL's words (its errno is
    OpenSSL's, which the system calls "Unknown error 136")."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ssl.SSLError):
        return _OPENSSL_SOURCE.sub("", first_line(exc))
    if isinstance(exc, OSError) and exc.errno:
        # A resolver's errors are negative, with their words in strerror.
        return os.strerror(exc.errno) if exc.errno > 0 else str(exc.strerror or exc)
    return first_line(exc)[:300]

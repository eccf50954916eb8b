"""Sending a rendered request and saying, in words, what happened.

One :class:`Sender` holds one aiohttp session (keep-alive connection pools per host) for the
whole process. Proxies come from ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as read when the
Sender starts; we pick them ourselves rather than with aiohttp's ``trust_env``, which also
looks up ``~/.netrc`` for every request (in a thread: over half the relay's CPU time at load)
and would send credentials from it that nobody configured for a webhook. Redirects are never
followed. Only the first 4 KB of a response are read, whatever its size. Nothing here raises:
every attempt ends in an :class:`Outcome`, whose ``error`` names the host, never the full URL
(whose path or query may carry a token), nor a secret. A request that cannot be made at all (a
header or URL that the HTTP client refuses) fails for good; an exception nobody foresaw is
retried like a network error, since relay cannot know that it will happen again. A body over
the limit is never sent, so no receiver ever gets part of one.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass

import aiohttp
import yarl
from pydantic import ByteSize

from relay.db import first_line
from relay.model import Request, Webhook
from relay.reasons import describe, redact

EXCERPT_BYTES = 4096


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

    @classmethod
    def not_sent(cls, error: str, *, permanent: bool) -> Outcome:
        """The request never left: a problem on our side, not the receiver's."""
        return cls(False, None, 0.0, error, permanent=permanent, sent=False)


@lru_cache(maxsize=64)
def _ssl_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def _tls(webhook: Webhook) -> ssl.SSLContext | bool:
    if not webhook.ssl_verification:
        return False
    if webhook.ca_file_path:
        return _ssl_context(webhook.ca_file_path)
    return True


def over_limit(what: str, size: int, limit: int) -> str:
    """Why a change or body is not sent: one line with both sizes."""
    return (
        f"{what} of {ByteSize(size).human_readable()} is over RELAY_MAX_BODY_BYTES"
        f" ({ByteSize(limit).human_readable()})"
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class Sender:
    """Sends rendered requests for the whole process on one aiohttp session; use it as an async
    context manager. A body over ``max_body_bytes`` is never sent."""

    def __init__(self, max_body_bytes: int | None = None) -> None:
        self.max_body_bytes = max_body_bytes
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

    async def send(self, request: Request, webhook: Webhook) -> Outcome:
        """Send ``request`` with ``webhook``'s timeout and TLS settings. Never raises: every
        failure, ours or the receiver's, comes back as an :class:`Outcome`."""
        assert self._session is not None, "use Sender as an async context manager"
        if self.max_body_bytes is not None and len(request.body) > self.max_body_bytes:
            error = over_limit("body", len(request.body), self.max_body_bytes)
            return Outcome(
                ok=False, status=None, duration=0.0, error=error, permanent=True, sent=False
            )
        url = urlsplit(request.url)
        host = url.netloc.rpartition("@")[2]  # never the user:password@ part
        proxy = self.proxy(url.scheme, url.hostname or "")
        headers, proxy_headers = request.headers, None
        if proxy and proxy.headers:
            # Plain HTTP: the proxy reads the request itself. HTTPS: only the CONNECT is the
            # proxy's; the tunnelled request must not carry its credentials to the receiver.
            if url.scheme == "https":
                proxy_headers = proxy.headers
            else:
                headers = {**headers, **proxy.headers}
        started = time.monotonic()
        timeout = float(webhook.timeout_seconds)
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                ssl=_tls(webhook),
                timeout=aiohttp.ClientTimeout(total=timeout),
                proxy=proxy.url if proxy else None,
                proxy_headers=proxy_headers,
            ) as response:
                raw = await response.content.read(EXCERPT_BYTES)
                return self._judge(response, raw, time.monotonic() - started)
        except TimeoutError:
            return self._failed(started, f"no response from {host} within {timeout:g} s")
        except aiohttp.ClientConnectorCertificateError as exc:
            return self._failed(
                started, f"TLS certificate of {host} not trusted: {exc.certificate_error}"
            )
        except aiohttp.ClientSSLError as exc:
            return self._failed(started, f"TLS with {host} failed: {_reason(exc)}")
        except aiohttp.ClientConnectorDNSError as exc:
            return self._failed(started, f"cannot resolve host {host}: {_reason(exc.os_error)}")
        except aiohttp.ClientConnectorError as exc:
            return self._failed(started, f"cannot connect to {host}: {_reason(exc.os_error)}")
        except aiohttp.ServerDisconnectedError:
            return self._failed(started, f"{host} closed the connection without answering")
        except aiohttp.InvalidURL as exc:  # its text is the whole URL
            reason = f"the URL cannot be used: {exc.description or 'invalid'}"
            return self._not_made(started, host, reason, permanent=True)
        except aiohttp.ClientError as exc:
            return self._failed(started, f"request to {host} failed: {_reason(exc)}")
        except OSError as exc:
            return self._failed(started, f"request to {host} failed: {_reason(exc)}")
        except (ValueError, TypeError) as exc:  # e.g. a header the client refuses to write
            reason = redact(describe(exc), _secrets(request, webhook))
            return self._not_made(started, host, reason, permanent=True)
        except Exception as exc:
            reason = f"unexpected {redact(describe(exc), _secrets(request, webhook))}"
            return self._not_made(started, host, reason, permanent=False)

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

    @staticmethod
    def _failed(started: float, reason: str) -> Outcome:
        return Outcome(ok=False, status=None, duration=time.monotonic() - started, error=reason)

    @staticmethod
    def _not_made(started: float, host: str, reason: str, *, permanent: bool) -> Outcome:
        """Our side could not make the request: not the receiver's failure (the circuit
        breaker does not count it)."""
        return Outcome(
            ok=False,
            status=None,
            duration=time.monotonic() - started,
            error=f"request to {host} could not be made: {reason}",
            permanent=permanent,
            sent=False,
        )

    @staticmethod
    def _judge(response: aiohttp.ClientResponse, raw: bytes, duration: float) -> Outcome:
        status = response.status
        # Text columns cannot hold NUL: a binary body keeps the rest of its excerpt.
        excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "")
        if 200 <= status < 300:
            return Outcome(ok=True, status=status, duration=duration, excerpt=excerpt)
        if 300 <= status < 400:
            location = response.headers.get("Location", "(no Location)")
            error = f"HTTP {status}: redirect to {location} not followed"
        else:
            error = f"HTTP {status} {response.reason or ''}".rstrip()
        retry_after = None
        if status in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return Outcome(
            ok=False,
            status=status,
            duration=duration,
            error=error,
            excerpt=excerpt,
            retry_after=retry_after,
            permanent=status == 410,
        )


_SENSITIVE_HEADER = ("auth", "token", "key", "secret", "signature", "cookie")


def _secrets(request: Request, webhook: Webhook) -> list[str]:
    """What an error message of unknown origin must not show: the webhook's secrets, the URL's
    password, and the values of headers whose names say they are credentials."""
    found = [line.strip() for line in webhook.secret.splitlines() if line.strip()]
    password = urlsplit(request.url).password
    if password:
        found.append(password)
    found.extend(
        value
        for name, value in request.headers.items()
        if value and any(word in name.lower() for word in _SENSITIVE_HEADER)
    )
    return found


def _reason(exc: BaseException | Any) -> str:
    """The cause in words: an OS error by its name ("Connection refused", not "[Errno 111]
    Connect call failed ('127.0.0.1', 9)")."""
    if isinstance(exc, OSError) and exc.errno:
        # A resolver's errors are negative, with their words in strerror.
        return os.strerror(exc.errno) if exc.errno > 0 else str(exc.strerror or exc)
    return first_line(exc)[:300]

"""Django: every change an HTTP request makes carries its user, its request id, path and method.

Add ``"relay.contrib.django.RelayContextMiddleware"`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware`` and after the middleware that gives the request its id, if any
(NetBox: after ``"netbox.middleware.CoreMiddleware"``). Each change then records:

- the user the request has when the change is written (``get_username()``), not the one it had
  at its first query: a user Django REST Framework authenticates inside the view (an API
  token), or one who logs in or out during the request, is the one recorded. An anonymous
  request records no user, so relay falls back to the database role;
- one request id: the application's own (``settings.RELAY_REQUEST_ID``, by default the
  request's ``id`` attribute, which NetBox sets), else the ``X-Request-ID`` header when it is
  a plain token, else a new UUID; the response's ``X-Request-ID`` names it unless the
  application sets that header itself;
- the request's path and method (``relay.request_path``, ``relay.request_method``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import structlog
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from relay.capture.tag import CLEAR, statement

__all__ = ["RelayContextMiddleware"]

log = structlog.get_logger("relay.contrib.django")

_TOKEN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
"""A request id to record: short, printable, no spaces (a UUID, a trace id)."""

Values = tuple[str | None, str, str | None, str | None]
"""What a change is tagged with: username, request id, path, method (None: no tag)."""


class RelayContextMiddleware:
    """Tags the request's changes on each PostgreSQL database (``settings.RELAY_DATABASES``,
    a list of aliases, narrows them). Django runs in autocommit, where a transaction-local
    setting would end with the statement, so the values are set for the database session and
    cleared when the response is ready. Before every query the values the request has then are
    compared with those set (attribute reads, no query), and set again when they differ, or
    when a transaction or savepoint they were set in rolled back."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.source = _request_id_source()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        context = _Context(request, self.source)
        taggers = [_Tagger(alias, context) for alias in _aliases()]
        try:
            with ExitStack() as stack:
                for tagger in taggers:
                    stack.enter_context(connections[tagger.alias].execute_wrapper(tagger))
                response = self.get_response(request)
        finally:
            for tagger in taggers:
                tagger.clear()
        if "X-Request-ID" not in response:
            response["X-Request-ID"] = context.request_id()
        return response


def _request_id_source() -> Callable[[HttpRequest], object]:
    """``settings.RELAY_REQUEST_ID``: where the application keeps its request id. A name
    without dots is a request attribute (default ``"id"``: NetBox's ``request.id``); a dotted
    path is a function of the request, called before every query, so it must be cheap; None
    leaves the header or a new UUID."""
    chosen = getattr(settings, "RELAY_REQUEST_ID", "id")
    if chosen is None:
        return lambda request: None
    if not isinstance(chosen, str) or not chosen:
        raise ImproperlyConfigured(
            "RELAY_REQUEST_ID must name a request attribute (such as 'id'), give the dotted "
            f"path of a function of the request, or be None; not {chosen!r}"
        )
    if "." not in chosen:
        return lambda request: getattr(request, chosen, None)
    try:
        found = import_string(chosen)
    except ImportError as error:
        raise ImproperlyConfigured(f"RELAY_REQUEST_ID: cannot import {chosen}: {error}") from error
    if not callable(found):
        raise ImproperlyConfigured(f"RELAY_REQUEST_ID: {chosen} is not a function of the request")
    return found  # type: ignore[no-any-return]


def _aliases() -> list[str]:
    chosen = getattr(settings, "RELAY_DATABASES", None)
    if chosen is not None:
        return list(chosen)
    return [alias for alias in connections if connections[alias].vendor == "postgresql"]


_UNSEEN = object()
"""No ``request.user`` seen yet (None is a request without one)."""


class _Context:
    """One request's values, shared by the databases it writes to. They are read before every
    query, so each is worked out again only when the object it comes from is another one:
    Django's lazy ``request.user`` costs microseconds per attribute read, and login, logout
    and Django REST Framework's authentication all put a new object there."""

    def __init__(self, request: HttpRequest, source: Callable[[HttpRequest], object]) -> None:
        self.request = request
        self.source = source
        sent = request.headers.get("X-Request-ID", "")
        self.fallback = sent if _TOKEN.fullmatch(sent) else str(uuid.uuid4())
        """The request id when the application has none (yet)."""
        self.path = _text(request.path)
        self.method = _text(request.method)
        self.user: object = _UNSEEN
        """``request.user`` last seen, and below, the name it records."""
        self.username: str | None = None
        self.found: object = None
        """The application's id last seen, and below, what it records as."""
        self.own: str | None = None

    def request_id(self) -> str:
        found = self.source(self.request)
        if found is not self.found:
            # A function may make an equal id anew at each query: checked (and logged) once.
            if type(found) is not type(self.found) or found != self.found:
                self.own = _own_id(found)
            self.found = found
        return self.own or self.fallback

    def values(self) -> Values:
        user = getattr(self.request, "user", None)
        if user is not self.user:
            self.user = user
            self.username = _username(user)
        return (self.username, self.request_id(), self.path, self.method)


def _own_id(found: object) -> str | None:
    """The application's request id as recorded: its text (a UUID's canonical form) when that
    is a plain token, else none, so the header or a new UUID stands in (logged: the
    application's logs will not name the recorded id)."""
    if found is None:
        return None
    text = str(found)
    if _TOKEN.fullmatch(text):
        return text
    log.warning(
        "request id not recorded: not a plain token of at most 200 characters",
        setting="RELAY_REQUEST_ID",
        type=type(found).__name__,
        length=len(text),
    )
    return None


class _Tagger:
    """Django's execute wrapper for one database during one request."""

    def __init__(self, alias: str, context: _Context) -> None:
        self.alias = alias
        self.context = context
        self.values: Values | None = None
        """What the session was last tagged with."""
        self.session: Any = None
        """The DB-API connection tagged, None before the first query: a reconnect is untagged."""
        self.pending: Callable[[], None] | None = None
        """Tagged inside a transaction: the on_commit callback that says it was committed.
        Django drops it when that transaction, or the savepoint it was set in, rolls back,
        which is exactly when PostgreSQL undoes the setting."""
        self.unsure = False
        """Tagged in a transaction Django does not follow (``set_autocommit(False)``, then
        ``transaction.rollback()``): set again before every query while it lasts."""
        self.busy = False

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if not self.busy:
            self.busy = True  # reading request.user may query (the session, the user row)
            try:
                values = self.context.values()
                if values != self.values or self._stale(context["connection"]):
                    self._tag(context["connection"], context["cursor"].cursor, values)
            finally:
                self.busy = False
        return execute(sql, params, many, context)

    def _stale(self, connection: Any) -> bool:
        if self.session is not connection.connection:
            return True
        if self.unsure:
            return True
        if self.pending is None:
            return False
        return not any(entry[1] is self.pending for entry in connection.run_on_commit)

    def _tag(self, connection: Any, cursor: Any, values: Values) -> None:
        username, request_id, path, method = values
        sql, params = statement(
            username, request_id, path=path, method=method, local=False, replace=True
        )
        cursor.execute(sql, params)
        self.values = values
        self.session = connection.connection
        self.pending = None
        self.unsure = not connection.in_atomic_block and not connection.get_autocommit()
        if connection.in_atomic_block:

            def committed() -> None:
                self.pending = None

            self.pending = committed
            connection.on_commit(committed)

    def clear(self) -> None:
        """Untag the session before the connection serves another request. One that cannot be
        cleared (its transaction failed, say) is closed: better a reconnect than a wrong user
        on the next request's changes."""
        connection = connections[self.alias]
        if self.session is None or connection.connection is not self.session:
            return
        try:
            with self.session.cursor() as cursor:
                cursor.execute(CLEAR)
        except Exception:  # the driver's own errors: this cursor is psycopg's, not Django's
            connection.close()


def _username(user: Any) -> str | None:
    if user is None or not user.is_authenticated:
        return None
    return _text(user.get_username())


def _text(value: object) -> str | None:
    """A value as recorded: none when empty; a NUL, which PostgreSQL cannot store, becomes
    U+FFFD (the replacement character), so the change is still made and still tagged."""
    if value is None:
        return None
    text = str(value)
    return text.replace("\x00", "\ufffd") if text else None

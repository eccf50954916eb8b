"""Django: every change an HTTP request makes carries its user and its request id.

Add ``"relay.contrib.django.RelayContextMiddleware"`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware``. Each change then records the request's user
(``get_username()``; nothing for an anonymous one, so relay falls back to the database role)
and one request id: the ``X-Request-ID`` header when it is a plain token, else a new UUID, also
sent back in the response's ``X-Request-ID``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse

from relay.capture.tag import CLEAR, statement

__all__ = ["RelayContextMiddleware"]

_TOKEN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
"""A request id taken from a client: short, printable, no spaces (a UUID, a trace id)."""


class RelayContextMiddleware:
    """Tags the request's changes on each PostgreSQL database (``settings.RELAY_DATABASES``,
    a list of aliases, narrows them). Django runs in autocommit, where a transaction-local
    setting would end with the statement, so the values are set for the database session at
    the request's first query and cleared when the response is ready; a tag set inside a
    transaction or savepoint that rolled back is set again at the next query."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sent = request.headers.get("X-Request-ID", "")
        request_id = sent if _TOKEN.fullmatch(sent) else str(uuid.uuid4())
        taggers = [_Tagger(alias, request, request_id) for alias in _aliases()]
        try:
            with ExitStack() as stack:
                for tagger in taggers:
                    stack.enter_context(connections[tagger.alias].execute_wrapper(tagger))
                response = self.get_response(request)
        finally:
            for tagger in taggers:
                tagger.clear()
        if "X-Request-ID" not in response:
            response["X-Request-ID"] = request_id
        return response


def _aliases() -> list[str]:
    chosen = getattr(settings, "RELAY_DATABASES", None)
    if chosen is not None:
        return list(chosen)
    return [alias for alias in connections if connections[alias].vendor == "postgresql"]


class _Tagger:
    """Django's execute wrapper for one database during one request."""

    def __init__(self, alias: str, request: HttpRequest, request_id: str) -> None:
        self.alias = alias
        self.request = request
        self.request_id = request_id
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
        if not self.busy and self._stale(context["connection"]):
            self.busy = True  # reading request.user may query (the session, the user row)
            try:
                self._tag(context["connection"], context["cursor"].cursor)
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

    def _tag(self, connection: Any, cursor: Any) -> None:
        sql, params = statement(_username(self.request), self.request_id, local=False)
        cursor.execute(sql, params)
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


def _username(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    name = user.get_username()
    return str(name) if name else None

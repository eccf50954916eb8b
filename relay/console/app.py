"""The console's web application: aiohttp's server, Jinja2 pages rendered on the server (no
script anywhere), and every page and action run as the signed-in person's PostgreSQL role.

Each request opens its own connection as that role (relay/db.py, so its search path is pinned),
with the password kept in the session (relay/console/security.py), in a thread: the store is
the command line's blocking one, and what a page shows or an action does is exactly what the
same role may do with ``relay status``, ``relay webhook pause`` or ``relay retry``. An action
and its audit entry are one transaction: an action the role may not do records nothing.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import psycopg
import sqlalchemy.exc
import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined
from psycopg.conninfo import make_conninfo
from sqlalchemy import orm

from relay import admin, sqlfiles
from relay.console import charts, filters, views
from relay.console.security import (
    LoginLimits,
    Session,
    Sessions,
    new_token,
    same_origin,
    same_token,
)
from relay.db import DatabaseUnavailable, connect, first_line
from relay.delivery import replay as replaying
from relay.rules import ruleset
from relay.store import (
    ActivityBucket,
    LogPage,
    Status,
    Store,
    TrackedTable,
    WebhookFailures,
)

log = structlog.get_logger("relay.console")

T = TypeVar("T")
SESSION = web.RequestKey("session", Session)
"""The request's signed-in session, set by the guard for every page but sign-in."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

APPLICATION_NAME = "relay console"
PAGE_SIZE = 50
FAILING_SHOWN = 10
"""Webhooks in the overview's failures chart, most failures first."""
RETRY_CHUNK = 1000
"""Changes a bulk retry re-queues in one transaction (with one audit entry): short locks on
the outbox whatever the number of failed deliveries."""
RETRY_MOST = 100_000
"""Changes one press of a bulk retry re-queues at most (a hundred chunks, within a minute); the
page then says how many remain, and the next press goes on."""
REFRESH_SECONDS = 30
"""How often the overview reloads itself when asked to (a meta refresh: no script)."""
MAX_ROLE = 63
"""PostgreSQL's longest name (NAMEDATALEN - 1)."""
MAX_PASSWORD = 1000
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""No script at all, inline or not; styles from the console only; forms post to it only; no
page of it inside another site's frame."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
"""A token as new_token makes it (32 random bytes, URL-safe base64)."""

SAID = {
    "paused": "Paused: no relay sends its deliveries until it is resumed.",
    "already-paused": "It was paused already: nothing changed.",
    "resumed": "Resumed: its deliveries go out again, in order.",
    "not-paused": "It was not paused: nothing changed.",
    "retried": "Sent again: the change's failed deliveries are pending.",
    "removed": "Removed, with its deliveries.",
    "superseded": (
        "Not sent again: a later change of the row was delivered to that webhook after it "
        "(relay retry --superseded sends it anyway)."
    ),
    "not-failed": (
        "Nothing to retry: the change is not failed (it was sent again already, or still has "
        "deliveries to make to other webhooks: retry it when they are done)."
    ),
}
"""What a page says after an action, by the code the action's redirect names: never text from
the query string itself."""


@dataclass(frozen=True)
class Config:
    """How the console runs: ``dsn`` says where the database is (its user and password, if
    any, are never used: each person's own role and password are)."""

    dsn: str
    idle_seconds: float = 900.0
    secure_cookie: bool = False
    trust_forwarded: bool = False
    limits: LoginLimits = field(default_factory=LoginLimits)
    template_env_globs: tuple[str, ...] = ()
    """What webhook templates may read with ``env`` (RELAY_TEMPLATE_ENV), for compiling,
    previewing and test-sending them as relay run would."""
    max_body_bytes: int = 32 * 1024 * 1024
    """RELAY_MAX_BODY_BYTES: a replay fails a larger change for the webhook, as relay run."""


@dataclass(frozen=True)
class ReplayShown:
    """What a replay queued, or would (its preview), as the replay page says it, or why it
    cannot be done."""

    problem: str | None = None
    dry_run: bool = True
    total: int = 0
    delivered: int = 0
    failed: int = 0
    new: int = 0
    superseded: int = 0
    busy: int = 0
    ruleless: int = 0
    unjudged: int = 0
    purged: int = 0

    @classmethod
    def of(cls, done: replaying.Replayed, *, purged: int, dry_run: bool) -> ReplayShown:
        """The page's figures of a replay."""
        return cls(
            dry_run=dry_run,
            total=done.total,
            delivered=done.armed.delivered,
            failed=done.armed.failed,
            new=done.added.added,
            superseded=done.superseded,
            busy=done.armed.busy + done.new.left_busy,
            ruleless=done.armed.ruleless,
            unjudged=len(done.new.unjudged),
            purged=purged,
        )

    def summary(self, wanted: filters.ReplayAsked) -> str:
        """The audit's line: the window and what went."""
        window = f"since {wanted.since:%Y-%m-%d %H:%M:%S%z}"
        if wanted.until is not None:
            window += f" until {wanted.until:%Y-%m-%d %H:%M:%S%z}"
        if wanted.table is not None:
            window += f" of {wanted.schema}.{wanted.table}"
        marked = "sent, marked" if wanted.superseded else "left out"
        return (
            f"{window}, {wanted.status}: {self.total} change(s) queued ({self.delivered} "
            f"delivered before, {self.failed} failed before, {self.new} new to it); "
            f"{self.superseded} superseded {marked}"
        )


class Refused(Exception):
    """A request the console answers with a page saying why (status and sentence)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Console:
    """The application's state: its settings, sessions, login limits and templates."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sessions = Sessions(config.idle_seconds)
        self.templates = Environment(
            loader=PackageLoader("relay.console", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            age=views.age,
            when=views.when,
            reason=views.reason_shown,
            excerpt=views.excerpt_shown,
            url=views.url,
        )
        self.css = (
            importlib.resources.files("relay.console").joinpath("static/console.css").read_bytes()
        )
        self.cookie_name = "__Host-relay_console" if config.secure_cookie else "relay_console"
        self.login_cookie = (
            "__Host-relay_console_login" if config.secure_cookie else "relay_console_login"
        )

    # -- plumbing ------------------------------------------------------------------------

    def page(
        self, request: web.Request, template: str, code: int = 200, **values: Any
    ) -> web.Response:
        """A page of ``template``: every value autoescaped (names, rows, errors are text)."""
        session = request.get(SESSION)
        text = self.templates.get_template(template).render(
            role=session.role if session else None,
            csrf=session.csrf if session else "",
            **values,
        )
        return web.Response(text=text, status=code, content_type="text/html", charset="utf-8")

    def address(self, request: web.Request) -> str:
        """The client's address: the peer's, or behind a proxy that says so, what it saw."""
        if self.config.trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:100]
        return request.remote or "unknown"

    def _as_role(self, session: Session) -> str:
        return make_conninfo(self.config.dsn, user=session.role, password=session.password)

    async def run(self, request: web.Request, work: Callable[[Store], T]) -> T:
        """``work`` on a connection of the signed-in role's own, in a thread."""
        dsn = self._as_role(request[SESSION])

        def go() -> T:
            with connect(dsn, application_name=APPLICATION_NAME) as conn:
                return work(Store(conn))

        return await self._signed_in(request, go)

    async def run_admin(self, request: web.Request, work: Callable[[orm.Session, Store], T]) -> T:
        """``work`` on the webhook and rule tables as the command line's webhook and rule
        commands change them (relay/admin.py), as the signed-in role, in one
        transaction, with a store on the same connection for the audit. A database error
        comes out as psycopg's own (a refused right is then a 403 page)."""
        dsn = self._as_role(request[SESSION])

        def go() -> T:
            try:
                with admin.session(dsn, application_name=APPLICATION_NAME) as db:
                    raw = db.connection().connection.driver_connection
                    assert isinstance(raw, psycopg.Connection), "admin.session uses psycopg"
                    return work(db, Store(raw))
            except sqlalchemy.exc.DBAPIError as exc:
                if isinstance(exc.orig, psycopg.Error):
                    raise exc.orig from None
                raise

        return await self._signed_in(request, go)

    async def _signed_in(self, request: web.Request, go: Callable[[], T]) -> T:
        session = request[SESSION]
        try:
            return await asyncio.to_thread(go)
        except DatabaseUnavailable as exc:
            if exc.refused:
                # The password changed, the role was dropped or may no longer log in.
                self.sessions.end(session.id)
                raise web.HTTPSeeOther("/login?said=ended") from None
            log.warning("database unavailable", error=str(exc))
            raise Refused(503, "The database cannot be reached now: try again shortly.") from None

    # -- sign-in -------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """The sign-in form, with a fresh token in a cookie and in the form."""
        said = {"ended": "Your session ended: sign in again.", "out": "Signed out."}
        return self._login_page(request, said.get(request.query.get("said", "")), 200)

    def _login_page(self, request: web.Request, message: str | None, status: int) -> web.Response:
        # The browser's token, when it has one: another tab's sign-in form, or the favicon's
        # way here, must not make the form on screen stale.
        token = request.cookies.get(self.login_cookie, "")
        if not _TOKEN.fullmatch(token):
            token = new_token()
        response = self.page(
            request, "login.html", status, title="Sign in", message=message, login_token=token
        )
        response.set_cookie(
            self.login_cookie,
            token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.config.secure_cookie,
        )
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Sign in: PostgreSQL checks the role's password (a connection as that role); the
        role must be one PostgreSQL asks a password of, and must see a relay schema of this
        relay's version."""
        form = await request.post()
        if not same_token(_field(form, "token"), request.cookies.get(self.login_cookie, "")):
            return self._login_page(request, "The form was stale: sign in again.", 403)
        role, password = _field(form, "role") or "", _field(form, "password") or ""
        if not role or not password:
            return self._login_page(request, "Give a role and its password.", 400)
        if len(role) > MAX_ROLE or len(password) > MAX_PASSWORD or _CONTROL.search(role + password):
            return self._login_page(request, "Wrong role or password.", 401)
        address = self.address(request)
        wait = self.config.limits.wait(address, role)
        if wait > 0:
            return self._login_page(
                request, f"Too many failed sign-ins: try again in {wait:.0f} s.", 429
            )
        dsn = make_conninfo(self.config.dsn, user=role, password=password)
        try:
            problem = await asyncio.to_thread(_sign_in_problem, dsn, role)
        except DatabaseUnavailable as exc:
            if not exc.refused:
                log.warning("database unavailable", error=str(exc))
                return self._login_page(
                    request, "The database cannot be reached now: try again shortly.", 503
                )
            self.config.limits.failed(address, role)
            log.info("sign-in refused", role=role, address=address)
            return self._login_page(request, "Wrong role or password.", 401)
        if problem is not None:
            return self._login_page(request, problem, 403)
        self.config.limits.succeeded(address, role)
        session = self.sessions.start(role, password)
        log.info("signed in", role=role, address=address)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            self.cookie_name,
            self.sessions.cookie(session),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.config.secure_cookie,
        )
        response.del_cookie(self.login_cookie, path="/")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Sign out: the session is forgotten here, whatever the browser keeps."""
        session = request[SESSION]
        self.sessions.end(session.id)
        response = web.HTTPSeeOther("/login?said=out")
        response.del_cookie(self.cookie_name, path="/")
        raise response

    # -- pages ---------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        """Backlog, relays alive, webhooks paused or dead, the last errors, and the charts of
        attempts over the last hour (by minute) or day (by hour)."""
        window = charts.WINDOWS.get(request.query.get("window", ""), charts.WINDOWS["hour"])
        refresh = request.query.get("refresh") == "on"

        def read(store: Store) -> tuple[Status, list[ActivityBucket], list[WebhookFailures]]:
            buckets = store.activity(window.unit, window.buckets)
            return store.status(5), buckets, store.failures(buckets[0].start, FAILING_SHOWN)

        status, buckets, failing = await self.run(request, read)
        stopped = [w for w in status.webhooks if w["state"] in ("paused", "dead")]
        return self.page(
            request,
            "overview.html",
            title="Overview",
            status=status,
            stopped=stopped,
            window=window,
            windows=charts.WINDOWS.values(),
            activity=charts.activity(buckets, window),
            failing=charts.failures(failing, window),
            refresh=REFRESH_SECONDS if refresh else None,
        )

    async def webhooks(self, request: web.Request) -> web.StreamResponse:
        """Every webhook with its state and health, and pause or resume."""
        status = await self.run(request, lambda store: store.status(0))
        return self.page(
            request,
            "webhooks.html",
            title="Webhooks",
            webhooks=status.webhooks,
            said=SAID.get(request.query.get("said", "")),
        )

    async def deliveries(self, request: web.Request) -> web.StreamResponse:
        """The deliveries log, filtered, a page at a time: newest first, or an object's
        changes oldest first."""
        asked = filters.delivery_filter(request.query)
        page = LogPage([])
        if asked.problem is None:
            page = await self.run(
                request, lambda store: store.deliveries(asked.wanted, PAGE_SIZE + 1)
            )
        lines = page.lines[:PAGE_SIZE]
        kept = _kept(request.query)
        next_page = None
        looked_from = None
        if len(page.lines) > PAGE_SIZE:
            side = "after" if asked.wanted.keyed else "before"
            last = lines[-1]
            next_page = "/deliveries?" + urlencode(
                {**kept, side: f"{last.outbox_id}-{last.webhook_id}"}
            )
        elif page.looked_from is not None:
            # Cut short by its stretch of changes: the next page looks further back.
            looked_from = page.looked_from
            next_page = "/deliveries?" + urlencode({**kept, "before": f"{looked_from}-0"})
        return self.page(
            request,
            "deliveries.html",
            title="Deliveries",
            lines=lines,
            problem=asked.problem or (KEYLESS if page.keyless else None),
            query=request.query,
            statuses=filters.STATUSES,
            events=filters.EVENTS,
            keyed=asked.wanted.keyed,
            next_page=next_page,
            looked_from=looked_from,
            retry_all="/deliveries/retry?" + urlencode(kept),
        )

    async def retry_preview(self, request: web.Request) -> web.StreamResponse:
        """Retrying every failed delivery the log's filter matches, first its preview: how many
        changes would go again (as ``relay retry`` re-queues them), and how many deliveries a
        later change of their row supersedes."""
        asked = filters.delivery_filter(request.query)
        if asked.problem is not None:
            raise Refused(400, asked.problem)
        count = await self.run(request, lambda store: store.failed_count(asked.wanted))
        # The confirm does what this preview counted: the times as read now (an age such as 2h
        # does not move on), and no change recorded after the last counted.
        confirmed = _kept(request.query)
        for name, moment in (("since", asked.wanted.since), ("until", asked.wanted.until)):
            if moment is not None:
                confirmed[name] = moment.isoformat()
        confirmed["through"] = str(count.through)
        return self.page(
            request,
            "retry_preview.html",
            title="Retry failed deliveries",
            count=count,
            kept=confirmed,
            back="/deliveries?" + urlencode(_kept(request.query)),
            chunk=RETRY_CHUNK,
            most=RETRY_MOST,
        )

    async def retry_all(self, request: web.Request) -> web.StreamResponse:
        """Retry every failed delivery the filter matches, as ``relay retry`` (with
        ``--superseded`` when ticked): their changes re-queued :data:`RETRY_CHUNK` at a time,
        each chunk in a transaction of its own with its audit entry (so a million failed
        deliveries never hold one long transaction), at most :data:`RETRY_MOST` changes a
        press, none after the last change its preview counted (``through``)."""
        form = await request.post()
        query = {name: _field(form, name) or "" for name in filters.FIELDS}
        asked = filters.delivery_filter(query)
        if asked.problem is not None:
            raise Refused(400, asked.problem)
        superseded = _field(form, "superseded") == "yes"
        through = filters.whole_number(_field(form, "through"))
        target = urlencode(_kept(query)) or "every failed delivery"
        address = self.address(request)

        def act(store: Store) -> tuple[int, int]:
            requeued = marked = taken = 0
            after = 0
            while taken < RETRY_MOST:
                with store.conn.transaction():
                    chunk = min(RETRY_CHUNK, RETRY_MOST - taken)
                    ids = store.failed_changes(asked.wanted, after, chunk, through)
                    if not ids:
                        break
                    done = store.retry_changes(ids, superseded=superseded)
                    what = "sent, marked X-Relay-Superseded" if superseded else "left failed"
                    detail = (
                        f"{done.requeued} change(s) re-queued, {ids[0]} to {ids[-1]}; "
                        f"{done.superseded} superseded deliveries {what}"
                    )
                    store.audit("deliveries retry", target, detail, address)
                requeued += done.requeued
                marked += done.superseded
                taken += len(ids)
                after = ids[-1]
            return requeued, marked

        requeued, marked = await self.run(request, act)
        count = await self.run(request, lambda store: store.failed_count(asked.wanted))
        return self.page(
            request,
            "retry_done.html",
            title="Retry failed deliveries",
            requeued=requeued,
            marked=marked,
            superseded=superseded,
            count=count,
            back="/deliveries?" + urlencode(_kept(query)),
            again="/deliveries/retry?" + urlencode(_kept(query)),
        )

    async def replay_form(self, request: web.Request) -> web.StreamResponse:
        """Replay, as ``relay replay``: a webhook and a stretch of time, and with them filled in,
        the preview of what would go (a dry run: the same code, rolled back)."""
        asked = filters.replay_filter(request.query)
        preview = None
        wanted = asked.wanted
        if wanted is not None and asked.problem is None:
            if wanted.until is None:
                # Until now: the confirm replays what this preview counted, not a change
                # recorded between the two.
                wanted = replace(wanted, until=datetime.now(UTC))
            preview = await self._replay(request, wanted, dry_run=True)
        return self.page(
            request,
            "replay.html",
            title="Replay",
            query=request.query,
            problem=asked.problem if request.query else None,
            preview=preview,
            confirm=_confirm(wanted),
            choices=filters.REPLAY_STATUSES,
        )

    async def replay(self, request: web.Request) -> web.StreamResponse:
        """Replay, confirmed: the changes queued again in one transaction with its audit
        entry, as ``relay replay`` does."""
        form = await request.post()
        query = {name: _field(form, name) or "" for name in filters.REPLAY_FIELDS}
        asked = filters.replay_filter(query)
        if asked.wanted is None or asked.problem is not None:
            raise Refused(400, asked.problem or "Give a webhook and since when.")
        done = await self._replay(request, asked.wanted, dry_run=False)
        return self.page(
            request,
            "replay.html",
            title="Replay",
            query=query,
            problem=None,
            preview=done,
            confirm={},
            choices=filters.REPLAY_STATUSES,
        )

    async def _replay(
        self, request: web.Request, wanted: filters.ReplayAsked, *, dry_run: bool
    ) -> ReplayShown:
        """The replay of ``wanted`` (rolled back for a preview; audited otherwise)."""
        address = self.address(request)
        limit = self.config.max_body_bytes

        def act(store: Store) -> ReplayShown:
            state = store.webhook_state(wanted.webhook)
            if state is None:
                return ReplayShown(problem=f"No webhook named {wanted.webhook}.")
            webhook_id, enabled = state
            if not enabled:
                return ReplayShown(
                    problem=f"Webhook {wanted.webhook} is disabled: enable it first."
                )
            window: dict[str, Any] = {
                "webhook_id": webhook_id,
                "since": wanted.since,
                "until": wanted.until,
                "schema_name": wanted.schema,
                "table_name": wanted.table,
            }
            rules = ruleset.load(store.conn)
            statuses = ["delivered", "failed"] if wanted.status == "all" else [wanted.status]
            purged = store.purged_in_window(window).changes
            with store.conn.transaction() as tx:
                done = replaying.replay(
                    store,
                    rules,
                    window,
                    statuses,
                    new=wanted.status == "all",
                    superseded=wanted.superseded,
                    limit=limit,
                )
                shown = ReplayShown.of(done, purged=purged, dry_run=dry_run)
                if dry_run:
                    raise psycopg.Rollback(tx)
                store.audit("replay", wanted.webhook, shown.summary(wanted), address)
            return shown

        return await self.run(request, act)

    async def delivery(self, request: web.Request) -> web.StreamResponse:
        """One delivery: its change's images and every attempt, with the request as sent and
        the response's headers where the attempt kept them (RELAY_ATTEMPT_DETAILS)."""
        outbox_id, webhook_id = _delivery_ids(request)

        def read(store: Store) -> tuple[Any, Any]:
            return store.delivery(outbox_id, webhook_id), store.attempts(outbox_id, webhook_id)

        found, attempts = await self.run(request, read)
        if found is None:
            raise Refused(404, "No such delivery (retention may have purged it).")
        return self.page(
            request,
            "delivery.html",
            title=f"Change {outbox_id} to {found.webhook}",
            d=found,
            attempts=[(a, views.exchange(a.details)) for a in attempts],
            said=SAID.get(request.query.get("said", "")),
        )

    async def audit(self, request: web.Request) -> web.StreamResponse:
        """What was done through the console, newest first."""
        before = filters.whole_number(request.query.get("before"))
        lines = await self.run(request, lambda store: store.audit_lines(before, PAGE_SIZE + 1))
        older = f"/audit?before={lines[PAGE_SIZE - 1].id}" if len(lines) > PAGE_SIZE else None
        return self.page(request, "audit.html", title="Audit", lines=lines[:PAGE_SIZE], older=older)

    async def tables(self, request: web.Request) -> web.StreamResponse:
        """What is tracked, with the options ``relay track`` gave it, and the backfills."""

        def read(store: Store) -> tuple[list[TrackedTable], list[dict[str, Any]]]:
            return store.tracked(), store.backfills()

        tracked, backfills = await self.run(request, read)
        return self.page(
            request,
            "tables.html",
            title="Tracked tables",
            tracked=tracked,
            backfills=backfills,
        )

    # -- actions -------------------------------------------------------------------------

    async def steer(self, request: web.Request) -> web.StreamResponse:
        """Pause or resume a webhook (the store calls ``relay webhook pause`` and ``resume``
        make), recorded in the audit in the same transaction."""
        action = request.match_info["action"]
        form = await request.post()
        name = _field(form, "name")
        if not name or _CONTROL.search(name):
            raise Refused(404, "No such webhook.")
        address = self.address(request)

        def act(store: Store) -> str | None:
            with store.conn.transaction():
                if store.webhook_steering(name) is None:
                    return None
                if action == "pause":
                    said = "paused" if store.pause_webhook(name) is not None else "already-paused"
                else:
                    said = "resumed" if store.resume_webhook(name) else "not-paused"
                store.audit(f"webhook {action}", name, said, address)
                return said

        said = await self.run(request, act)
        if said is None:
            raise Refused(404, "No such webhook.")
        raise web.HTTPSeeOther(f"/webhooks?said={said}")

    async def retry(self, request: web.Request) -> web.StreamResponse:
        """Send a failed delivery's change again, as ``relay retry --id N --webhook W`` does:
        the change's failed deliveries are armed again, but one a later change of its row
        supersedes. Recorded in the audit in the same transaction."""
        outbox_id, webhook_id = _delivery_ids(request)
        address = self.address(request)

        def act(store: Store) -> str | None:
            with store.conn.transaction():
                found = store.delivery(outbox_id, webhook_id)
                if found is None:
                    return None
                done = store.retry_failed(change_id=outbox_id, since=None, webhook=found.webhook)
                if done.requeued == 0:
                    said = "not-failed"
                elif done.superseded:
                    said = "superseded"
                else:
                    said = "retried"
                store.audit("delivery retry", f"{outbox_id}/{found.webhook}", said, address)
                return said

        said = await self.run(request, act)
        if said is None:
            raise Refused(404, "No such delivery (retention may have purged it).")
        raise web.HTTPSeeOther(f"/deliveries/{outbox_id}/{webhook_id}?said={said}")

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        """No icon: browsers ask for one on every page, and a 404 is an error in their log."""
        return web.Response(status=204)

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        """The one stylesheet (served by the console: nothing is fetched from elsewhere)."""
        return web.Response(body=self.css, content_type="text/css", charset="utf-8")

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request: the session (or sign-in), the origin and CSRF token of every POST,
        the security headers, and errors as pages that say what to do, never a traceback."""
        try:
            response = await self._guarded(request, handler)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            message = (
                "No such page."
                if exc.status == 404
                else "This address takes a form's button (POST), not a link."
            )
            response = self.page(request, "error.html", exc.status, title="", message=message)
        except web.HTTPException as exc:
            _secure(exc)
            raise
        except Refused as exc:
            response = self.page(request, "error.html", exc.status, title="", message=exc.message)
        except psycopg.errors.InsufficientPrivilege as exc:
            session = request.get(SESSION)
            role = session.role if session else "?"
            message = (
                f"Your role {role} may not do this ({first_line(exc)}). Ask for the console's "
                "rights: sql/console_role.sql (docs/console.md)."
            )
            response = self.page(request, "error.html", 403, title="", message=message)
        except psycopg.Error as exc:
            log.warning("database error", error=first_line(exc))
            message = f"The database refused: {first_line(exc)}"
            response = self.page(request, "error.html", 500, title="", message=message)
        except Exception:
            log.exception("console fault")
            message = "Something went wrong in relay console: its log says what."
            response = self.page(request, "error.html", 500, title="", message=message)
        _secure(response)
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path in ("/login", "/static/console.css", "/favicon.ico")
        session = self.sessions.find(request.cookies.get(self.cookie_name))
        if session is not None:
            request[SESSION] = session
        if request.method == "POST":
            scheme = "https" if self.config.secure_cookie else request.scheme
            if not same_origin(request.headers.get("Origin"), scheme, request.host):
                raise Refused(403, "Refused: this form was posted from another site.")
            if not public:
                if session is None:
                    raise Refused(403, "Refused: sign in first.")
                form = await request.post()
                if not same_token(_field(form, "csrf"), session.csrf):
                    raise Refused(
                        403, "Refused: the form carries no valid token. Reload the page and retry."
                    )
        elif not public and session is None:
            raise web.HTTPSeeOther("/login")
        return await handler(request)


def _sign_in_problem(dsn: str, role: str) -> str | None:
    """Sign a role in: connect as it (DatabaseUnavailable when PostgreSQL refuses), then why it
    may not use the console, or None when it may."""
    with connect(dsn, application_name=APPLICATION_NAME) as conn:
        if not conn.pgconn.used_password:
            # trust or peer in pg_hba.conf: anyone could sign in as the role with any password.
            return (
                f"PostgreSQL did not ask for role {role}'s password (pg_hba.conf trusts it): "
                "the console signs in only roles whose password PostgreSQL checks."
            )
        try:
            version = Store(conn).installed_version()
        except psycopg.errors.InsufficientPrivilege:
            version = -1
        if version == -1 or version == 0:
            return (
                f"Role {role} sees no relay in this database: install relay, or grant the "
                "role the console's rights with sql/console_role.sql (docs/console.md)."
            )
        latest = sqlfiles.latest_version()
        if version != latest:
            return (
                f"relay's schema is at version {version}, this console needs {latest}: run "
                "the relay of the same release."
            )
    return None


def _field(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _confirm(wanted: filters.ReplayAsked | None) -> dict[str, str]:
    """The confirm form's fields of a previewed replay: its times as the preview read them (an
    age such as 2h would otherwise move on between the preview and the press)."""
    if wanted is None:
        return {}
    return {
        "webhook": wanted.webhook,
        "since": wanted.since.isoformat(),
        "until": wanted.until.isoformat() if wanted.until is not None else "",
        "table": ruleset.rule_table(wanted.schema or "public", wanted.table)
        if wanted.table is not None
        else "",
        "status": wanted.status,
        "superseded": "yes" if wanted.superseded else "",
    }


def _kept(query: Mapping[str, str]) -> dict[str, str]:
    """The log's filters given in ``query``, without its page's cursor: what links and forms
    carry on."""
    return {
        name: query[name]
        for name in filters.FIELDS
        if name not in ("before", "after") and query.get(name)
    }


def _delivery_ids(request: web.Request) -> tuple[int, int]:
    outbox_id = filters.whole_number(request.match_info["outbox_id"])
    webhook_id = filters.whole_number(request.match_info["webhook_id"])
    if outbox_id is None or webhook_id is None:
        raise Refused(404, "No such delivery.")
    return outbox_id, webhook_id


def _secure(response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    # Never a referrer to another site; not no-referrer, with which browsers send "Origin:
    # null" with the console's own forms, and the origin check could not tell them apart.
    headers["Referrer-Policy"] = "same-origin"
    headers["Cache-Control"] = "no-store"


KEYLESS = (
    "key: no tracked table (of that name) has a primary key of these columns; the changes of a"
    " table without one are found by table and time"
)
"""Said above the log when an object's key fits no tracked table's primary key."""

REQUEST_LINE_BYTES = 64 * 1024
"""The longest request line read (aiohttp's default is 8190 bytes): the log's filter travels in
its query string, percent-encoded, and a key of filters.MAX_KEY characters takes up to 9 bytes
each."""


def make_app(config: Config) -> web.Application:
    """The console's application, ready for aiohttp's runner or test client."""
    console = Console(config)
    app = web.Application(middlewares=[console.guard], client_max_size=64 * 1024)
    app.router.add_get("/login", console.login_form)
    app.router.add_post("/login", console.login)
    app.router.add_post("/logout", console.logout)
    app.router.add_get("/", console.overview)
    app.router.add_get("/webhooks", console.webhooks)
    app.router.add_post("/webhooks/{action:pause|resume}", console.steer)
    app.router.add_get("/deliveries", console.deliveries)
    app.router.add_get("/deliveries/retry", console.retry_preview)
    app.router.add_post("/deliveries/retry", console.retry_all)
    app.router.add_get("/replay", console.replay_form)
    app.router.add_post("/replay", console.replay)
    app.router.add_get("/deliveries/{outbox_id}/{webhook_id}", console.delivery)
    app.router.add_post("/deliveries/{outbox_id}/{webhook_id}/retry", console.retry)
    app.router.add_get("/audit", console.audit)
    app.router.add_get("/static/console.css", console.stylesheet)
    app.router.add_get("/favicon.ico", console.favicon)
    app.router.add_get("/tables", console.tables)
    from relay.console import editing  # it uses this module's Refused

    editing.add_routes(app, console)
    return app


async def serve(config: Config, host: str, port: int, ready: Callable[[], None]) -> None:
    """Serve until cancelled (SIGINT, SIGTERM: the command line's loop cancels it)."""
    runner = web.AppRunner(
        make_app(config), access_log=None, handle_signals=False, max_line_size=REQUEST_LINE_BYTES
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    ready()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

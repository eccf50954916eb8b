"""``relay run``'s worker: the session's lifecycle (connect, listen, claim, idle, drain, stop);
it holds no policy of its own.

Each stage has a connection of its own, so that none waits for another: fan-out
(relay/delivery/fanout.py) matches new changes and sweeps; the claimer
(relay/delivery/claimer.py) leases due deliveries within what the relay holds; one task per
claim runs it through the executor (relay/delivery/executor.py: rendered by relay/render/, sent
by relay/delivery/send.py) and hands its results to the recorder, which writes outcomes in
batches (relay/delivery/record.py); the reporter (relay/delivery/reporter.py) logs and counts
them. A fourth connection LISTENs, and the rule watcher (relay/rules/watch.py) keeps a fifth.
When there is nothing to do, each sleeps until a NOTIFY on relay_outbox, the poll interval, or
a stop request, whichever comes first.

Whatever one change, rule or webhook does, it costs only itself: matching is isolated per rule
and change (relay/delivery/plan.py), the executor turns any exception into an outcome with a
one-line reason, a delivery claimed past its max attempts (its earlier attempts never reported
back) fails instead of going out again, and an unexpected error in a whole session is logged
and the session started again rather than ending the process. What happens to a delivery after
an attempt is the retry policy's call (relay/delivery/policy.py), whether its webhook is paused
for a cool-down the breaker's (relay/delivery/breaker.py); a webhook paused until resumed (by
the operator, or by the recorder once its endpoint is dead: relay/delivery/record.py) is not
claimed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from relay import sqlfiles
from relay.db import AConn, aconnect, first_line, path_problem
from relay.delivery.breaker import Breaker
from relay.delivery.claimer import Claimer, Hold
from relay.delivery.executor import Executor
from relay.delivery.fanout import FanOut
from relay.delivery.holding import Holding
from relay.delivery.metrics import Metrics
from relay.delivery.pacing import Pacing
from relay.delivery.record import Recorder
from relay.delivery.reporter import Reporter
from relay.delivery.send import Sender
from relay.reasons import Secrets, describe, masking
from relay.render.pool import RenderPool
from relay.render.request import env_values
from relay.rules.watch import RuleWatcher
from relay.settings import HELD_PER_CHANGE_BYTE, Settings
from relay.store import AsyncStore, application_name

log = structlog.get_logger("relay.worker")

RUN_SESSION = {"jit": "off", "relay.schema_version": str(sqlfiles.latest_version())}
"""The settings of every session of ``relay run``, the worker's and the rule watcher's alike, over
relay.db's :data:`~relay.db.SESSION`. jit: the relay's queries are short and many, and JIT
compilation, which the planner's cost estimate for the claim query can trigger, took 240 ms of a
256 ms claim. relay.schema_version: what it was built for (relay.refuse_other_releases,
0023, refuses deliveries to a session built for another schema version, so that a relay left
running across an upgrade stops rather than send under ids of its own making)."""
SESSION_SETTLED_SECONDS = 60.0
"""A session that ran this long after connecting was healthy: its failure starts a new outage
(logged, and the next session after 0.5 s). One that fails sooner is the same outage as the
failure before it (a full disk lets the relay connect and fails its first write): not logged
again, and each wait twice the last, up to 30 s."""


class CannotDeliver(Exception):
    """What a restart of the relay cannot fix: a schema this relay was not built for, or a
    session that does not search the path relay pins (``relay run`` says so, exit 2)."""


def session_problem(version: int, search_path: str, latest: int) -> str | None:
    """Why a session may not deliver, or None: the schema must be the one this relay was built
    for (an older one needs ``relay install``; a newer one, this relay upgraded, or deliveries
    would go under other ids), and the search path must be relay's own (relay/db.py)."""
    if version < latest:
        return (
            f"relay schema is at version {version}, this relay needs {latest}: run `relay "
            "install` as the schema's owner (then sql/service_role.sql for the service)"
        )
    if version > latest:
        return (
            f"relay schema is at version {version}, newer than this relay ({latest}): run the "
            "relay of the release that installed it"
        )
    return path_problem(search_path)


class Worker:
    """One relay process. Each claim (a delivery, or a batch) is a task: the executor waits for
    one of its webhook's slots (its ``concurrency``, which the claim keeps across relays, else
    ``webhook_concurrency``), for its rate-limit slot if it has one, and sends; the recorder
    writes its outcome. The claimer tells the claim query how many deliveries this process
    holds per webhook, so a slow receiver holds only a bounded number of claims, never holds up
    other work, and nothing waits in memory while its lease runs out. A webhook that keeps
    failing is paused for a cool-down (each process keeps its own count)."""

    def __init__(self, settings: Settings, dsn: str, *, relay_id: str | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}"
        self._started = datetime.now(UTC)
        self.renders = RenderPool(settings.template_env_globs)
        self.secrets = Secrets()
        """What no reason or log line of this relay may show (see relay/reasons.py): the
        values templates may read with ``env``, the passwords of the database and of proxies,
        and the webhooks' secrets, kept current with the rules."""
        known = [*env_values(settings.template_env_globs), *_passwords(dsn)]
        self.secrets.update("settings", known)
        self.rules = RuleWatcher(
            dsn,
            application_name=application_name(self.relay_id),
            settings=RUN_SESSION,
            on_load=lambda rules: self.secrets.update("webhooks", rules.secrets()),
        )
        self.max_in_flight = settings.batch_size * 4
        self.holding = Holding(settings)
        self.pacing = Pacing(self._connect, settings.lease_seconds)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
        self._wake = asyncio.Event()
        """Set when there may be deliveries to claim: new ones fanned out, or room freed."""
        self.claimer = Claimer(
            settings,
            self.relay_id,
            lambda: self.rules.ruleset,
            self.holding,
            self.breaker,
            self._wake.set,
        )
        self._stopping = False
        self._connected = False
        self._connected_at: float | None = None
        """When (monotonic) the current session connected; None before it has."""
        self._in_flight: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.metrics.held_bytes.set_function(lambda: self.holding.total * HELD_PER_CHANGE_BYTE)
        self.reporter = Reporter(
            lambda webhook_id: self.rules.ruleset.webhook_name(webhook_id),
            self.metrics,
            self.breaker,
        )
        self.fan_out = FanOut(
            settings,
            self.relay_id,
            self.rules,
            self.holding,
            self.metrics,
            self._wake.set,
            self._refresh_statistics,
        )

    @property
    def ready(self) -> bool:
        """Connected to the database and listening (what /readyz and systemd's READY=1 say)."""
        return self._connected

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then let in-flight requests finish within the grace
        period and release whatever is left to other relays.

        A lost database connection is retried with backoff and logged once per outage (sessions
        that fail soon after connecting are the same outage: see SESSION_SETTLED_SECONDS); work
        resumes from the database's state (whatever is due, including the backlog), so nothing
        depends on what this process remembered. Every stage runs within :func:`masking`, so no
        reason or log line of theirs shows a secret the relay knows."""
        with masking(self.secrets):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self.rules.run())
        backoff = 0.5
        outage = False
        try:
            async with Sender(
                self.settings.max_body_bytes, self.settings.attempt_details
            ) as sender:
                executor = Executor(
                    self.settings,
                    lambda: self.rules.ruleset,
                    self.renders,
                    sender,
                    self.pacing,
                    self.breaker,
                    self.reporter,
                )
                while not stop.is_set():
                    self._connected, self._connected_at = False, None
                    try:
                        await _first_of(self.rules.loaded, stop, watcher, timeout=30)
                        if watcher.done():
                            watcher.result()  # the rules cannot be read: a missing grant, say
                        if stop.is_set():
                            break
                        await self._session(stop, executor, watcher)
                        continue
                    except (psycopg.OperationalError, TimeoutError) as exc:
                        if self._settled() or not outage:
                            log.warning("database unavailable, retrying", error=first_line(exc))
                            backoff = 0.5
                        outage = True
                    except (psycopg.errors.InsufficientPrivilege, CannotDeliver):
                        raise  # a missing grant, another schema: waiting will not help
                    except Exception as exc:
                        # A fault of relay's own: start the session again rather than stop
                        # delivering (the work is all in the database), waiting longer each
                        # time it comes back at once.
                        log.exception("relay session failed, starting again", error=describe(exc))
                        if self._settled():
                            backoff = 0.5
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            watcher.cancel()
            await self.renders.close()

    def _settled(self) -> bool:
        """The session ran healthily for SESSION_SETTLED_SECONDS after it connected."""
        connected = self._connected_at
        return connected is not None and time.monotonic() - connected >= SESSION_SETTLED_SECONDS

    async def _session(
        self, stop: asyncio.Event, executor: Executor, watcher: asyncio.Task[None]
    ) -> None:
        """One connected stretch: claims, fan-out, outcomes and notifications, a connection
        each. Any of them failing ends the stretch (run() reconnects), and so does the rule
        watcher giving up (a grant revoked, say)."""
        async with (
            await self._connect() as conn,
            await self._connect() as fanning,
            await self._connect() as recording,
            await self._connect() as listener,
        ):
            store = AsyncStore(conn)
            await AsyncStore(listener).listen("relay_outbox", "relay_capture")
            problem = session_problem(*await store.session_check(), sqlfiles.latest_version())
            if problem is not None:
                raise CannotDeliver(problem)
            await store.relay_started(self.relay_id, self._started)
            self._connected, self._connected_at = True, time.monotonic()
            self._stopping = False
            log.info("relay connected", relay_id=self.relay_id)
            recorder = Recorder(
                self.relay_id,
                dead_after=self.settings.dead_after_seconds,
                on_dead=self.reporter.dead,
            )
            helpers = [
                asyncio.create_task(self._listen(listener)),
                asyncio.create_task(recorder.run(AsyncStore(recording))),
                asyncio.create_task(self.fan_out.run(AsyncStore(fanning))),
            ]
            try:
                while not stop.is_set():
                    for helper in [*helpers, watcher]:
                        if helper.done():
                            helper.result()  # its connection died: raise the error
                    # Cleared before the round, not when idling: a wake-up that comes while the
                    # round runs (an outcome written, a receiver that answered) is not lost.
                    self._wake.clear()
                    if not await self._claim_round(store, recorder, executor):
                        await self._idle(stop, helpers)
            finally:
                self._stopping = True
                await self._drain()
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self.pacing.close()
            await store.release_leases(self.relay_id)
            log.info("relay stopped", relay_id=self.relay_id)

    async def _connect(self) -> AConn:
        """Connections carry the relay's id, so operators can see (and tests can cut) them."""
        return await aconnect(
            self.dsn,
            application_name=application_name(self.relay_id),
            settings=RUN_SESSION,
        )

    async def _refresh_statistics(self) -> None:
        """ANALYZE the delivery tables on a connection of its own (see FanOut)."""
        async with await self._connect() as conn:
            await AsyncStore(conn).refresh_statistics()

    async def _listen(self, listener: AConn) -> None:
        async for notification in listener.notifies():
            if notification.channel == "relay_capture":
                self.fan_out.capture_changed()
                continue
            self.fan_out.new_changes()
            self._wake.set()

    async def _idle(self, stop: asyncio.Event, helpers: list[asyncio.Task[Any]]) -> None:
        """Sleep until there may be something to claim, a helper ends, stop, or the poll
        interval (retries come due without a notification)."""
        timeout = self.settings.poll_interval
        due = self.claimer.batch_due
        if due is not None:
            timeout = min(timeout, max(due - time.monotonic(), 0.0))
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(
            [*waiters, *helpers],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in waiters:
            waiter.cancel()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(
            self._in_flight, timeout=self.settings.shutdown_grace_seconds
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _claim_round(self, store: AsyncStore, recorder: Recorder, executor: Executor) -> bool:
        """Claim what the room left allows (the claimer's call), a task for each claim."""
        return await self.claimer.claim_round(
            store,
            lambda: self.max_in_flight - len(self._in_flight),
            functools.partial(self._start, recorder, executor),
        )

    def _start(self, recorder: Recorder, executor: Executor, hold: Hold) -> None:
        task = asyncio.create_task(self._deliver(hold, recorder, executor))
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._let_go, hold))

    def _let_go(self, hold: Hold, task: asyncio.Task[None]) -> None:
        """The task of a delivery (or batch) ended: whatever it held goes back."""
        self._in_flight.discard(task)
        hold.release()

    async def _deliver(self, hold: Hold, recorder: Recorder, executor: Executor) -> None:
        """One claim's task: its results (the executor's), then written and counted. The
        claim's room is free as soon as the receiver has answered; its deliveries stay pending
        (so a later change to a row still waits) until their outcomes are written."""
        try:
            results = await executor.run(hold.items, hold.slot(), lambda: self._stopping)
        finally:
            hold.answered()
        if results is None:
            return  # not sent: release_leases gives it back
        with hold.recording():
            written = await asyncio.gather(
                *(recorder.record(result) for result in results), return_exceptions=True
            )
        for item, result, error in zip(hold.items, results, written, strict=True):
            if isinstance(error, BaseException):  # the lease expires and another attempt follows
                self.reporter.not_recorded(item, error)
            else:
                self.reporter.counted(item, result, timed=item is hold.items[0])


def _passwords(dsn: str) -> list[str]:
    """The passwords of the connection string and of the proxies the environment names."""
    found = [urlsplit(proxy).password or "" for proxy in getproxies_environment().values()]
    with contextlib.suppress(psycopg.ProgrammingError):
        found.append(str(conninfo_to_dict(dsn).get("password") or ""))
    return [password for password in found if password]


async def _first_of(
    event: asyncio.Event, stop: asyncio.Event, task: asyncio.Task[None], *, timeout: float
) -> None:
    """Wait for ``event``, ``stop`` or the end of ``task``, whichever comes first: a relay
    waiting for its rules (which a database that is down never sends) must still stop at once
    on SIGTERM, well within systemd's TimeoutStopSec, and must not wait for rules the watcher
    has given up reading. TimeoutError when none came within ``timeout`` seconds."""
    waiters = [asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(
            [*waiters, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
    if not done:
        raise TimeoutError

"""``relay run``'s worker: it runs the stages against the outbox and holds no policy of its own.

Each stage has a connection of its own, so that none waits for another: fan-out
(relay/delivery/fanout.py) matches new changes and sweeps; the claim loop here leases due
deliveries (relay/delivery/claim.py); one task per claimed delivery renders (relay/render/) and
sends it (relay/delivery/send.py); the recorder writes outcomes in batches
(relay/delivery/record.py). A fourth connection LISTENs, and the rule watcher
(relay/rules/watch.py) keeps a fifth. When there is nothing to do, each sleeps until a NOTIFY on
relay_outbox, the poll interval, or a stop request, whichever comes first.

Whatever one change, rule or webhook does, it costs only itself: matching is isolated per rule
and change (relay/delivery/plan.py), each delivery's task turns any exception into an outcome
with a one-line reason, a delivery claimed past its max attempts (its earlier attempts never
reported back) fails instead of going out again, and an unexpected error in a whole session is
logged and the session started again rather than ending the process. What happens to a delivery
after an attempt is the retry policy's call (relay/delivery/policy.py), whether its webhook is
paused for a cool-down the breaker's (relay/delivery/breaker.py); a webhook paused until resumed
(by the operator, or by the recorder once its endpoint is dead: relay/delivery/record.py) is
not claimed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import random
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
from relay.delivery import claim
from relay.delivery.breaker import Breaker
from relay.delivery.claimer import Claimer, Hold
from relay.delivery.fanout import FanOut
from relay.delivery.holding import Holding
from relay.delivery.metrics import Metrics
from relay.delivery.policy import RetryPolicy
from relay.delivery.record import Recorder, Result
from relay.delivery.reporter import Reporter
from relay.delivery.send import Outcome, Sender, over_limit
from relay.model import Batch, Request, Webhook
from relay.reasons import Secrets, describe, masking, reason
from relay.render.pool import RenderPool
from relay.render.request import RenderError, env_values, secrets_of
from relay.rules.ruleset import Rule
from relay.rules.watch import RuleWatcher
from relay.settings import HELD_PER_CHANGE_BYTE, Settings
from relay.store import AsyncStore, Claimed, application_name

log = structlog.get_logger("relay.worker")

SESSION = {"jit": "off", "relay.schema_version": str(sqlfiles.latest_version())}
"""The settings of every session of the relay. jit: the relay's queries are short and many, and
JIT compilation, which the planner's cost estimate for the claim query can trigger, took 240 ms
of a 256 ms claim. relay.schema_version: what it was built for (relay.refuse_other_releases,
0023, refuses deliveries to a session built for another schema version, so that a relay left
running across an upgrade stops rather than send under ids of its own making)."""
LEASE_MARGIN = 0.2
"""The part of a lease a request leaves for its outcome to be written: a request is cut when
what is left of its delivery's lease falls to this (a webhook's timeout longer than the lease
otherwise let the lease end while the request was in flight: two relays then sent to it past
its concurrency, the same change at once)."""
PAUSED_RECHECK_SECONDS = 1.0
"""When a delivery put back because its webhook is paused is due again: the claims leave a
paused webhook alone, so it waits for the resume whatever this says; 1 s lets it go at once
after a resume, which clears the pause."""
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


class SlotTooFar(Exception):
    """The request's rate-limit slot comes later than its lease allows waiting for (a slow rate
    shared by many relays): it goes back unsent, due at its slot (the slot is lost, which only
    slows the webhook down)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds
        self.why = f"rate limit: its request slot is {seconds:.1f} s away"


class Worker:
    """One relay process. Each claimed delivery is a task that waits for one of its webhook's
    slots (its ``concurrency``, which the claim keeps across relays, else
    ``webhook_concurrency``), for its rate-limit slot if it has one, sends, and hands its
    outcome to the recorder. The claim query is told how many deliveries this process holds per
    webhook, so a slow receiver holds only a bounded number of claims, never holds up other
    work, and nothing waits in memory while its lease runs out. A webhook that keeps failing is
    paused for a cool-down (each process keeps its own count)."""

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
            on_load=lambda rules: self.secrets.update("webhooks", rules.secrets()),
        )
        self.max_in_flight = settings.batch_size * 4
        self.holding = Holding(settings)
        self._pacing: AConn | None = None
        """The connection that takes request slots of webhooks with a rate limit (take_slot),
        opened at the first such request of a session."""
        self._pacing_opened = asyncio.Lock()
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
        self._wake = asyncio.Event()
        """Set when there may be deliveries to claim: new ones fanned out, or room freed."""
        self.claimer = Claimer(
            settings, self.relay_id, self.rules, self.holding, self.breaker, self._wake.set
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
                while not stop.is_set():
                    self._connected, self._connected_at = False, None
                    try:
                        await _first_of(self.rules.loaded, stop, watcher, timeout=30)
                        if watcher.done():
                            watcher.result()  # the rules cannot be read: a missing grant, say
                        if stop.is_set():
                            break
                        await self._session(stop, sender, watcher)
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
        self, stop: asyncio.Event, sender: Sender, watcher: asyncio.Task[None]
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
                    if not await self._claim_round(store, recorder, sender):
                        await self._idle(stop, helpers)
            finally:
                self._stopping = True
                await self._drain()
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self._close_pacing()
            await store.release_leases(self.relay_id)
            log.info("relay stopped", relay_id=self.relay_id)

    async def _connect(self) -> AConn:
        """Connections carry the relay's id, so operators can see (and tests can cut) them."""
        return await aconnect(
            self.dsn,
            application_name=application_name(self.relay_id),
            settings=SESSION,
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

    async def _claim_round(self, store: AsyncStore, recorder: Recorder, sender: Sender) -> bool:
        """Claim what the room left allows (the claimer's call), a task for each claim."""
        return await self.claimer.claim_round(
            store,
            lambda: self.max_in_flight - len(self._in_flight),
            functools.partial(self._start, recorder, sender),
        )

    def _start(self, recorder: Recorder, sender: Sender, hold: Hold) -> None:
        batch = hold.items[0].batch_id is not None
        work = self._process_batch if batch else self._process
        task = asyncio.create_task(work(hold, recorder, sender))
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._let_go, hold))

    def _let_go(self, hold: Hold, task: asyncio.Task[None]) -> None:
        """The task of a delivery (or batch) ended: whatever it held goes back."""
        self._in_flight.discard(task)
        hold.release()

    async def _process(self, hold: Hold, recorder: Recorder, sender: Sender) -> None:
        item = hold.items[0]
        policy = RetryPolicy.of(self.settings, self.rules.ruleset.webhook(item.webhook_id))
        try:
            if item.attempt > policy.max_attempts:
                result = self._exhausted(item, policy)
            else:
                async with hold.slot():
                    if self._stopping:
                        return  # not sent: release_leases gives it back
                    paused, why = self._held_back(item.webhook_id)
                    if paused > 0:
                        result = self._put_back(item, paused, why)
                    else:
                        try:
                            outcome = await self._attempt(item, sender)
                        except SlotTooFar as far:
                            result = self._put_back(item, far.seconds, far.why)
                        else:
                            result = self._result(item, policy, outcome)
                            self.reporter.attempt(item, result)
        finally:
            hold.answered()
        with hold.recording():
            try:
                await recorder.record(result)
                self.reporter.counted(item, result)
            except Exception as exc:  # the lease expires and another attempt follows
                self.reporter.not_recorded(item, exc)

    async def _process_batch(self, hold: Hold, recorder: Recorder, sender: Sender) -> None:
        """A batch goes as one request and its outcome is each change's; a change that cannot
        go (out of attempts, too large, its rule gone, or one the template fails on alone)
        fails alone, and the rest go without it."""
        items = hold.items
        hook_id = hold.webhook_id
        policy = RetryPolicy.of(self.settings, self.rules.ruleset.webhook(hook_id))
        try:
            async with hold.slot():
                if self._stopping:
                    return  # not sent: release_leases gives it back
                paused, why = self._held_back(hook_id)
                if paused > 0:
                    results = [self._put_back(item, paused, why) for item in items]
                else:
                    try:
                        results = await self._attempt_batch(items, policy, sender)
                    except SlotTooFar as far:
                        results = [self._put_back(item, far.seconds, far.why) for item in items]
        finally:
            hold.answered()
        with hold.recording():
            written = await asyncio.gather(
                *(recorder.record(result) for result in results), return_exceptions=True
            )
        for item, result, error in zip(items, results, written, strict=True):
            if isinstance(error, BaseException):
                self.reporter.not_recorded(item, error)
            else:
                self.reporter.counted(item, result, timed=item is items[0])

    async def _attempt_batch(
        self, items: list[Claimed], policy: RetryPolicy, sender: Sender
    ) -> list[Result]:
        results: dict[int, Result] = {}
        going: list[tuple[Claimed, Rule]] = []
        for item in items:
            target = self._target(item)
            if item.attempt > policy.max_attempts:
                results[item.outbox_id] = self._exhausted(item, policy)
            elif isinstance(target, str):
                results[item.outbox_id] = self._alone(item, policy, target)
            else:
                going.append((item, target[1]))
        if going:
            hook = going[0][1].webhook
            if going[0][0].batch_again:
                whole = await self._try_render(hook, going)
                if isinstance(whole, str):
                    results.update(self._waits_whole([item for item, _ in going], policy, whole))
                request = whole if isinstance(whole, Request) else None
                left_out: dict[int, str] = {}
                later: set[int] = set()
            else:
                request, left_out, later = await self._fit_batch(hook, going)
            for item, _ in going:
                if item.outbox_id in left_out:
                    results[item.outbox_id] = self._alone(item, policy, left_out[item.outbox_id])
                elif item.outbox_id in later:
                    results[item.outbox_id] = self._later(item)
            sent = [item for item, _ in going if item.outbox_id not in results]
            if sent:
                assert request is not None, "_fit_batch gives a request whenever a change goes"
                replayed = any(item.replay for item in sent)
                superseded = ", ".join(
                    f"{item.outbox_id}:{item.superseded_by}"
                    for item in sent
                    if item.superseded_by is not None
                )
                outcome = await self._send(
                    hook,
                    request,
                    sender,
                    replay=replayed,
                    superseded=superseded or None,
                    leased_at=min(item.leased_at for item in sent),
                )
                self.reporter.turned(sent[0].webhook_id, outcome)
                jitter = random.uniform(0.8, 1.2)
                decided = [(item, *policy.after(outcome, item.attempt, jitter)) for item in sent]
                # The batch's changes that go on are due again together, after the longest of
                # their delays (each change's own attempts decide whether it goes on at all).
                retry_in = max(
                    (wait for _, status, wait in decided if status == "pending"), default=0.0
                )
                for item, status, _ in decided:
                    results[item.outbox_id] = Result.of(
                        item, status, retry_in if status == "pending" else 0.0, outcome
                    )
                going_on = [item for item, status, _ in decided if status == "pending"]
                shown = going_on[0] if going_on else sent[0]
                self.reporter.batch(sent, results[shown.outbox_id])
        return [results[item.outbox_id] for item in items]

    def _waits_whole(
        self, items: list[Claimed], policy: RetryPolicy, why: str
    ) -> dict[int, Result]:
        """A batch claimed before (its request sent under its id, as far as anyone knows) that
        does not render whole now (RELAY_MAX_BODY_BYTES lowered, its template changed): nothing
        goes, and it is tried again whole, as the retry policy allows. Sending a part under its
        id would put the rest under a new one, and a receiver that dropped the ids it had
        processed would take those changes twice."""
        outcome = Outcome.not_sent(
            reason(f"not sent: its batch was sent before and goes whole or not at all: {why}"),
            permanent=False,
        )
        decided = [(item, *policy.after(outcome, item.attempt, 1.0)) for item in items]
        retry_in = max((wait for _, status, wait in decided if status == "pending"), default=0.0)
        results = {
            item.outbox_id: Result.of(item, status, retry_in if status == "pending" else 0, outcome)
            for item, status, _ in decided
        }
        self.reporter.batch(items, results[items[0].outbox_id])
        return results

    def _alone(self, item: Claimed, policy: RetryPolicy, why: str) -> Result:
        """A change of a batch that cannot go, failed with the reason (the rest go on)."""
        outcome = Outcome.not_sent(reason(why), permanent=True)
        status, retry_in = policy.after(outcome, item.attempt, 1.0)
        result = Result.of(item, status, retry_in, outcome)
        self.reporter.attempt(item, result)
        return result

    @staticmethod
    def _later(item: Claimed) -> Result:
        """A change the batch had no room for: it leaves the batch unsent and uncounted, and
        goes in a later one."""
        outcome = Outcome.not_sent("not sent: no room in its batch", permanent=False)
        return Result.of(item, "pending", 0.0, outcome, counted=False, unbatch=True)

    async def _fit_batch(
        self, hook: Webhook, going: list[tuple[Claimed, Rule]]
    ) -> tuple[Request | None, dict[int, str], set[int]]:
        """The request for as much of the batch as renders within the sandbox's budgets and
        fits RELAY_MAX_BODY_BYTES, from its start: the whole batch; else, when its first change
        fails alone, that change fails (with its reason) and the rest wait for a later batch;
        else the first half, quarter... goes and the rest waits. At most about log2(size) + 2
        renders (each within MAX_SECONDS), so a claim never outlives its lease on them.
        Returns the request (None when nothing goes), the changes that fail with why, and
        those that wait."""

        def rest(count: int) -> set[int]:
            return {item.outbox_id for item, _ in going[count:]}

        whole = await self._try_render(hook, going)
        if isinstance(whole, Request):
            return whole, {}, set()
        first = await self._try_render(hook, going[:1]) if len(going) > 1 else whole
        if not isinstance(first, Request):
            return None, {going[0][0].outbox_id: first}, rest(1)
        count = len(going) // 2
        while count > 1:
            part = await self._try_render(hook, going[:count])
            if isinstance(part, Request):
                return part, {}, rest(count)
            count //= 2
        return first, {}, rest(1)

    async def _try_render(self, hook: Webhook, going: list[tuple[Claimed, Rule]]) -> Request | str:
        """The batch's request, or why it cannot go (rendering failed, or its body is over
        RELAY_MAX_BODY_BYTES)."""
        try:
            request = await self._render_batch(hook, going)
        except RenderError as exc:
            return reason(str(exc))
        except Exception as exc:  # outside the templates: still one line, secrets out
            return f"rendering: {describe(exc, secrets_of(hook))}"
        size, limit = len(request.body), self.settings.max_body_bytes
        return over_limit("body", size, limit) if size > limit else request

    async def _render_batch(self, hook: Webhook, going: list[tuple[Claimed, Rule]]) -> Request:
        batch_id = going[0][0].batch_id
        assert batch_id is not None, "claim_batch numbers every batch it claims"
        batch = Batch(
            batch_id,
            tuple(item.change for item, _ in going),
            tuple(rule.action_data for _, rule in going),
        )
        delivery_id = going[0][0].batch_delivery_id
        assert delivery_id is not None, "claim_batch draws the batch's id with its number"
        return await self.renders.request(
            hook, batch, timestamp=int(time.time()), delivery_id=delivery_id
        )

    def _target(self, item: Claimed) -> tuple[Webhook, Rule] | str:
        """The webhook and rule to deliver with, or why there is none any more (or why the
        change can never be sent)."""
        refused = claim.refusal(item, self.settings.max_body_bytes)
        if refused:
            return refused
        if item.related_problem is not None:
            return item.related_problem

        rule = self.rules.ruleset.by_id(item.rule_id)
        if rule is None or rule.webhook.id != item.webhook_id:
            return "the rule that sent this change here was disabled or removed"
        if not rule.webhook.enabled:
            return f"webhook {rule.webhook.name!r} is disabled"
        return rule.webhook, rule

    async def _attempt(self, item: Claimed, sender: Sender) -> Outcome:
        """One attempt, ending in an outcome whatever happens. Rendering and signing depend on
        the change and the webhook alone, so their failures are for good."""
        hook: Webhook | None = None
        stage = "finding its rule"
        try:
            target = self._target(item)
            if isinstance(target, str):
                return Outcome.not_sent(reason(target), permanent=True)
            hook, rule = target
            stage = "rendering"
            request = await self.renders.request(
                hook,
                item.change,
                rule.action_data,
                timestamp=int(time.time()),
                delivery_id=item.delivery_id,
            )
        except RenderError as exc:
            return Outcome.not_sent(reason(str(exc)), permanent=True)
        except Exception as exc:
            secrets = secrets_of(hook) if hook else []
            return Outcome.not_sent(reason(f"{stage}: {describe(exc, secrets)}"), permanent=True)
        superseded = None if item.superseded_by is None else str(item.superseded_by)
        return await self._send(
            hook,
            request,
            sender,
            replay=item.replay,
            superseded=superseded,
            leased_at=item.leased_at,
        )

    async def _send(
        self,
        hook: Webhook,
        request: Request,
        sender: Sender,
        *,
        replay: bool = False,
        superseded: str | None = None,
        leased_at: float | None = None,
    ) -> Outcome:
        """Send one request (a change's or a batch's); an exception that escapes the sender is
        retried like a network error (it may not happen again). A replay says so in
        X-Relay-Replay, and a change sent although a later change of its row was delivered
        (the operator asked: ``--superseded``) in X-Relay-Superseded, the later change's id
        (for a batch, ``change:later`` for each such change). Both are set here, after
        rendering: the same change renders the same way."""
        marks = {}
        if replay:
            marks["X-Relay-Replay"] = "true"
        if superseded is not None:
            marks["X-Relay-Superseded"] = superseded
        if marks:
            request = dataclasses.replace(request, headers={**request.headers, **marks})
        try:
            await self._pace(hook)
        except SlotTooFar:
            raise
        except Exception as exc:  # no slot: not sent, and tried again like a network error
            return Outcome.not_sent(reason(f"pacing: {describe(exc)}"), permanent=False)
        within = None
        if leased_at is not None:
            # The request ends before the lease does (LEASE_MARGIN of it kept for the outcome
            # to be written): past it, the claim counts it in flight no more and another relay
            # may send the delivery again, a webhook's concurrency exceeded.
            within = self.settings.lease_seconds * (1 - LEASE_MARGIN) - (
                time.monotonic() - leased_at
            )
            if within <= 0:
                return Outcome.not_sent(
                    reason("not sent: its lease ended first (RELAY_LEASE_SECONDS)"),
                    permanent=False,
                )
        try:
            outcome = await sender.send(request, hook, within)
        except Exception as exc:
            why = f"sending: {describe(exc, secrets_of(hook, request))}"
            outcome = Outcome.not_sent(why, permanent=False)
        if outcome.error is not None:
            outcome = dataclasses.replace(outcome, error=reason(outcome.error))
        return outcome

    async def _pace(self, hook: Webhook) -> None:
        """Wait for the request's slot when the webhook has a rate limit: every relay takes
        slots from the same row (take_slot), 1/rate_limit apart (RATE_SPACING of it), so the
        limit holds across relays. Called once the request is rendered, right before it is
        sent; a batch is one request, one slot."""
        if hook.rate_limit is None:
            return
        async with self._pacing_opened:
            if self._pacing is None or self._pacing.closed:
                self._pacing = await self._connect()
            conn = self._pacing
        try:
            wait = await AsyncStore(conn).take_slot(hook.id, claim.RATE_SPACING)
        except psycopg.OperationalError:
            await self._close_pacing()  # the next request connects again
            raise
        if wait > self.settings.lease_seconds / 2:
            raise SlotTooFar(wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _close_pacing(self) -> None:
        conn, self._pacing = self._pacing, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _exhausted(self, item: Claimed, policy: RetryPolicy) -> Result:
        """A delivery claimed once more than its webhook's max attempts allow: its last attempts
        never reported an outcome (a relay died or lost its lease while sending). It fails
        unsent, and this claim does not count, so its attempts stay at the limit."""
        why = policy.exhausted()
        self.reporter.exhausted(item, why)
        outcome = Outcome.not_sent(why, permanent=True)
        return Result.of(item, "failed", 0.0, outcome, counted=False)

    def _held_back(self, webhook_id: int) -> tuple[float, str]:
        """For how long, and why, a claimed delivery of this webhook must not be sent now: the
        breaker's pause, or the webhook's own (an operator's or a dead endpoint's), which the
        relay learns of with the rules (announced when relay.webhooks changes) and which lasts
        until a resume, when the claims take its deliveries again."""
        hook = self.rules.ruleset.webhook(webhook_id)
        if hook is not None and hook.paused:
            return PAUSED_RECHECK_SECONDS, f"webhook {hook.name} paused"
        return self.breaker.paused_for(webhook_id), "webhook paused by the circuit breaker"

    @staticmethod
    def _put_back(
        item: Claimed, seconds: float, why: str = "webhook paused by the circuit breaker"
    ) -> Result:
        """A delivery claimed just before its webhook was paused (or whose rate-limit slot came
        too late for its lease) goes back unsent, due when the pause ends (the slot comes), and
        its attempt does not count."""
        outcome = Outcome.not_sent(f"not sent: {why}", permanent=False)
        return Result.of(item, "pending", seconds, outcome, counted=False)

    def _result(self, item: Claimed, policy: RetryPolicy, outcome: Outcome) -> Result:
        self.reporter.turned(item.webhook_id, outcome)
        jitter = random.uniform(0.8, 1.2)
        status, retry_in = policy.after(outcome, item.attempt, jitter)
        return Result.of(item, status, retry_in, outcome)


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

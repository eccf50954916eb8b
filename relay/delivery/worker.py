"""``relay run``: the loop that moves changes from the outbox to the webhooks.

Four jobs share one event loop, each on its own connection so that none waits for another:
fan-out matches new changes against the rules (sql/migrations/0003_delivery.sql explains the
protocol); the claim loop leases due deliveries; one task per claimed delivery renders and sends
it; the recorder writes outcomes in batches (relay/delivery/record.py). A fourth connection LISTENs, and
the rule watcher (relay/rules/watch.py) keeps a fifth.
When there is nothing to do, each sleeps until a NOTIFY on relay_outbox, the poll interval, or
a stop request, whichever comes first.

Whatever one change, rule or webhook does, it costs only itself: matching is isolated per rule
and change (relay/delivery/fanout.py), each delivery's task turns any exception into an outcome with a
one-line reason, a delivery claimed past its max attempts (its earlier attempts never
reported back) fails instead of going out again, and an unexpected error in a whole session is
logged and the session started again rather than ending the process.
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
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from relay.db import first_line
from relay.delivery import fanout, window
from relay.delivery.holding import Holding
from relay.delivery.policy import RetryPolicy
from relay.delivery.record import Recorder, Result
from relay.delivery.send import Outcome, Sender, over_limit
from relay.reasons import describe, reason, redact
from relay.render.pool import RenderPool
from relay.render.request import Change, RenderError, Webhook
from relay.rules import ruleset
from relay.rules.ruleset import Rule
from relay.rules.watch import RuleWatcher
from relay.service.metrics import Metrics
from relay.service.settings import HELD_PER_CHANGE_BYTE, Settings
from relay.sqlfiles import query

log = structlog.get_logger("relay.delivery.worker")

AConn = psycopg.AsyncConnection[Any]
NO_JIT = "-c jit=off"
"""The relay's queries are short and many: JIT compilation, which the planner's cost estimate
for the claim query can trigger, took 240 ms of a 256 ms claim."""
ANALYZE_AFTER_CHANGES = 5_000
"""Changes fanned out by this relay after which it refreshes the delivery tables' statistics
(relay.refresh_statistics), so claim plans are right from the start of a burst; then again each
time the count doubles (an ANALYZE of a million-row table is not free; autovacuum takes over)."""
PURGE_BATCH = 5_000
PURGE_BATCHES_PER_SWEEP = 4
BACKLOG_GAUGE_SECONDS = 10.0
"""How often the backlog gauges are refreshed (a count of pending changes), when metrics are on."""
SESSION_SETTLED_SECONDS = 60.0
"""A session that failed after running this long waits only briefly before the next one; one
that fails sooner waits twice as long as the last (up to 30 s)."""
PREFETCH = 2
"""Deliveries claimed per webhook, as a multiple of its concurrency: the next ones are ready
when a request ends, instead of a claim round trip later. They wait for a slot at most about
one request's time, well inside their lease."""


@dataclass(frozen=True)
class Claimed:
    outbox_id: int
    webhook_id: int
    rule_id: int | None
    attempt: int
    """Attempts since the delivery was (last) armed: what RELAY_MAX_ATTEMPTS counts."""
    number: int
    """The attempt's number across re-queues: what the log and relay.attempts show."""
    change: Change
    held_bytes: int
    """What this delivery counts in the relay's Holding until its task ends."""
    refused: str | None = None
    """Why it cannot be sent without even reading it: its change is too large."""


class Worker:
    """One relay process. Each claimed delivery is a task that waits for one of its webhook's
    ``webhook_concurrency`` slots, sends, and hands its outcome to the recorder. The claim query
    is told how many deliveries this process holds per webhook, so a slow receiver holds only a
    bounded number of claims, never holds up other work, and nothing waits in memory while its
    lease runs out. A webhook that keeps failing is paused for a cool-down (each process keeps
    its own count)."""

    def __init__(self, settings: Settings, dsn: str, *, relay_id: str | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}"
        self._started = datetime.now(UTC)
        self.renders = RenderPool(settings.template_env_globs)
        self.rules = RuleWatcher(dsn, application_name=f"relay run {self.relay_id}")
        self.max_in_flight = settings.batch_size * 4
        self._held: dict[int, int] = defaultdict(int)
        """Per webhook: deliveries claimed and not yet answered (waiting for a slot or sent)."""
        self.holding = Holding(settings)
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._failures: dict[int, int] = defaultdict(int)
        self._paused_until: dict[int, float] = {}
        self._wake = asyncio.Event()
        """Set when there may be deliveries to claim: new ones fanned out, or room freed."""
        self._fan_out_wake = asyncio.Event()
        self._capture_changed = False
        """A capture function no longer fits its table (NOTIFY relay_capture): regenerate."""
        self._installation = ""
        self._stopping = False
        self._connected = False
        self._next_fan_out = 0.0
        self._fanned = 0
        self._analyze_at = ANALYZE_AFTER_CHANGES
        self._in_flight: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.metrics.held_bytes.set_function(lambda: self.holding.total * HELD_PER_CHANGE_BYTE)

    @property
    def ready(self) -> bool:
        """Connected to the database and listening (what /readyz and systemd's READY=1 say)."""
        return self._connected

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then let in-flight requests finish within the grace
        period and release whatever is left to other relays.

        A lost database connection is retried with backoff and logged once per outage; work
        resumes from the database's state (whatever is due, including the backlog), so nothing
        depends on what this process remembered."""
        watcher = asyncio.create_task(self.rules.run())
        backoff = 0.5
        outage = False
        try:
            async with Sender(self.settings.max_body_bytes) as sender:
                while not stop.is_set():
                    self._connected = False
                    began = time.monotonic()
                    try:
                        await _first_of(self.rules.loaded, stop, timeout=30)
                        if stop.is_set():
                            break
                        await self._session(stop, sender)
                        continue
                    except (psycopg.OperationalError, TimeoutError) as exc:
                        if self._connected or not outage:
                            log.warning("database unavailable, retrying", error=first_line(exc))
                            backoff = 0.5
                        outage = True
                    except psycopg.errors.InsufficientPrivilege:
                        raise  # a missing grant: waiting will not help (relay run says so)
                    except Exception as exc:
                        # A fault of relay's own: start the session again rather than stop
                        # delivering (the work is all in the database), waiting longer each
                        # time it comes back at once.
                        log.exception("relay session failed, starting again", error=describe(exc))
                        if time.monotonic() - began > SESSION_SETTLED_SECONDS:
                            backoff = 0.5
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            watcher.cancel()
            await self.renders.close()

    async def _session(self, stop: asyncio.Event, sender: Sender) -> None:
        """One connected stretch: claims, fan-out, outcomes and notifications, a connection
        each. Any of them failing ends the stretch (run() reconnects)."""
        async with (
            await self._connect() as conn,
            await self._connect() as fanning,
            await self._connect() as recording,
            await self._connect() as listener,
        ):
            await listener.execute("LISTEN relay_outbox")
            await listener.execute("LISTEN relay_capture")
            cur = await conn.execute(query("installation_id"))
            installation = await cur.fetchone()
            self._installation = installation[0] if installation else ""
            await conn.execute(
                query("relay_started"), {"relay_id": self.relay_id, "started_at": self._started}
            )
            self._connected = True
            self._stopping = False
            self._next_fan_out = 0.0  # the backlog first
            log.info("relay connected", relay_id=self.relay_id)
            recorder = Recorder(self.relay_id)
            helpers = [
                asyncio.create_task(self._listen(listener)),
                asyncio.create_task(recorder.run(recording)),
                asyncio.create_task(self._fan_out_loop(fanning)),
            ]
            try:
                while not stop.is_set():
                    for helper in helpers:
                        if helper.done():
                            helper.result()  # its connection died: raise the error
                    if not await self._claim_round(conn, recorder, sender):
                        await self._idle(stop, helpers)
            finally:
                self._stopping = True
                await self._drain()
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            await conn.execute(query("release_leases"), {"relay_id": self.relay_id})
            log.info("relay stopped", relay_id=self.relay_id)

    async def _connect(self) -> AConn:
        """Connections carry the relay's id, so operators can see (and tests can cut) them."""
        return await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=f"relay run {self.relay_id}",
            options=NO_JIT,
        )

    async def _listen(self, listener: AConn) -> None:
        async for notification in listener.notifies():
            if notification.channel == "relay_capture":
                self._capture_changed = True
                self._fan_out_wake.set()
                continue
            self._next_fan_out = 0.0
            self._fan_out_wake.set()
            self._wake.set()

    async def _idle(self, stop: asyncio.Event, helpers: list[asyncio.Task[Any]]) -> None:
        """Sleep until there may be something to claim, a helper ends, stop, or the poll
        interval (retries come due without a notification)."""
        self._wake.clear()
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(
            [*waiters, *helpers],
            timeout=self.settings.poll_interval,
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

    async def _claim_round(self, conn: AConn, recorder: Recorder, sender: Sender) -> bool:
        room = self.max_in_flight - len(self._in_flight)
        claimed = await self._claim(conn, min(room, self.settings.batch_size)) if room else []
        for item in claimed:
            task = asyncio.create_task(self._process(item, recorder, sender))
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._let_go, item))
        return bool(claimed)

    def _let_go(self, item: Claimed, task: asyncio.Task[None]) -> None:
        """The delivery's task ended: its change and body are gone, and so is their room."""
        self._in_flight.discard(task)
        if item.held_bytes:
            self.holding.give_back(item.webhook_id, item.held_bytes)
            self._wake.set()

    async def _fan_out_loop(self, conn: AConn) -> None:
        """Fan out whenever there may be new changes: after a notification, a full batch, or
        the poll interval; every lease period, also finish what a dead relay left."""
        next_sweep = next_gauges = 0.0
        while True:
            if self._capture_changed:
                self._capture_changed = False
                await conn.execute(query("refresh_capture"))
            if time.monotonic() >= next_sweep:
                behind = await self._sweep(conn)
                # A purge with more to do comes back in a second, not a lease period.
                next_sweep = time.monotonic() + (1.0 if behind else self.settings.lease_seconds)
            if self.settings.metrics_address and time.monotonic() >= next_gauges:
                next_gauges = time.monotonic() + BACKLOG_GAUGE_SECONDS
                await self._measure_backlog(conn)
            self._fan_out_wake.clear()
            wait = self._next_fan_out - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._fan_out_wake.wait(), wait)
                continue
            if await self._fan_out(conn):
                self._wake.set()

    async def _sweep(self, conn: AConn) -> bool:
        """Finish changes left unfinished by a relay that died (see unfinished_changes),
        regenerate capture functions a table's DDL left behind (when no notification said so:
        writers can turn NOTIFY off), and delete finished changes and attempts past their
        retention, a batch at a time so no lock is held long, and a few batches per sweep so
        that matching new changes (on the same connection) never waits long. True when a purge
        has more to do."""
        await conn.execute(query("refresh_capture"))
        await conn.execute(query("relay_seen"), {"relay_id": self.relay_id})
        cur = await conn.execute(query("unfinished_changes"), {"limit": 10_000})
        ids = [row[0] for row in await cur.fetchall()]
        if ids:
            await conn.execute(query("finish_changes"), {"ids": ids})
        behind = False
        for name, days in (
            ("purge_changes", self.settings.retention_days),
            ("purge_attempts", self.settings.attempt_retention_days),
        ):
            if not days:
                continue
            for _ in range(PURGE_BATCHES_PER_SWEEP):
                cur = await conn.execute(
                    query(name), {"seconds": days * 86_400, "limit": PURGE_BATCH}
                )
                if cur.rowcount < PURGE_BATCH:
                    break
            else:
                behind = True
        return behind

    async def _fan_out(self, conn: AConn) -> int:
        """One batch, in two round trips: the statements are pipelined (the event loop is busy
        sending, and each round trip waits for its turn: eight of them capped fan-out, and so
        delivery, at a third of what the sender could do)."""
        # Set before looking, so that a notification arriving meanwhile brings it forward again.
        self._next_fan_out = time.monotonic() + self.settings.poll_interval
        async with conn.pipeline(), conn.transaction():
            async with (
                conn.cursor(row_factory=dict_row) as cur,
                conn.cursor(row_factory=dict_row) as cur_gaps,
            ):
                await cur.execute(query("changes_to_fan_out"), {"limit": self.settings.batch_size})
                await cur_gaps.execute(query("fan_out_gaps"))
                found = await cur.fetchall()
                gaps = await cur_gaps.fetchall()
            if not found:
                return 0  # another relay holds the fan-out lock
            full = len(found) == self.settings.batch_size
            if full:
                self._next_fan_out = 0.0
            looked, moved = window.moved(found, gaps, full)
            if moved != looked:
                await conn.execute(query("move_fan_out_window"), moved.parameters())
            rows = [row for row in found if row["fresh"]]
            if not rows:
                return 0
            # Read after the changes: every rule committed before them is in this version.
            cur_version = await conn.execute(query("rules_version"))
            version = await cur_version.fetchone()
            await self.rules.catch_up(conn, int(version[0]) if version else 0)
            ruleset = self.rules.ruleset
            ready, to_read = fanout.sort_out(rows, ruleset, self.settings.max_body_bytes)
            plan = fanout.plan(ready, ruleset)
            # A quarter of the room at a time: claims go on meanwhile.
            for group in fanout.groups(to_read, self.holding.capacity // 4):
                await self._match_read(conn, group, plan, ruleset)
            self._count_plan(plan, len(rows))
            for name, parameters in plan.statements():
                await conn.execute(query(name), parameters)
        self._fanned += len(rows)
        if self._fanned >= self._analyze_at:
            self._analyze_at *= 2
            await conn.execute(query("refresh_statistics"))
        return len(rows)

    async def _match_read(
        self,
        conn: AConn,
        group: list[Mapping[str, Any]],
        plan: fanout.Plan,
        ruleset: ruleset.RuleSet,
    ) -> None:
        """Read the images of a group of changes that conditions look at, once they fit in
        the room the relay has, and match them."""
        async with self.holding.reserve(sum(row["bytes"] for row in group)):
            cur = await conn.execute(query("change_rows"), {"ids": [row["id"] for row in group]})
            images = {row[0]: row[1:] for row in await cur.fetchall()}
            plan.add((fanout.arrival(row, *images[row["id"]]) for row in group), ruleset)

    def _count_plan(self, plan: fanout.Plan, changes: int) -> None:
        failed = plan.failed
        for outbox_id, webhook_id, error in zip(
            failed.outbox_ids, failed.webhook_ids, failed.errors, strict=True
        ):
            log.warning(
                "delivery",
                outbox_id=outbox_id,
                webhook=self._webhook_name(webhook_id),
                attempt=1,
                outcome="failed",
                error=error,
            )
        for outbox_id, error in plan.unmatchable.items():
            log.error("change not matched", outbox_id=outbox_id, outcome="failed", error=error)
        matched = set(plan.outbox_ids)
        failing = (set(failed.outbox_ids) - matched) | set(plan.unmatchable)
        self.metrics.changes.labels("matched").inc(len(matched))
        self.metrics.changes.labels("failed").inc(len(failing))
        self.metrics.changes.labels("skipped").inc(changes - len(matched) - len(failing))

    async def _claim(self, conn: AConn, limit: int) -> list[Claimed]:
        window = self.settings.webhook_concurrency * PREFETCH
        held = {hook: n for hook, n in self._held.items() if n}
        now = time.monotonic()
        for hook, until in self._paused_until.items():
            if until > now:  # a paused webhook has no room
                held[hook] = window
            elif self._failures.get(hook, 0) >= self.settings.breaker_failures:
                # After the cool-down, one probe at a time until a request succeeds.
                held[hook] = window if held.get(hook) else window - 1
        holding = self.holding
        busy = sorted(set(held) | {hook for hook, n in holding.by_webhook.items() if n})
        most = self.settings.max_body_bytes
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("claim_deliveries"),
                {
                    "limit": limit,
                    "lease_seconds": self.settings.lease_seconds,
                    "relay_id": self.relay_id,
                    "per_webhook": window,
                    "busy_ids": busy,
                    "busy_counts": [held.get(hook, 0) for hook in busy],
                    "busy_bytes": [holding.by_webhook.get(hook, 0) for hook in busy],
                    "bytes_free": holding.room,
                    "bytes_per_webhook": holding.per_webhook,
                    "max_change_bytes": most,
                },
            )
            rows = await cur.fetchall()
        claimed = []
        for r in rows:
            size = r["change_bytes"]
            refused = over_limit("change", size, most) if size > most else None
            item = Claimed(
                r["outbox_id"],
                r["webhook_id"],
                r["rule_id"],
                r["attempts"],
                r["attempt_number"],
                ruleset.change_from_row(r),
                0 if refused else size,
                refused,
            )
            self._held[item.webhook_id] += 1
            holding.take(item.webhook_id, item.held_bytes)
            claimed.append(item)
        return claimed

    def _slot(self, webhook_id: int) -> asyncio.Semaphore:
        slot = self._slots.get(webhook_id)
        if slot is None:
            slot = self._slots[webhook_id] = asyncio.Semaphore(self.settings.webhook_concurrency)
        return slot

    async def _process(self, item: Claimed, recorder: Recorder, sender: Sender) -> None:
        try:
            if item.attempt > self._policy(item).max_attempts:
                result = self._exhausted(item)
            else:
                async with self._slot(item.webhook_id):
                    if self._stopping:
                        return  # not sent: release_leases gives it back
                    paused = self._paused_until.get(item.webhook_id, 0.0) - time.monotonic()
                    if paused > 0:
                        result = self._put_back(item, paused)
                    else:
                        result = self._result(item, await self._attempt(item, sender))
                        self._log(item, result)
        finally:
            # Room for another claim as soon as the receiver has answered. The delivery stays
            # pending (so a later change to its row still waits) until its outcome is written.
            self._held[item.webhook_id] -= 1
            self._wake.set()
        try:
            await recorder.record(result)
            self._count(item, result)
        except Exception as exc:  # the lease expires and another attempt follows
            log.error("could not record outcome", outbox_id=item.outbox_id, error=describe(exc))

    def _target(self, item: Claimed) -> tuple[Webhook, Rule] | str:
        """The webhook and rule to deliver with, or why there is none any more (or why the
        change can never be sent)."""
        if item.refused:
            return item.refused
        rule = self.rules.ruleset.by_id(item.rule_id)
        if rule is None or rule.webhook.id != item.webhook_id:
            return "the rule that sent this change here was disabled or removed"
        if not rule.webhook.enabled:
            return f"webhook {rule.webhook.name!r} is disabled"
        return rule.webhook, rule

    async def _attempt(self, item: Claimed, sender: Sender) -> Outcome:
        """One attempt, ending in an outcome whatever happens. Rendering and signing depend on
        the change and the webhook alone, so their failures are for good; an exception that
        escapes the sender is retried like a network error (it may not happen again)."""
        hook: Webhook | None = None
        stage = "finding its rule"
        try:
            target = self._target(item)
            if isinstance(target, str):
                outcome = _not_sent(target, permanent=True)
            else:
                hook, rule = target
                stage = "rendering"
                request = await self.renders.request(
                    hook,
                    item.change,
                    rule.action_data,
                    timestamp=int(time.time()),
                    source=self._installation,
                )
                stage = "sending"
                outcome = await sender.send(request, hook)
        except RenderError as exc:
            outcome = _not_sent(str(exc), permanent=True)
        except Exception as exc:
            secrets = hook.secret.splitlines() if hook else []
            why = f"{stage}: {redact(describe(exc), secrets)}"
            outcome = _not_sent(why, permanent=stage != "sending")
        if outcome.error is not None:
            outcome = dataclasses.replace(outcome, error=reason(outcome.error))
        return outcome

    async def _measure_backlog(self, conn: AConn) -> None:
        cur = await conn.execute(query("backlog_summary"))
        row = await cur.fetchone()
        if row:
            self.metrics.backlog.set(row[0])
            self.metrics.oldest_pending.set(row[1])

    def _policy(self, item: Claimed) -> RetryPolicy:
        return RetryPolicy.of(self.settings, self.rules.ruleset.webhook(item.webhook_id))

    def _webhook_name(self, webhook_id: int) -> str:
        webhook = self.rules.ruleset.webhook(webhook_id)
        return webhook.name if webhook else str(webhook_id)

    def _count(self, item: Claimed, result: Result) -> None:
        if not result.counted:
            return
        name = self._webhook_name(item.webhook_id)
        outcome = "retry" if result.status == "pending" else result.status
        self.metrics.deliveries.labels(name, outcome).inc()
        if result.outcome.sent:
            self.metrics.attempt_seconds.labels(name).observe(result.outcome.duration)
        if result.status == "delivered":
            lag = time.time() - item.change.created_at.timestamp()
            self.metrics.lag_seconds.labels(name).observe(max(lag, 0.0))

    def _breaker(self, item: Claimed, outcome: Outcome) -> None:
        """Count the receiver's consecutive failures; pause it when they reach the limit, and
        resume it at the first success. Our own errors (templates, rules) do not count."""
        hook = item.webhook_id
        if outcome.ok:
            if self._failures.pop(hook, 0) >= self.settings.breaker_failures:
                log.info("webhook resumed", webhook_id=hook)
                self.metrics.paused.labels(self._webhook_name(hook)).set(0)
            self._paused_until.pop(hook, None)
            return
        if not outcome.sent:
            return
        self._failures[hook] += 1
        if self._failures[hook] >= self.settings.breaker_failures:
            if self._paused_until.get(hook, 0.0) < time.monotonic():
                log.warning(
                    "webhook paused",
                    webhook_id=hook,
                    failures=self._failures[hook],
                    seconds=self.settings.breaker_cooldown_seconds,
                    error=outcome.error,
                )
            self._paused_until[hook] = time.monotonic() + self.settings.breaker_cooldown_seconds
            self.metrics.paused.labels(self._webhook_name(hook)).set(1)

    def _exhausted(self, item: Claimed) -> Result:
        """A delivery claimed once more than its webhook's max attempts allow: its last attempts
        never reported an outcome (a relay died or lost its lease while sending). It fails
        unsent, and this claim does not count, so its attempts stay at the limit."""
        policy = self._policy(item)
        why = (
            f"failed after {policy.max_attempts} attempts ({policy.attempts_from}); the last ones "
            "never reported an outcome (a relay stopped or lost its lease while sending)"
        )
        log.warning(
            "delivery",
            outbox_id=item.outbox_id,
            webhook=self._webhook_name(item.webhook_id),
            attempt=item.number - 1,
            outcome="failed",
            error=why,
        )
        outcome = _not_sent(why, permanent=True)
        return Result(item.outbox_id, item.webhook_id, item.number, "failed", 0.0, outcome, False)

    @staticmethod
    def _put_back(item: Claimed, seconds: float) -> Result:
        """A delivery claimed just before its webhook was paused goes back unsent, due when the
        pause ends, and its attempt does not count."""
        outcome = Outcome(
            ok=False,
            status=None,
            duration=0.0,
            error="not sent: webhook paused by the circuit breaker",
            sent=False,
        )
        return Result(
            item.outbox_id, item.webhook_id, item.number, "pending", seconds, outcome, False
        )

    def _log(self, item: Claimed, result: Result) -> None:
        """One line per attempt: delivered, retrying (and when), or failed for good."""
        outcome = result.outcome
        fields: dict[str, Any] = {
            "outbox_id": item.outbox_id,
            "webhook": self._webhook_name(item.webhook_id),
            "attempt": item.number,
            "status_code": outcome.status,
            "duration_ms": round(outcome.duration * 1000, 1),
        }
        if result.status == "pending":
            fields["next_attempt_in_s"] = round(result.retry_in, 1)
        outcome_word = {"delivered": "delivered", "pending": "retrying"}.get(
            result.status, "failed"
        )
        log.info("delivery", **fields, outcome=outcome_word, error=outcome.error)

    def _result(self, item: Claimed, outcome: Outcome) -> Result:
        self._breaker(item, outcome)
        if outcome.ok:
            status, retry_in = "delivered", 0.0
        elif outcome.permanent or (policy := self._policy(item)).gives_up(item.attempt):
            status, retry_in = "failed", 0.0
        else:
            status = "pending"
            retry_in = policy.delay(item.attempt, random.uniform(0.8, 1.2), outcome.retry_after)
        return Result(item.outbox_id, item.webhook_id, item.number, status, retry_in, outcome)


async def _first_of(event: asyncio.Event, stop: asyncio.Event, *, timeout: float) -> None:
    """Wait for ``event`` or ``stop``, whichever comes first: a relay waiting for its rules
    (which a database that is down never sends) must still stop at once on SIGTERM, well within
    systemd's TimeoutStopSec. TimeoutError when neither came within ``timeout`` seconds."""
    waiters = [asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if not done:
        raise TimeoutError


def _not_sent(error: str, *, permanent: bool) -> Outcome:
    """The request never left: a problem on our side, not the receiver's."""
    return Outcome(
        ok=False, status=None, duration=0.0, error=error, permanent=permanent, sent=False
    )

"""``relay run``: the loop that moves changes from the outbox to the webhooks.

Each round: fan out new changes (sql/migrations/0003_delivery.sql explains the protocol), claim
due deliveries under a lease, render and send them concurrently (at most
``webhook_concurrency`` at once per webhook), record every attempt and outcome. When a round
finds nothing to do, the loop sleeps until a NOTIFY on relay_outbox, the poll interval, or a
stop request, whichever comes first.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from relay import fanout, rules
from relay.deliver import Outcome, Sender
from relay.render import Change, Renderer, RenderError, Webhook
from relay.rules import Rule
from relay.rulewatch import RuleWatcher
from relay.settings import Settings
from relay.sqlfiles import query

log = structlog.get_logger("relay.worker")

AConn = psycopg.AsyncConnection[Any]
CLAIM_GATHER_SECONDS = 0.005
ANALYZE_AFTER_CHANGES = 5_000
"""Changes fanned out by this relay after which it refreshes the delivery tables' statistics
(relay.refresh_statistics): cheap, and it keeps claim plans right through a burst."""


@dataclass(frozen=True)
class Claimed:
    outbox_id: int
    webhook_id: int
    rule_id: int | None
    attempt: int
    change: Change


class Worker:
    """One relay process. Claimed deliveries are independent tasks, each recording its own
    outcome. A webhook gets at most ``webhook_concurrency`` claims in flight from this process
    (the claim query is told how many it has), so a slow receiver occupies only its own slots,
    never holds up other work, and nothing waits in memory while its lease runs out. A webhook
    that keeps failing is paused for a cool-down (each process keeps its own count)."""

    def __init__(self, settings: Settings, dsn: str, *, relay_id: str | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}"
        self.renderer = Renderer(settings.template_env_globs)
        self.rules = RuleWatcher(dsn, application_name=f"relay run {self.relay_id}")
        self.max_in_flight = settings.batch_size * 4
        self._busy: dict[int, int] = defaultdict(int)
        self._failures: dict[int, int] = defaultdict(int)
        self._paused_until: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._connected = False
        self._next_sweep = 0.0
        self._fanned_since_analyze = 0
        self._in_flight: set[asyncio.Task[None]] = set()

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
            async with Sender() as sender:
                while not stop.is_set():
                    self._connected = False
                    try:
                        await asyncio.wait_for(self.rules.loaded.wait(), 30)
                        await self._session(stop, sender)
                    except (psycopg.OperationalError, TimeoutError) as exc:
                        if self._connected or not outage:
                            log.warning("database unavailable, retrying", error=_first_line(exc))
                            backoff = 0.5
                        outage = True
                        await asyncio.wait([asyncio.create_task(stop.wait())], timeout=backoff)
                        backoff = min(backoff * 2, 30.0)
        finally:
            watcher.cancel()

    async def _session(self, stop: asyncio.Event, sender: Sender) -> None:
        """One connected stretch: three connections (claims, outcomes, notifications)."""
        async with (
            await self._connect() as conn,
            await self._connect() as recorder,
            await self._connect() as listener,
        ):
            await listener.execute("LISTEN relay_outbox")
            self._connected = True
            log.info("relay connected", relay_id=self.relay_id)
            notices = asyncio.create_task(self._listen(listener))
            try:
                while not stop.is_set():
                    if notices.done():
                        notices.result()  # the listening connection died: raise its error
                    if not await self._round(conn, recorder, sender):
                        await self._idle(stop)
            finally:
                notices.cancel()
                await self._drain()
            await conn.execute(query("release_leases"), {"relay_id": self.relay_id})
            log.info("relay stopped", relay_id=self.relay_id)

    async def _connect(self) -> AConn:
        """Connections carry the relay's id, so operators can see (and tests can cut) them."""
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name=f"relay run {self.relay_id}"
        )

    async def _listen(self, listener: AConn) -> None:
        async for _ in listener.notifies():
            self._wake.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Sleep until a notification, a finished request (room to claim), stop, or the poll
        interval."""
        self._wake.clear()
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(
            [*waiters, *self._in_flight],
            timeout=self.settings.poll_interval,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in waiters:
            waiter.cancel()
        if self._in_flight and not self._wake.is_set() and not stop.is_set():
            # A request finished: let a few more finish so that one claim fills several slots
            # (a round trip per freed slot would cap throughput far below the receiver's).
            await asyncio.sleep(CLAIM_GATHER_SECONDS)

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(
            self._in_flight, timeout=self.settings.shutdown_grace_seconds
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _round(self, conn: AConn, recorder: AConn, sender: Sender) -> bool:
        if time.monotonic() >= self._next_sweep:
            await self._sweep(conn)
        fanned = await self._fan_out(conn)
        room = self.max_in_flight - len(self._in_flight)
        claimed = await self._claim(conn, min(room, self.settings.batch_size)) if room else []
        for item in claimed:
            task = asyncio.create_task(self._process(item, recorder, sender))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return bool(fanned or claimed)

    async def _sweep(self, conn: AConn) -> None:
        """Finish changes left unfinished by a relay that died (see unfinished_changes)."""
        self._next_sweep = time.monotonic() + self.settings.lease_seconds
        cur = await conn.execute(query("unfinished_changes"), {"limit": 10_000})
        ids = [row[0] for row in await cur.fetchall()]
        if ids:
            await conn.execute(query("finish_changes"), {"ids": ids})

    async def _fan_out(self, conn: AConn) -> int:
        async with conn.transaction():
            cur = await conn.execute(query("fan_out_lock"))
            locked = await cur.fetchone()
            if not locked or not locked[0]:
                return 0
            async with conn.cursor(row_factory=dict_row) as dcur:
                await dcur.execute(query("changes_to_fan_out"), {"limit": self.settings.batch_size})
                rows = await dcur.fetchall()
            if not rows:
                return 0
            plan = fanout.plan([rules.change_from_row(r) for r in rows], self.rules.ruleset)
            await conn.execute(query("add_deliveries"), plan.deliveries())
            await conn.execute(query("mark_fanned_out"), {"ids": plan.fanned_out})
            await conn.execute(query("skip_changes"), {"ids": plan.fanned_out})
            await conn.execute(query("finish_changes"), {"ids": plan.fanned_out})
        self._fanned_since_analyze += len(rows)
        if self._fanned_since_analyze >= ANALYZE_AFTER_CHANGES:
            self._fanned_since_analyze = 0
            await conn.execute(query("refresh_statistics"))
        return len(rows)

    async def _claim(self, conn: AConn, limit: int) -> list[Claimed]:
        busy = {hook: n for hook, n in self._busy.items() if n}
        now = time.monotonic()
        for hook, until in self._paused_until.items():
            if until > now:  # a paused webhook has no free slot
                busy[hook] = self.settings.webhook_concurrency
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("claim_deliveries"),
                {
                    "limit": limit,
                    "lease_seconds": self.settings.lease_seconds,
                    "relay_id": self.relay_id,
                    "per_webhook": self.settings.webhook_concurrency,
                    "busy_ids": list(busy),
                    "busy_counts": list(busy.values()),
                },
            )
            rows = await cur.fetchall()
        for row in rows:
            self._busy[row["webhook_id"]] += 1
        return [
            Claimed(
                r["outbox_id"],
                r["webhook_id"],
                r["rule_id"],
                r["attempts"],
                rules.change_from_row(r),
            )
            for r in rows
        ]

    async def _process(self, item: Claimed, recorder: AConn, sender: Sender) -> None:
        try:
            outcome = await self._attempt(item, sender)
            await self._record(recorder, item, outcome)
        except psycopg.Error as exc:  # the lease expires and another attempt follows
            log.error("could not record outcome", outbox_id=item.outbox_id, error=str(exc))
        finally:
            self._busy[item.webhook_id] -= 1

    def _target(self, item: Claimed) -> tuple[Webhook, Rule] | str:
        """The webhook and rule to deliver with, or why there is none any more."""
        rule = self.rules.ruleset.by_id(item.rule_id)
        if rule is None or rule.webhook.id != item.webhook_id:
            return "the rule that sent this change here was disabled or removed"
        if not rule.webhook.enabled:
            return f"webhook {rule.webhook.name!r} is disabled"
        return rule.webhook, rule

    async def _attempt(self, item: Claimed, sender: Sender) -> Outcome:
        target = self._target(item)
        if isinstance(target, str):
            return Outcome(
                ok=False, status=None, duration=0.0, error=target, permanent=True, sent=False
            )
        hook, rule = target
        try:
            request = self.renderer.request(
                hook, item.change, rule.action_data, timestamp=int(time.time())
            )
        except RenderError as exc:
            outcome = Outcome(
                ok=False, status=None, duration=0.0, error=str(exc), permanent=True, sent=False
            )
        else:
            outcome = await sender.send(request, hook)
        log.info(
            "delivery",
            outbox_id=item.outbox_id,
            webhook=hook.name,
            attempt=item.attempt,
            status_code=outcome.status,
            duration_ms=round(outcome.duration * 1000, 1),
            outcome="delivered" if outcome.ok else "failed",
            error=outcome.error,
        )
        return outcome

    def _breaker(self, item: Claimed, outcome: Outcome) -> None:
        """Count the receiver's consecutive failures; pause it when they reach the limit, and
        resume it at the first success. Our own errors (templates, rules) do not count."""
        hook = item.webhook_id
        if outcome.ok:
            if self._failures.pop(hook, 0) >= self.settings.breaker_failures:
                log.info("webhook resumed", webhook_id=hook)
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

    async def _record(self, conn: AConn, item: Claimed, outcome: Outcome) -> None:
        self._breaker(item, outcome)
        if outcome.ok:
            status, retry_in = "delivered", 0.0
        elif outcome.permanent or item.attempt >= self.settings.max_attempts:
            status, retry_in = "failed", 0.0
        else:
            status = "pending"
            retry_in = self.settings.retry_delay(
                item.attempt, random.uniform(0.8, 1.2), outcome.retry_after
            )
        await conn.execute(
            query("record_outcome"),
            {
                "outbox_id": item.outbox_id,
                "webhook_id": item.webhook_id,
                "attempt": item.attempt,
                "duration_ms": round(outcome.duration * 1000),
                "status_code": outcome.status,
                "error": outcome.error,
                "excerpt": outcome.excerpt,
                "status": status,
                "retry_in": retry_in,
                "relay_id": self.relay_id,
            },
        )
        await conn.execute(query("finish_changes"), {"ids": [item.outbox_id]})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The fan-out stage: new changes become deliveries, one per webhook whose rules match.

It runs on a connection of its own, whenever there may be new changes: after a notification, a
full batch, or the poll interval; every lease period it also sweeps (relay/delivery/
maintenance.py). sql/migrations/0003_delivery.sql explains the protocol, relay/delivery/plan.py
what a batch becomes, relay/delivery/window.py where fan-out has looked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from relay.delivery import coalesce, maintenance, plan, window
from relay.delivery.holding import Holding
from relay.delivery.metrics import Metrics
from relay.reasons import describe
from relay.rules.ruleset import RuleSet
from relay.rules.watch import RuleWatcher
from relay.settings import Settings
from relay.store import AsyncStore, FanOutBatch, FanOutRow

log = structlog.get_logger("relay.worker")

ANALYZE_AFTER_CHANGES = 5_000
"""Changes fanned out by this relay after which it refreshes the delivery tables' statistics
(relay.refresh_statistics), so claim plans are right from the start of a burst; then again each
time the count doubles (an ANALYZE of a million-row table is not free; autovacuum takes over)."""
BACKLOG_GAUGE_SECONDS = 5.0
"""How often the backlog and per-webhook gauges are refreshed (two counts of what is pending),
when metrics are on: here, on fan-out's connection, rather than per scrape, so that any number
of scrapers cost the database nothing more."""


async def _read_on(store: AsyncStore, found: FanOutBatch, rows: list[FanOutRow]) -> list[FanOutRow]:
    """What a pass cut by its limit reads on, for webhooks ordered by transaction or key, or
    that coalesce (a transaction's changes to a row are grouped within one pass): up to
    the last change of every transaction it holds, the changes between included (visible in
    its snapshot), and so on for the transactions those bring. Then each transaction's changes
    are placed together (plan.commit_order), and no transaction left to a later pass committed
    before one this pass takes: a transaction left out has every change after the pass's
    last, so its last id is beyond every last id taken here (0026_steering.sql)."""
    after = max(row["id"] for row in found.rows)
    asked = {row["txid"] for row in rows if not row["requeued"]}
    txids = asked
    more: list[FanOutRow] = []
    while txids:
        read = await store.transaction_rest(sorted(txids), after, found.snapshot)
        if not read:
            break
        more += read
        after = read[-1]["id"]
        txids = {row["txid"] for row in read} - asked
        asked |= txids
    return more


async def _group(store: AsyncStore, rows: list[FanOutRow]) -> coalesce.Grouping:
    """A pass's changes grouped for the webhooks that coalesce (relay/delivery/coalesce.py);
    a re-queued change that ended a group has its group's first read, to make its event again."""
    firsts = [
        row["coalesced_from"]
        for row in rows
        if row["requeued"] and row["coalesced_from"] is not None
    ]
    heads = await store.change_heads(firsts) if firsts else {}
    return coalesce.group((row for row in rows if row["fresh"]), heads)


class FanOut:
    """The fan-out stage of one Worker: :meth:`run` turns new changes into deliveries,
    :meth:`new_changes` wakes it, and ``fanned`` is called whenever a batch made deliveries to
    claim."""

    def __init__(
        self,
        settings: Settings,
        relay_id: str,
        rules: RuleWatcher,
        holding: Holding,
        metrics: Metrics,
        fanned: Callable[[], None],
        analyze: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.relay_id = relay_id
        self.rules = rules
        self.holding = holding
        self.metrics = metrics
        self._fanned = fanned
        """Called when a batch made deliveries: there is something to claim."""
        self._wake = asyncio.Event()
        self._next = 0.0
        self._capture_changed = False
        """A capture function no longer fits its table (NOTIFY relay_capture): regenerate."""
        self._count = 0
        self._analyze_at = ANALYZE_AFTER_CHANGES
        self._analyze = analyze
        """Refreshes the statistics on a connection of its own: an ANALYZE takes 100 ms or more,
        and run on fan-out's connection it held up every change committed meanwhile (the
        latency's p99 at 1,000 changes/s)."""
        self._analyzing: asyncio.Task[None] | None = None

    def new_changes(self) -> None:
        """Look now (NOTIFY relay_outbox)."""
        self._next = 0.0
        self._wake.set()

    def capture_changed(self) -> None:
        """Regenerate capture functions before the next look (NOTIFY relay_capture)."""
        self._capture_changed = True
        self._wake.set()

    async def run(self, store: AsyncStore) -> None:
        """Fan out (and sweep) until cancelled or the connection fails; the backlog first."""
        try:
            await self._run(store)
        finally:
            if self._analyzing is not None:
                self._analyzing.cancel()

    async def _run(self, store: AsyncStore) -> None:
        self._next = 0.0
        next_sweep = next_gauges = 0.0
        while True:
            if self._capture_changed:
                self._capture_changed = False
                await store.refresh_capture()
            if time.monotonic() >= next_sweep:
                behind = await maintenance.sweep(store, self.relay_id, self.settings)
                # A purge with more to do comes back in a second, not a lease period.
                next_sweep = time.monotonic() + (1.0 if behind else self.settings.lease_seconds)
            if self.settings.metrics_address and time.monotonic() >= next_gauges:
                next_gauges = time.monotonic() + BACKLOG_GAUGE_SECONDS
                pending, oldest = await store.backlog()
                self.metrics.backlog.set(pending)
                self.metrics.oldest_pending.set(oldest)
                self.metrics.webhooks(await store.webhook_gauges())
            self._wake.clear()
            wait = self._next - time.monotonic()
            if wait > 0:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns as if woken when
                # the wake-up and a cancellation come at once, and the relay never stopped.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            if await self.once(store):
                self._fanned()

    async def once(self, store: AsyncStore) -> int:
        """One batch, in two round trips: the statements are pipelined (the event loop is busy
        sending, and each round trip waits for its turn: eight of them capped fan-out, and so
        delivery, at a third of what the sender could do). How many changes it matched."""
        settings = self.settings
        # Set before looking, so that a notification arriving meanwhile brings it forward again.
        self._next = time.monotonic() + settings.poll_interval
        async with store.batch():
            found = await store.changes_to_fan_out(settings.batch_size)
            if found is None:
                return 0  # another relay holds the fan-out lock
            if found.full:
                self._next = 0.0
            newest = await store.newest_xid() if window.opens_gaps(found) else None
            looked, moved = window.moved(found, newest)
            if moved != looked:
                await store.move_fan_out_window(moved.parameters())
            rows = [row for row in found.rows if row["fresh"]]
            if not rows:
                return 0
            # Read after the changes: every rule committed before them is in this version.
            await self.rules.catch_up(store.conn, await store.rules_version())
            ruleset = self.rules.ruleset
            ranks: dict[int, int] = {}
            coalescing = ruleset.coalescing()
            if (ruleset.ordered() or coalescing) and found.full:
                rows += await _read_on(store, found, rows)
            if ruleset.ordered():
                ranks = plan.commit_order(rows)
            grouping = await _group(store, rows) if coalescing else coalesce.Grouping()
            ready, to_read = plan.sort_out(
                rows + grouping.events, ruleset, settings.max_body_bytes, ranks, grouping.grouped
            )
            # Off the event loop: matching renders ordering keys (each within the sandbox's
            # second), and a pass of them in the loop stopped the process's requests, timeouts
            # and leases for their sum.
            batch = await asyncio.to_thread(plan.plan, ready, ruleset)
            batch.coalesced_into.update(grouping.into)
            batch.notes.update(grouping.notes)
            # A quarter of the room at a time: claims go on meanwhile.
            for group in plan.groups(to_read, self.holding.capacity // 4):
                await self._match_read(store, group, batch, ruleset, ranks, grouping.grouped)
            self._report(batch, len(rows), ruleset)
            await store.write_plan(batch.statements())
        self._count += len(rows)
        if self._count >= self._analyze_at:
            self._analyze_at *= 2
            if self._analyze is None:
                await store.refresh_statistics()
            elif self._analyzing is None or self._analyzing.done():
                self._analyzing = asyncio.create_task(self._refresh())
        return len(rows)

    async def _refresh(self) -> None:
        assert self._analyze is not None
        try:
            await self._analyze()
        except Exception as exc:  # statistics are an optimisation: fan-out goes on without
            log.warning("could not refresh statistics", error=describe(exc))

    async def _match_read(
        self,
        store: AsyncStore,
        group: list[FanOutRow],
        batch: plan.Plan,
        ruleset: RuleSet,
        ranks: dict[int, int],
        grouped: set[int],
    ) -> None:
        """Read the images of a group of changes that conditions look at, once they fit in
        the room the relay has, and match them."""
        async with self.holding.reserve(sum(row["bytes"] for row in group)):
            images = await store.change_images(plan.image_ids(group))
            arrivals = (
                plan.arrival(
                    row,
                    ruleset,
                    *plan.images_of(row, images),
                    rank=ranks.get(row["id"], 0),
                    grouped=row["id"] in grouped,
                )
                for row in group
            )
            await asyncio.to_thread(batch.add, arrivals, ruleset)  # off the loop: see above

    def _report(self, batch: plan.Plan, changes: int, ruleset: RuleSet) -> None:
        """Log what failed at once, and count every change by what became of it."""
        failed = batch.failed
        for outbox_id, webhook_id, error in zip(
            failed.outbox_ids, failed.webhook_ids, failed.errors, strict=True
        ):
            log.warning(
                "delivery",
                outbox_id=outbox_id,
                webhook=ruleset.webhook_name(webhook_id),
                attempt=1,
                outcome="failed",
                error=error,
            )
        for outbox_id, error in batch.unmatchable.items():
            log.error("change not matched", outbox_id=outbox_id, outcome="failed", error=error)
        matched = set(batch.outbox_ids)
        failing = (set(failed.outbox_ids) - matched) | set(batch.unmatchable)
        self.metrics.changes.labels("matched").inc(len(matched))
        self.metrics.changes.labels("failed").inc(len(failing))
        self.metrics.changes.labels("skipped").inc(changes - len(matched) - len(failing))

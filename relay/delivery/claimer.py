"""The claimer: what one relay holds, and the claims it makes within it.

A relay holds, per webhook, deliveries claimed and not yet answered (counts, which the claim
query and the breaker's holds cap), the deliveries answered whose outcome is being written
(still leased, not in flight), the bytes of their changes (relay/delivery/holding.py) and the
slots its requests wait for. Every claim hands out one :class:`Hold` that gives all of it back,
each part once: what the parameters of the claim are is claim.py's call, which webhook is held
the breaker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from relay.delivery import claim, related
from relay.delivery.breaker import Breaker
from relay.delivery.holding import Holding
from relay.model import Webhook
from relay.rules.ruleset import RuleSet
from relay.settings import Settings
from relay.store import AsyncStore, Claimed


class Hold:
    """One claim's share of what the relay holds: one delivery, or one batch of a webhook's.
    Taken by the claim; :meth:`answered` frees its count when the receiver has answered (room
    for another claim at once), :meth:`recording` marks its deliveries answered while their
    outcomes are written, and :meth:`release`, when its task ends whatever happened, gives back
    what is left, bytes included. Each part goes back once."""

    def __init__(self, claimer: Claimer, items: list[Claimed]) -> None:
        self.items = items
        self.webhook_id = items[0].webhook_id
        self._claimer = claimer
        self.nbytes = sum(claim.held_bytes(item, claimer.settings.max_body_bytes) for item in items)
        self._counted = True
        self._held = True

    def slot(self) -> asyncio.Semaphore:
        """The webhook's slots its request waits for (Claimer.slot)."""
        return self._claimer.slot(self.webhook_id)

    def answered(self) -> None:
        """The receiver answered, or nothing was sent: the delivery stays pending (so a later
        change to its row still waits) until its outcome is written, but the claim has room
        for another."""
        if self._counted:
            self._counted = False
            self._claimer.counts[self.webhook_id] -= 1
            self._claimer.wake()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """While the outcomes are written, the deliveries are answered: no longer in flight,
        though leased until then (a webhook with a concurrency counts leases across relays,
        all but these: claim.answered_pairs). Marked before the first await, so no claim round
        sees them as in flight. Once written, a webhook ordered by transaction or key (0026)
        claims at once: the next change of its key waited for exactly this (in row scope the
        wake when the receiver answered is enough)."""
        answered = self._claimer.answered[self.webhook_id]
        ids = [item.outbox_id for item in self.items]
        answered.update(ids)
        try:
            yield
        finally:
            answered.difference_update(ids)
        hook = self._claimer.rules().webhook(self.webhook_id)
        if hook is not None and hook.ordering != "row":
            self._claimer.wake()

    def release(self) -> None:
        """The task ended: its changes and body are gone, and so is their room."""
        self.answered()
        if self._held:
            self._held = False
            if self.nbytes:
                self._claimer.holding.give_back(self.webhook_id, self.nbytes)
                self._claimer.wake()


class Claimer:
    """The claims of one relay process within what it holds. ``rules`` gives the rules as they
    are now; ``wake`` is called whenever room is freed (the claim loop may claim again)."""

    def __init__(
        self,
        settings: Settings,
        relay_id: str,
        rules: Callable[[], RuleSet],
        holding: Holding,
        breaker: Breaker,
        wake: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.relay_id = relay_id
        self.rules = rules
        self.holding = holding
        self.breaker = breaker
        self.wake = wake
        self.counts: dict[int, int] = defaultdict(int)
        """Per webhook: claims not yet answered (a batch is one: waiting for a slot or sent)."""
        self.answered: dict[int, set[int]] = defaultdict(set)
        """Per webhook: the deliveries answered (or given up) whose outcome is being written:
        still leased, but not in flight (claim.answered_pairs)."""
        self._slots: dict[int, tuple[int, asyncio.Semaphore]] = {}
        """Per webhook: how many slots, and the semaphore that holds them."""
        self.batch_due: float | None = None
        """When (monotonic) a batch that was not full may go: the claim loop wakes for it."""

    async def claim_round(
        self, store: AsyncStore, room: Callable[[], int], start: Callable[[Hold], None]
    ) -> bool:
        """Claim what ``room`` (claims the process may still start) allows: due deliveries,
        then a batch for each batched webhook with room in its window, each ``start``-ed as it
        comes. Whether any was."""
        free = room()
        batched = self.rules().batched()
        limited = self.rules().limited()
        default = claim.window(self.settings)
        windows = {hook.id: claim.window(self.settings, hook) for hook in limited}
        held = self.breaker.held(self.counts, default, windows)
        limit = min(free, self.settings.batch_size)
        claimed = await self._claim(store, limit, held, batched, limited) if free else []
        for item in claimed:
            start(self.take([item]))
        self.batch_due = None
        started = bool(claimed)
        for hook in batched:
            if room() <= 0:
                break
            if held.get(hook.id, 0) < windows.get(hook.id, default):
                items = await self._claim_batch(store, hook)
                if items:
                    start(self.take(items))
                    started = True
        return started

    def slot(self, webhook_id: int) -> asyncio.Semaphore:
        """The webhook's slots in this process: its concurrency (which the claim keeps across
        relays), else RELAY_WEBHOOK_CONCURRENCY. A concurrency changed since gets new slots;
        requests already waiting keep the old ones."""
        size = claim.slots(self.settings, self.rules().webhook(webhook_id))
        kept = self._slots.get(webhook_id)
        if kept is None or kept[0] != size:
            kept = self._slots[webhook_id] = (size, asyncio.Semaphore(size))
        return kept[1]

    def take(self, items: list[Claimed]) -> Hold:
        """Count a claim (a delivery, or a batch of a webhook's) and its bytes: the hold that
        gives them back."""
        hold = Hold(self, items)
        self.counts[hold.webhook_id] += 1
        self.holding.take(hold.webhook_id, hold.nbytes)
        return hold

    async def _claim(
        self,
        store: AsyncStore,
        limit: int,
        held: dict[int, int],
        batched: list[Webhook],
        limited: list[Webhook],
    ) -> list[Claimed]:
        parameters = claim.parameters(
            limit=limit,
            relay_id=self.relay_id,
            settings=self.settings,
            held=held,
            holding=self.holding,
            batched=[hook.id for hook in batched],
            limited=limited,
            answered=self._limited_answered(limited),
        )
        claimed = await store.claim_deliveries(parameters, self.rules().models)
        return await related.attach(store, claimed, self.rules().webhook)

    async def _claim_batch(self, store: AsyncStore, hook: Webhook) -> list[Claimed]:
        """One batch for ``hook``, or none (then note when one that waits to fill may go)."""
        parameters = claim.batch_parameters(
            hook,
            relay_id=self.relay_id,
            settings=self.settings,
            holding=self.holding,
            answered=self._limited_answered([hook]),
        )
        items, wait = await store.claim_batch(parameters, self.rules().models)
        items = await related.attach(store, items, self.rules().webhook)
        if wait is not None:
            due = time.monotonic() + wait
            self.batch_due = due if self.batch_due is None else min(self.batch_due, due)
        return items

    def _limited_answered(self, hooks: list[Webhook]) -> dict[int, set[int]]:
        """What the claim may leave out of the leases it counts, for the webhooks with a
        concurrency (the others count no leases)."""
        return {
            hook.id: self.answered[hook.id]
            for hook in hooks
            if hook.concurrency is not None and self.answered.get(hook.id)
        }

"""The executor: claimed deliveries in, results out.

One claim (a delivery alone, or a batch of a webhook's) goes through one skeleton: a delivery
past its max attempts fails unsent; the rest waits for a slot of its webhook, goes back unsent
while the webhook is paused, is rendered, paced and sent, and its outcome becomes a result by
the retry policy. A batch that does not fit is split here too. The renderer, the sender and the
pacer (a webhook's rate-limit slots) are given, so that all of it runs without a database or a
network (tests/unit/test_executor.py); whatever any of them raises becomes an outcome with a
one-line reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from relay.delivery import claim
from relay.delivery.breaker import Breaker
from relay.delivery.policy import RetryPolicy
from relay.delivery.record import Result
from relay.delivery.reporter import Reporter
from relay.delivery.send import Outcome, over_limit
from relay.model import Batch, Change, Request, Webhook
from relay.reasons import describe, reason
from relay.render.request import RenderError, secrets_of
from relay.rules.ruleset import Rule, RuleSet
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.store import Claimed

LEASE_MARGIN = 0.2
"""The part of a lease a request leaves for its outcome to be written: a request is cut when
what is left of its delivery's lease falls to this (a webhook's timeout longer than the lease
otherwise let the lease end while the request was in flight: two relays then sent to it past
its concurrency, the same change at once)."""
PAUSED_RECHECK_SECONDS = 1.0
"""When a delivery put back because its webhook is paused is due again: the claims leave a
paused webhook alone, so it waits for the resume whatever this says; 1 s lets it go at once
after a resume, which clears the pause."""


class Renderer(Protocol):
    """What renders a request (relay/render/pool.py's RenderPool)."""

    async def request(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        """The request for a change, or a batch (RenderError: the templates failed on it)."""


class Sending(Protocol):
    """What sends a request (relay/delivery/send.py's Sender): every attempt an outcome."""

    async def send(self, request: Request, webhook: Webhook, within: float | None) -> Outcome:
        """Send ``request``, over within ``within`` seconds (None: the webhook's timeout)."""


class Pacer(Protocol):
    """What waits for a request's rate-limit slot (relay/delivery/pacing.py)."""

    async def pace(self, hook: Webhook) -> None:
        """Wait for the request's slot; SlotTooFar when it is later than a lease allows."""


class SlotTooFar(Exception):
    """The request's rate-limit slot comes later than its lease allows waiting for (a slow rate
    shared by many relays): it goes back unsent, due at its slot (the slot is lost, which only
    slows the webhook down)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds
        self.why = f"rate limit: its request slot is {seconds:.1f} s away"


class Executor:
    """Runs claims for one relay process. ``rules`` gives the rules as they are now (they
    change while deliveries wait)."""

    def __init__(
        self,
        settings: Settings,
        rules: Callable[[], RuleSet],
        renderer: Renderer,
        sender: Sending,
        pacer: Pacer,
        breaker: Breaker,
        reporter: Reporter,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.renderer = renderer
        self.sender = sender
        self.pacer = pacer
        self.breaker = breaker
        self.reporter = reporter

    async def run(
        self, items: list[Claimed], slot: asyncio.Semaphore, stopping: Callable[[], bool]
    ) -> list[Result] | None:
        """The results of one claim, a delivery's or a batch's (then its outcome is each
        change's; a change that cannot go fails alone, and the rest go without it). None when
        the relay was stopping before it went: nothing sent, its lease is given back."""
        hook_id = items[0].webhook_id
        policy = RetryPolicy.of(self.settings, self.rules().webhook(hook_id))
        batch = items[0].batch_id is not None
        if not batch and items[0].attempt > policy.max_attempts:
            return [self._exhausted(items[0], policy)]
        async with slot:
            if stopping():
                return None
            paused, why = self._held_back(hook_id)
            if paused > 0:
                return [_put_back(item, paused, why) for item in items]
            try:
                if batch:
                    return await self._attempt_batch(items, policy)
                outcome = await self._attempt(items[0])
            except SlotTooFar as far:
                return [_put_back(item, far.seconds, far.why) for item in items]
            result = self._decided(items, policy, outcome)[items[0].outbox_id]
            self.reporter.attempt(items[0], result)
            return [result]

    async def _attempt(self, item: Claimed) -> Outcome:
        """One attempt at a delivery alone, ending in an outcome whatever happens. Rendering and
        signing depend on the change and the webhook alone, so their failures are for good."""
        hook: Webhook | None = None
        stage = "finding its rule"
        try:
            target = self._target(item)
            if isinstance(target, str):
                return Outcome.not_sent(reason(target), permanent=True)
            hook, rule = target
            stage = "rendering"
            request = await self.renderer.request(
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
            hook, request, replay=item.replay, superseded=superseded, leased_at=item.leased_at
        )

    async def _attempt_batch(self, items: list[Claimed], policy: RetryPolicy) -> list[Result]:
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
                    results[item.outbox_id] = _later(item)
            sent = [item for item, _ in going if item.outbox_id not in results]
            if sent:
                assert request is not None, "_fit_batch gives a request whenever a change goes"
                superseded = ", ".join(
                    f"{item.outbox_id}:{item.superseded_by}"
                    for item in sent
                    if item.superseded_by is not None
                )
                outcome = await self._send(
                    hook,
                    request,
                    replay=any(item.replay for item in sent),
                    superseded=superseded or None,
                    leased_at=min(item.leased_at for item in sent),
                )
                decided = self._decided(sent, policy, outcome)
                results.update(decided)
                going_on = [item for item in sent if decided[item.outbox_id].status == "pending"]
                shown = going_on[0] if going_on else sent[0]
                self.reporter.batch(sent, results[shown.outbox_id])
        return [results[item.outbox_id] for item in items]

    def _decided(
        self, items: list[Claimed], policy: RetryPolicy, outcome: Outcome
    ) -> dict[int, Result]:
        """What an attempt's outcome makes of the deliveries it carried: counted in their
        webhook's breaker, then the retry policy's call with one jitter for the request."""
        self.reporter.turned(items[0].webhook_id, outcome)
        return _by_policy(items, policy, outcome, random.uniform(0.8, 1.2))

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
        results = _by_policy(items, policy, outcome, 1.0)
        self.reporter.batch(items, results[items[0].outbox_id])
        return results

    def _alone(self, item: Claimed, policy: RetryPolicy, why: str) -> Result:
        """A change of a batch that cannot go, failed with the reason (the rest go on)."""
        outcome = Outcome.not_sent(reason(why), permanent=True)
        result = _by_policy([item], policy, outcome, 1.0)[item.outbox_id]
        self.reporter.attempt(item, result)
        return result

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
        hook = self.rules().webhook(webhook_id)
        if hook is not None and hook.paused:
            return PAUSED_RECHECK_SECONDS, f"webhook {hook.name} paused"
        return self.breaker.paused_for(webhook_id), "webhook paused by the circuit breaker"

    def _target(self, item: Claimed) -> tuple[Webhook, Rule] | str:
        """The webhook and rule to deliver with, or why there is none any more (or why the
        change can never be sent)."""
        refused = claim.refusal(item, self.settings.max_body_bytes)
        if refused:
            return refused
        if item.related_problem is not None:
            return item.related_problem
        rule = self.rules().by_id(item.rule_id)
        if rule is None or rule.webhook.id != item.webhook_id:
            return "the rule that sent this change here was disabled or removed"
        if not rule.webhook.enabled:
            return f"webhook {rule.webhook.name!r} is disabled"
        return rule.webhook, rule

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
        return await self.renderer.request(
            hook, batch, timestamp=int(time.time()), delivery_id=delivery_id
        )

    async def _send(
        self,
        hook: Webhook,
        request: Request,
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
            await self.pacer.pace(hook)
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
            outcome = await self.sender.send(request, hook, within)
        except Exception as exc:
            why = f"sending: {describe(exc, secrets_of(hook, request))}"
            outcome = Outcome.not_sent(why, permanent=False)
        if outcome.error is not None:
            outcome = dataclasses.replace(outcome, error=reason(outcome.error))
        return outcome


def _by_policy(
    items: list[Claimed], policy: RetryPolicy, outcome: Outcome, jitter: float
) -> dict[int, Result]:
    """The retry policy's call on each delivery an attempt carried. Those that go on are due
    again together, after the longest of their delays (each change's own attempts decide
    whether it goes on at all)."""
    decided = [(item, *policy.after(outcome, item.attempt, jitter)) for item in items]
    retry_in = max((wait for _, status, wait in decided if status == "pending"), default=0.0)
    return {
        item.outbox_id: Result.of(item, status, retry_in if status == "pending" else 0.0, outcome)
        for item, status, _ in decided
    }


def _put_back(
    item: Claimed, seconds: float, why: str = "webhook paused by the circuit breaker"
) -> Result:
    """A delivery claimed just before its webhook was paused (or whose rate-limit slot came too
    late for its lease) goes back unsent, due when the pause ends (the slot comes), and its
    attempt does not count."""
    outcome = Outcome.not_sent(f"not sent: {why}", permanent=False)
    return Result.of(item, "pending", seconds, outcome, counted=False)


def _later(item: Claimed) -> Result:
    """A change the batch had no room for: it leaves the batch unsent and uncounted, and goes
    in a later one."""
    outcome = Outcome.not_sent("not sent: no room in its batch", permanent=False)
    return Result.of(item, "pending", 0.0, outcome, counted=False, unbatch=True)

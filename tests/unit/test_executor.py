"""The executor without a database or a network: claims in, results out, with a renderer, a
sender and a pacer of the tests' own (small real classes that keep what they were given)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ByteSize

from relay.delivery.breaker import Breaker
from relay.delivery.executor import Executor, SlotTooFar
from relay.delivery.metrics import Metrics
from relay.delivery.record import Result
from relay.delivery.reporter import Reporter
from relay.delivery.send import Outcome
from relay.model import Batch, Change, Request, Webhook
from relay.render.request import RenderError
from relay.rules.ruleset import Rule, RuleSet
from relay.settings import Settings
from relay.store import Claimed

SETTINGS = Settings(max_attempts=3, retry_base_seconds=1, retry_max_seconds=60, lease_seconds=30)


class Renderer:
    """Renders a body that lists the changes' ids; ``failing``: ids it cannot render (as a
    template that fails on them); ``padding``: bytes of body per change."""

    def __init__(self, failing: frozenset[int] = frozenset(), padding: int = 0) -> None:
        self.failing = failing
        self.padding = padding
        self.rendered: list[list[int]] = []

    async def request(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        changes = change.changes if isinstance(change, Batch) else (change,)
        ids = [c.id for c in changes]
        self.rendered.append(ids)
        bad = self.failing.intersection(ids)
        if bad:
            raise RenderError(f"template: change {min(bad)} has no 'name'")
        body = json.dumps({"ids": ids, "pad": "x" * (self.padding * len(ids))}).encode()
        headers = {"X-Relay-Delivery": delivery_id}
        return Request("POST", webhook.payload_url, headers, body, delivery_id)


class Sender:
    """Answers each request with the next of ``outcomes`` (the last one again when they run
    out), or raises ``raises``; keeps every request it was given."""

    def __init__(self, *outcomes: Outcome, raises: Exception | None = None) -> None:
        self.outcomes = list(outcomes) or [Outcome(True, 200, 0.01)]
        self.raises = raises
        self.sent: list[Request] = []

    async def send(self, request: Request, webhook: Webhook, within: float | None) -> Outcome:
        self.sent.append(request)
        if self.raises is not None:
            raise self.raises
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    def ids(self) -> list[list[int]]:
        return [json.loads(request.body)["ids"] for request in self.sent]


class Pacer:
    """No rate limit, or a slot ``far`` seconds away."""

    def __init__(self, far: float | None = None) -> None:
        self.far = far

    async def pace(self, hook: Webhook) -> None:
        if self.far is not None:
            raise SlotTooFar(self.far)


def webhook(**fields: Any) -> Webhook:
    return Webhook(**{"id": 7, "name": "hook", "payload_url": "http://127.0.0.1:9/", **fields})


def rules(hook: Webhook) -> RuleSet:
    rule = Rule(1, "rule", ("public.items",), ("insert",), None, {}, hook)
    return RuleSet([rule])


def change(id: int) -> Change:
    return Change(
        id=id,
        schema_name="public",
        table_name="items",
        op="insert",
        old_json=None,
        new_json=f'{{"id": {id}}}',
        pk_json=f'{{"id": {id}}}',
        username=None,
        request_id=None,
        txid="1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def claimed(
    id: int, *, attempt: int = 1, batch: int | None = None, rule_id: int = 1, **fields: Any
) -> Claimed:
    return Claimed(
        id,
        7,
        rule_id,
        attempt,
        attempt,
        20,
        change(id),
        f"d-{id}",
        batch_id=batch,
        batch_delivery_id=None if batch is None else f"b-{batch}",
        **fields,
    )


class Run:
    """One executor with its fakes, and what it made of a claim."""

    def __init__(
        self,
        *,
        hook: Webhook | None = None,
        renderer: Renderer | None = None,
        sender: Sender | None = None,
        pacer: Pacer | None = None,
        settings: Settings = SETTINGS,
    ) -> None:
        self.hook = hook or webhook()
        self.renderer = renderer or Renderer()
        self.sender = sender or Sender()
        self.breaker = Breaker(failures=2, cooldown=30.0)
        self.metrics = Metrics()
        reporter = Reporter(str, self.metrics, self.breaker)
        ruleset = rules(self.hook)
        self.executor = Executor(
            settings,
            lambda: ruleset,
            self.renderer,
            self.sender,
            pacer or Pacer(),
            self.breaker,
            reporter,
        )

    def __call__(self, *items: Claimed, stopping: bool = False) -> list[Result] | None:
        slot = asyncio.Semaphore(1)
        return asyncio.run(self.executor.run(list(items), slot, lambda: stopping))


def statuses(results: list[Result] | None) -> list[tuple[int, str, bool]]:
    assert results is not None
    return [(r.outbox_id, r.status, r.counted) for r in results]


def test_a_delivery_alone_is_rendered_sent_and_delivered() -> None:
    run = Run()
    results = run(claimed(1))
    assert statuses(results) == [(1, "delivered", True)]
    assert run.sender.ids() == [[1]]
    assert run.sender.sent[0].headers["X-Relay-Delivery"] == "d-1"


def test_a_failed_attempt_is_retried_within_the_policy_and_then_fails() -> None:
    run = Run(sender=Sender(Outcome(False, 500, 0.01, "HTTP 500")))
    [first] = run(claimed(1, attempt=1)) or []
    assert first.status == "pending"
    assert 0.8 <= first.retry_in <= 1.2  # the base, with jitter
    [last] = run(claimed(1, attempt=3)) or []
    assert (last.status, last.outcome.error) == ("failed", "HTTP 500")


def test_a_delivery_past_its_max_attempts_fails_unsent_and_uncounted() -> None:
    run = Run()
    [result] = run(claimed(1, attempt=4)) or []
    assert (result.status, result.counted, result.outcome.sent) == ("failed", False, False)
    assert "failed after 3 attempts" in (result.outcome.error or "")
    assert run.sender.sent == []


def test_a_delivery_whose_rule_is_gone_fails_with_why_and_is_not_sent() -> None:
    run = Run()
    [result] = run(claimed(1, rule_id=99)) or []
    assert result.status == "failed"
    assert result.outcome.error == "the rule that sent this change here was disabled or removed"
    assert run.sender.sent == []


def test_a_template_that_fails_fails_the_delivery_for_good() -> None:
    run = Run(renderer=Renderer(failing=frozenset({1})))
    [result] = run(claimed(1)) or []
    assert (result.status, result.outcome.sent) == ("failed", False)
    assert "has no 'name'" in (result.outcome.error or "")


def test_a_sender_that_raises_is_retried_like_a_network_error() -> None:
    run = Run(sender=Sender(raises=RuntimeError("boom")))
    [result] = run(claimed(1)) or []
    assert (result.status, result.outcome.error) == ("pending", "sending: RuntimeError: boom")


def test_replays_and_superseded_changes_say_so_in_their_headers() -> None:
    run = Run()
    run(claimed(1, replay=True, superseded_by=5))
    headers = run.sender.sent[0].headers
    assert (headers["X-Relay-Replay"], headers["X-Relay-Superseded"]) == ("true", "5")


def test_nothing_goes_while_the_relay_stops() -> None:
    run = Run()
    assert run(claimed(1), stopping=True) is None
    assert run.sender.sent == []


def test_the_breaker_pauses_a_failing_webhook_and_its_next_delivery_goes_back_unsent() -> None:
    run = Run(sender=Sender(Outcome(False, 503, 0.01, "HTTP 503")))
    run(claimed(1))
    run(claimed(2))
    assert run.breaker.paused_for(7) > 0
    [result] = run(claimed(3)) or []
    assert (result.status, result.counted) == ("pending", False)
    assert result.outcome.error == "not sent: webhook paused by the circuit breaker"
    assert run.sender.ids() == [[1], [2]]
    assert b'relay_webhook_paused{webhook="7"} 1.0' in run.metrics.render()


def test_a_paused_webhook_gets_nothing_sent() -> None:
    run = Run(hook=webhook(paused=True))
    [result] = run(claimed(1)) or []
    assert (result.status, result.outcome.error) == ("pending", "not sent: webhook hook paused")
    assert run.sender.sent == []


def test_a_slot_too_far_away_puts_the_delivery_back_until_then() -> None:
    run = Run(hook=webhook(rate_limit=1), pacer=Pacer(far=20.0))
    [result] = run(claimed(1)) or []
    assert (result.status, result.retry_in, result.counted) == ("pending", 20.0, False)
    assert run.sender.sent == []


def test_a_batch_goes_as_one_request_and_its_outcome_is_each_change_s() -> None:
    run = Run()
    results = run(*(claimed(i, batch=4) for i in (1, 2, 3)))
    assert statuses(results) == [
        (1, "delivered", True),
        (2, "delivered", True),
        (3, "delivered", True),
    ]
    assert run.sender.ids() == [[1, 2, 3]]
    assert run.sender.sent[0].headers["X-Relay-Delivery"] == "b-4"


def test_a_failed_batch_is_retried_together_after_the_longest_delay() -> None:
    run = Run(sender=Sender(Outcome(False, 500, 0.01, "HTTP 500")))
    results = run(claimed(1, batch=4, attempt=1), claimed(2, batch=4, attempt=2)) or []
    assert [r.status for r in results] == ["pending", "pending"]
    assert results[0].retry_in == results[1].retry_in >= 4 * 0.8


def test_a_batch_over_the_body_limit_sends_its_first_half_and_the_rest_waits() -> None:
    settings = Settings(max_body_bytes=ByteSize(1024), max_attempts=3)
    run = Run(renderer=Renderer(padding=300), settings=settings)
    results = run(*(claimed(i, batch=4) for i in (1, 2, 3, 4))) or []
    assert run.sender.ids() == [[1, 2]]
    assert [(r.status, r.counted, r.unbatch) for r in results] == [
        ("delivered", True, False),
        ("delivered", True, False),
        ("pending", False, True),
        ("pending", False, True),
    ]


def test_a_batch_whose_first_change_fails_alone_fails_it_and_the_rest_waits() -> None:
    run = Run(renderer=Renderer(failing=frozenset({1})))
    results = run(*(claimed(i, batch=4) for i in (1, 2, 3))) or []
    assert run.sender.sent == []
    assert statuses(results) == [(1, "failed", True), (2, "pending", False), (3, "pending", False)]
    assert "has no 'name'" in (results[0].outcome.error or "")


def test_a_change_that_cannot_go_fails_alone_and_the_batch_goes_without_it() -> None:
    run = Run()
    results = run(claimed(1, batch=4), claimed(2, batch=4, rule_id=99), claimed(3, batch=4))
    assert statuses(results) == [
        (1, "delivered", True),
        (2, "failed", True),
        (3, "delivered", True),
    ]
    assert run.sender.ids() == [[1, 3]]


def test_a_batch_sent_before_goes_whole_or_not_at_all() -> None:
    settings = Settings(max_body_bytes=ByteSize(1024), max_attempts=3)
    run = Run(renderer=Renderer(padding=300), settings=settings)
    results = run(*(claimed(i, batch=4, batch_again=True) for i in (1, 2, 3, 4))) or []
    assert run.sender.sent == []
    assert [r.status for r in results] == ["pending"] * 4
    assert "goes whole or not at all" in (results[0].outcome.error or "")

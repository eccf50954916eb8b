"""The retry policy alone: a webhook's own values over the relay's settings, delays that grow,
obey Retry-After and stop at the cap."""

from __future__ import annotations

from decimal import Decimal

from relay.delivery.policy import RetryPolicy
from relay.delivery.send import Outcome
from relay.model import Webhook
from relay.settings import Settings

SETTINGS = Settings(max_attempts=8, retry_base_seconds=5, retry_max_seconds=36_000)


def hook(**policy: object) -> Webhook:
    return Webhook(id=1, name="h", payload_url="http://127.0.0.1/", **policy)  # type: ignore[arg-type]


def test_a_webhook_without_a_policy_follows_the_settings() -> None:
    for webhook in (None, hook()):
        policy = RetryPolicy.of(SETTINGS, webhook)
        assert (policy.max_attempts, policy.base_seconds, policy.max_seconds) == (8, 5.0, 36_000.0)
        assert policy.attempts_from == "RELAY_MAX_ATTEMPTS"


def test_each_value_a_webhook_sets_replaces_only_that_setting() -> None:
    policy = RetryPolicy.of(SETTINGS, hook(max_attempts=3, retry_base_seconds=Decimal("0.5")))
    assert (policy.max_attempts, policy.base_seconds, policy.max_seconds) == (3, 0.5, 36_000.0)
    assert policy.attempts_from == "the webhook's max_attempts"
    capped = RetryPolicy.of(SETTINGS, hook(retry_max_seconds=Decimal(60)))
    assert (capped.max_attempts, capped.base_seconds, capped.max_seconds) == (8, 5.0, 60.0)


def test_the_last_attempt_is_the_one_numbered_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
    assert [policy.gives_up(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_delays_grow_four_times_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=2, max_seconds=100)
    assert [policy.delay(n, 1.0, None) for n in (1, 2, 3, 4)] == [2, 8, 32, 100]
    assert policy.delay(2, 0.8, None) == 6.4
    assert policy.delay(2, 1.2, None) == 9.6
    assert policy.delay(4, 1.2, None) == 100  # the jitter never passes the cap


def test_retry_after_lengthens_a_delay_but_never_past_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=2, max_seconds=100)
    assert policy.delay(1, 1.0, 30) == 30
    assert policy.delay(3, 1.0, 1) == 32
    assert policy.delay(1, 1.0, 86_400) == 100


def test_a_thousand_attempts_do_not_overflow() -> None:
    """4.0 ** 999 is past a float's range: the growth stops counting once the cap has won."""
    policy = RetryPolicy.of(Settings(max_attempts=1000), hook(max_attempts=1000))
    assert policy.delay(999, 1.2, None) == Settings().retry_max_seconds


def test_after_an_attempt_the_policy_says_delivered_retry_or_failed() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=2.0, max_seconds=60.0)
    ok = Outcome(ok=True, status=200, duration=0.01)
    refused = Outcome(ok=False, status=500, duration=0.01, error="HTTP 500")
    gone = Outcome(ok=False, status=410, duration=0.01, error="HTTP 410", permanent=True)
    slow_down = Outcome(ok=False, status=429, duration=0.01, error="HTTP 429", retry_after=30)
    assert policy.after(ok, 3, 1.0) == ("delivered", 0.0)
    assert policy.after(refused, 1, 1.0) == ("pending", 2.0)
    assert policy.after(refused, 2, 1.1) == ("pending", 8.0 * 1.1)
    assert policy.after(refused, 3, 1.0) == ("failed", 0.0)  # the last attempt
    assert policy.after(gone, 1, 1.0) == ("failed", 0.0)  # retrying cannot help
    assert policy.after(slow_down, 1, 1.0) == ("pending", 30.0)
    assert "3 attempts" in policy.exhausted()

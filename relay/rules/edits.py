"""Checking a webhook's or a rule's new values before they are stored, shared by the command line
(``relay webhook add``/``edit``, ``relay rule add``/``edit``) and the console's forms, so that
both accept and refuse exactly the same things with the same words.

Each check raises :class:`Invalid` with one line naming the field and the fix; the caller says
it its own way (the command line exits 2, the console shows it on the form). The database
checks the rest of each row (relay.check_webhook, relay.check_event_rule) when it is stored.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from relay.ages import parse_age
from relay.model import BODY_FORMATS, Webhook, loads
from relay.reasons import scrub
from relay.render.pool import BlockingRenderPool
from relay.render.request import RenderError, secrets_of
from relay.render.sign import InvalidSecret, check_secret, secrets_signing
from relay.rules import conditions, ruleset

if TYPE_CHECKING:
    from relay.admin import WebhookRow

DEAD_AFTER_RANGE = (60, 31_536_000)
"""What relay.webhooks.dead_after_seconds takes (relay.check_webhook): a minute to a year."""

MAX_ATTEMPTS = (1, 1000)
RETRY_BASE_SECONDS = (0.001, 86_400)
RETRY_MAX_SECONDS = (0.001, 2_592_000)
TIMEOUT_SECONDS = (0.001, 300)
BATCH_SIZE = (1, 1000)
BATCH_WAIT_MS = (0, 60_000)
BOUNDS: dict[str, tuple[float, float]] = {
    "max-attempts": MAX_ATTEMPTS,
    "retry-base-seconds": RETRY_BASE_SECONDS,
    "retry-max-seconds": RETRY_MAX_SECONDS,
    "timeout": TIMEOUT_SECONDS,
    "batch-size": BATCH_SIZE,
    "batch-wait-ms": BATCH_WAIT_MS,
}
"""The plain numbers' ranges, by option name (without its dashes): the command line's options
and the console's fields both take these."""

EVENTS = ("insert", "update", "delete", "truncate", "snapshot")

GRACE_LONGEST = timedelta(days=30)
"""The longest a rotated secret's previous one may keep signing: a period long enough for any
receiver to take the new one, short enough that a leaked old secret does not live on."""


SECRET_LONGEST = 65_536
"""The most characters a new secret may have (one a line for several): far more than any key,
short enough to refuse a wrong file or an endless stream before reading it whole."""


class Invalid(ValueError):
    """A value that cannot be stored: the message names the field and what to give instead."""


def json_value(text: str, what: str) -> Any:
    """``text`` as JSON (exact numbers, as relay reads rows)."""
    try:
        return loads(text)
    except ValueError as exc:
        raise Invalid(f"{what} is not valid JSON: {exc}") from None


def number(
    text: str,
    option: str,
    unset: str | None,
    kind: Callable[[str], Any],
    bounds: tuple[float, float],
    meaning: str = "",
) -> Any:
    """``text`` as a number within ``bounds``, or None for the word ``unset``."""
    if unset is not None and text.strip().lower() == unset:
        return None
    low, high = bounds
    try:
        value = kind(text.strip())
        fits = bool(low <= value <= high)
    except (ValueError, ArithmeticError):  # Decimal's NaN does not compare: InvalidOperation
        fits = False
    if not fits:
        otherwise = f", or {unset} ({meaning})" if unset is not None else ""
        raise Invalid(f"{option} {text!r}: give a number from {low:g} to {high:g}{otherwise}")
    return value


def dead_after(text: str, option: str = "--dead-after") -> int | None:
    """A dead-after time as whole seconds: an age (3600s, 90m, 12h, 3d) or plain seconds;
    None for "default"."""
    if text.strip().lower() == "default":
        return None
    low, high = DEAD_AFTER_RANGE
    try:
        seconds = float(text) if text.strip().isdigit() else parse_age(text).total_seconds()
    except ValueError:
        seconds = -1.0
    if not low <= seconds <= high:
        raise Invalid(
            f"{option} {text!r}: give a time from 60s to 365d (3600s, 90m, 12h, 3d), or "
            "default (RELAY_DEAD_AFTER_SECONDS)"
        )
    return round(seconds)


def steering(
    concurrency: str | None,
    rate_limit: str | None,
    dead_after_text: str | None,
    ordering: str | None,
    ordering_key: str | None,
    dashes: str = "--",
) -> dict[str, Any]:
    """The 0026 columns given, by column (None: NULL, the relay's setting or no limit); one not
    given is left out. ``dashes`` prefixes the option names in messages (the console's fields
    go without)."""
    given: dict[str, Any] = {}
    if concurrency is not None:
        given["concurrency"] = number(
            concurrency,
            f"{dashes}concurrency",
            "default",
            int,
            (1, 10_000),
            "RELAY_WEBHOOK_CONCURRENCY",
        )
    if rate_limit is not None:
        given["rate_limit"] = number(
            rate_limit, f"{dashes}rate-limit", "none", Decimal, (0.001, 100_000), "no limit"
        )
    if dead_after_text is not None:
        given["dead_after_seconds"] = dead_after(dead_after_text, f"{dashes}dead-after")
    if ordering is not None:
        if ordering not in ("row", "transaction", "key"):
            raise Invalid(f"{dashes}ordering {ordering!r}: use row, transaction or key")
        given["ordering"] = ordering
    if ordering_key is not None:
        if not ordering_key.strip():
            raise Invalid(
                f"{dashes}ordering-key is empty: give a template, or {dashes}ordering row"
            )
        if given.setdefault("ordering", "key") != "key":
            raise Invalid(
                f"{dashes}ordering-key goes with {dashes}ordering key, not {dashes}ordering "
                f"{ordering}"
            )
        given["ordering_key"] = ordering_key
    return given


def body_format(text: str, option: str = "--body-format") -> str:
    """A body format relay has."""
    if text not in BODY_FORMATS:
        raise Invalid(f"{option} {text!r}: use {' or '.join(BODY_FORMATS)}")
    return text


def related(value: str | None, option: str = "--related") -> dict[str, Any] | None:
    """The related option as stored: a JSON object (the database checks the rest of its shape:
    relay.check_webhook), None for none or ''."""
    if not value or not value.strip():
        return None
    document = json_value(value, option)
    if not isinstance(document, dict):
        raise Invalid(
            f"""{option} is a JSON object of foreign-key columns, each to a list of columns """
            """of the row it references: '{"site_id": ["name", "slug"]}'"""
        )
    return document


def template_problem(
    name: str,
    payload_url: str,
    additional_headers: str,
    body_template: str,
    ordering_key: str | None,
    env_allow: Sequence[str],
) -> str | None:
    """The first reason a webhook's templates cannot work (a template that does not compile,
    with its line; a header line that is not ``Name: Value``), masked, or None. They are
    compiled in a render process, as relay run compiles them."""
    hook = Webhook(
        id=0,
        name=name,
        payload_url=payload_url,
        additional_headers=additional_headers,
        body_template=body_template,
    )
    with BlockingRenderPool(env_allow) as renders:
        problems = ruleset.webhook_problems(hook, renders, f"webhook {name!r}")
        if ordering_key:
            try:
                renders.check(ordering_key, "ordering_key")
            except RenderError as exc:
                problems.append(ruleset.Problem(f"webhook {name!r}", str(exc)))
    return scrub(str(problems[0]), secrets_of(hook)) if problems else None


def rule_conditions(text: str, what: str = "--conditions") -> Any:
    """Conditions as stored: NetBox's syntax, validated as the relay evaluates it; None for
    none ('' or null)."""
    if not text.strip():
        return None
    document = json_value(text, what)
    if document is None:
        return None
    try:
        conditions.validate(document, what)
    except conditions.InvalidConditions as exc:
        raise Invalid(str(exc)) from None
    return document


def action_data(text: str, what: str = "--action-data") -> Any:
    """A rule's action_data as JSON ('' for an empty object; the database refuses what is not
    an object: relay.check_event_rule)."""
    return json_value(text, what) if text.strip() else {}


def events(values: Sequence[str], what: str = "--event") -> list[str]:
    """A rule's events, each one relay knows."""
    for event in values:
        if event not in EVENTS:
            raise Invalid(f"{what} {event!r}: use {', '.join(EVENTS)}")
    return list(values)


def grace(text: str, option: str = "--grace") -> timedelta:
    """How long a rotated secret's previous one keeps signing: an age (``90s``, ``30m``,
    ``24h``, ``7d``) up to :data:`GRACE_LONGEST`, or ``0`` (the new secret alone, at once)."""
    if text.strip() == "0":
        return timedelta()
    try:
        period = parse_age(text)
    except ValueError:
        period = GRACE_LONGEST * 2
    if period > GRACE_LONGEST:
        raise Invalid(
            f"{option} {text!r}: give a period like 90s, 30m, 24h or 7d (at most 30d), or 0"
        )
    return period


def new_secret(text: str, signature: str, current: str) -> str:
    """The secret a rotation puts in: ``text`` without the blanks around it, one a webhook
    with ``signature`` can sign with, and not ``current``. Its words never quote it. A byte
    order mark before it (a file saved by some editors) is no part of it: kept, it would sign
    what no receiver holding the secret verifies."""
    text = text.strip().removeprefix("\ufeff")
    secret = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in secret.replace("\n", "")):
        raise Invalid(
            "the new secret holds a control or invisible character (NUL, a byte order mark...): "
            "give the secret alone, as the receivers hold it"
        )
    if signature == "none":
        raise Invalid(
            "the webhook's signature is none: it signs nothing; choose netbox or standard first"
        )
    if not secret:
        raise Invalid("the new secret is empty: give the secret itself")
    if len(secret) > SECRET_LONGEST:
        raise Invalid(
            f"the new secret is longer than {SECRET_LONGEST} characters, which no secret is: "
            "give the secret alone"
        )
    if signature == "netbox" and "\n" in secret:
        raise Invalid("a NetBox signature's secret is one line: give one secret")
    try:
        check_secret(signature, secret)
    except InvalidSecret as exc:
        raise Invalid(f"the new secret cannot sign: {exc}") from None
    if secret == current.strip():
        raise Invalid("the new secret is the webhook's current one: give a new one")
    return secret


def kept_signing(hook: WebhookRow, new: str) -> str:
    """What signs ``hook``'s requests now and keeps signing through a rotation to ``new``
    (relay.admin.rotate_secret): what signed until now, the new secret's lines left out. During
    an earlier rotation's period, what signs now is what keeps signing: the secret before it
    for NetBox (the one just put in never signed, and receivers may not have it yet), both for
    Standard Webhooks; a rotation must not cut off, without a period, receivers that accept
    today's requests."""
    until = hook.previous_secret_until
    signing = secrets_signing(
        hook.signature,
        hook.secret,
        hook.previous_secret,
        None if until is None else until.timestamp(),
        time.time(),
    )
    fresh = {line.strip() for line in new.splitlines()}
    return "\n".join(
        dict.fromkeys(line.strip() for line in signing.splitlines() if line.strip() not in fresh)
    )


def webhook_in_use(name: str, rules: Sequence[str]) -> str | None:
    """Why the webhook ``name`` cannot be removed while the rules named ``rules`` use it (a
    rule without its webhook would match changes for nothing), or None."""
    if not rules:
        return None
    return f"webhook {name!r} is used by rule(s) {', '.join(sorted(rules))}; remove them first"


def rotated(until: datetime | None, signature: str) -> str:
    """What a rotation did, in the same words on the command line, the console and its audit
    (never the secret)."""
    if until is None:
        return "secret rotated; the new secret alone signs from now on"
    moment = until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if signature == "standard":
        return (
            f"secret rotated; previous secret valid until {moment} (each request carries both "
            "signatures until then)"
        )
    return (
        f"secret rotated; previous secret valid until {moment} (it signs X-Hook-Signature "
        "until then, the new one after)"
    )


def previous_secret_shown(previous: str, until: datetime | None) -> str:
    """A rotated secret's previous one in words: until when it signs, never its value."""
    if not previous.strip() or until is None:
        return "(none)"
    moment = until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if until <= datetime.now(UTC):
        return f"(none: the previous secret stopped signing at {moment})"
    return f"previous secret valid until {moment}"

"""What a rule would send for a change, shown without sending it: shared by ``relay preview``
and the console's preview and test event, so both decide and mask alike.

A preview of a request relay would never make would mislead: :func:`would_send` says which of
the changes the rule sends and why each other would not be sent. :func:`shown` masks what the
request was made with (the webhook's secrets, credentials in its URL or headers, values read
with ``env``) wherever it appears; the signature is shown (it is no secret, and the point).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.model import Batch, Change, Request, Webhook
from relay.reasons import MASK, redact, url_shown
from relay.render.request import env_values, secrets_of
from relay.rules import ruleset

PREVIEW_ID = "00000000-0000-0000-0000-000000000000"
"""The delivery id a preview shows for a delivery not made yet: relay draws a random one when the
change is matched (a batch's, when the batch is numbered), and signs with it."""


@dataclass(frozen=True)
class Shown:
    """A rendered request as it may be shown: every secret it was made with masked."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str
    secret: str
    """The webhook's secret as shown: masked, with how many it has."""


def would_send(
    rule: ruleset.Rule, changes: list[Change], rule_enabled: bool
) -> tuple[list[Change], list[str]]:
    """The changes ``rule`` would send (none when it or its webhook is disabled), and why each of
    the others would not be."""
    if not rule_enabled:
        again = f"relay rule enable {shlex.quote(rule.name)}"
        return [], [f"rule {rule.name!r} is disabled ({again} sends with it again)"]
    if not rule.webhook.enabled:
        hook = rule.webhook.name
        again = f"relay webhook enable {shlex.quote(hook)}"
        return [], [f"webhook {hook!r} is disabled ({again} sends to it again)"]
    sent, unsent = [], []
    for change in changes:
        prefix = f"change {change.id}: " if len(changes) > 1 else ""
        tables = ", ".join(rule.tables)
        if change.table_key not in {ruleset.table_key(table) for table in rule.tables}:
            unsent.append(f"{prefix}rule {rule.name!r} is for {tables}, not {change.object_type}")
        elif change.op not in rule.events:
            events = ", ".join(rule.events)
            unsent.append(f"{prefix}rule {rule.name!r} takes {events}, not {change.op}")
        elif (judged := ruleset.judge(rule, change)).error is not None:
            unsent.append(f"{prefix}its delivery would fail: {judged.error}")
        elif not judged.verdict.matched:
            unsent.append(f"{prefix}conditions not matched ({judged.verdict.reason})")
        else:
            sent.append(change)
    return sent, unsent


def subject(rule: ruleset.Rule, changes: list[Change]) -> Change | Batch:
    """What the request is made of: the change, or for a batched webhook a batch of them."""
    if rule.webhook.batch_size > 1:
        return Batch(0, tuple(changes), tuple(rule.action_data for _ in changes))
    return changes[0]


def made_up(
    schema_name: str,
    table_name: str,
    op: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    who: str,
) -> Change:
    """A change nobody made, to preview or test with: id 0, made now by ``who``."""
    return Change.of(
        id=0,
        schema_name=schema_name,
        table_name=table_name,
        op=op,
        old=old,
        new=new,
        pk=None,
        username=who,
        request_id=who,
        txid="0",
        created_at=datetime.now(UTC),
    )


def masked(secret: str) -> str:
    """A webhook's secret as shown anywhere: never its value, only how many it has."""
    lines = [line for line in secret.splitlines() if line.strip()]
    if not lines:
        return "(none)"
    return f"{MASK} ({len(lines)} secret{'s' if len(lines) > 1 else ''})"


def shown(request: Request, hook: Webhook, env_allow: Sequence[str]) -> Shown:
    """``request`` with the secrets it was made with masked wherever they appear."""
    secrets = [*secrets_of(hook), *env_values(env_allow)]
    return Shown(
        method=request.method,
        url=redact(url_shown(request.url), secrets),
        headers=[(key, redact(value, secrets)) for key, value in request.headers.items()],
        body=redact(request.body.decode("utf-8", errors="replace"), secrets),
        secret=masked(hook.secret),
    )

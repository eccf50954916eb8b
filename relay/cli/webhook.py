"""``relay webhook``: where changes are sent, and how (add, edit, show, rotate a secret, pause)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from relay.cli.common import (
    Dsn,
    add_row,
    admin,
    admin_session,
    checked,
    database,
    fail,
    group,
    load_settings,
    named,
    out,
    print_fields,
    print_table,
    remove,
    switch,
)
from relay.db import first_line
from relay.reasons import MASK, sensitive, url_shown
from relay.rules import edits
from relay.rules import preview as preview_module
from relay.store import Store

if TYPE_CHECKING:
    from relay.settings import Settings


webhook_app = group("Webhooks: where changes are sent.")


MaxAttempts = Annotated[
    int | None,
    typer.Option(
        min=edits.MAX_ATTEMPTS[0],
        max=edits.MAX_ATTEMPTS[1],
        help="Attempts per delivery to this webhook, 1 to 1000 (default: RELAY_MAX_ATTEMPTS).",
    ),
]
RetryBase = Annotated[
    float | None,
    typer.Option(
        min=edits.RETRY_BASE_SECONDS[0],
        max=edits.RETRY_BASE_SECONDS[1],
        help="First retry delay, seconds (default: RELAY_RETRY_BASE_SECONDS).",
    ),
]
RetryMax = Annotated[
    float | None,
    typer.Option(
        min=edits.RETRY_MAX_SECONDS[0],
        max=edits.RETRY_MAX_SECONDS[1],
        help="Longest retry delay, seconds, at most 30 days (default: RELAY_RETRY_MAX_SECONDS).",
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        min=edits.TIMEOUT_SECONDS[0],
        max=edits.TIMEOUT_SECONDS[1],
        help="Seconds per request, at most 300 (default: 10).",
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        min=edits.BATCH_SIZE[0],
        max=edits.BATCH_SIZE[1],
        help="Changes per request, 1 to 1000; above 1 the body is a JSON array (default: 1).",
    ),
]
BatchWait = Annotated[
    int | None,
    typer.Option(
        min=edits.BATCH_WAIT_MS[0],
        max=edits.BATCH_WAIT_MS[1],
        help="Milliseconds a batch that is not full may wait for more changes (default: 0).",
    ),
]


Concurrency = Annotated[
    str | None,
    typer.Option(
        "--concurrency",
        metavar="N|default",
        help="Requests in flight to this webhook across all relays, 1 to 10000 ('default': "
        "RELAY_WEBHOOK_CONCURRENCY).",
    ),
]
RateLimit = Annotated[
    str | None,
    typer.Option(
        "--rate-limit",
        metavar="R|none",
        help="Requests a second to this webhook across all relays, evenly spaced, 0.001 to "
        "100000 ('none': no limit).",
    ),
]
DeadAfter = Annotated[
    str | None,
    typer.Option(
        "--dead-after",
        metavar="DURATION|default",
        help="How long its endpoint may fail without one success before relay pauses the "
        "webhook as dead: 3600s, 90m, 12h, 3d; at least 60s, at most 365d ('default': "
        "RELAY_DEAD_AFTER_SECONDS, 5 days).",
    ),
]
Ordering = Annotated[
    str | None,
    typer.Option(
        "--ordering",
        metavar="row|transaction|key",
        help="Which changes go out one after another: each row's (row, the default), every "
        "change one transaction after another (transaction), or those whose --ordering-key "
        "renders the same (key).",
    ),
]
Related = Annotated[
    str | None,
    typer.Option(
        "--related",
        metavar="JSON",
        help="""Nest columns of rows the change's foreign keys reference in data: """
        """'{"site_id": ["name", "slug"]}' nests data.site = {id, name, slug}; '' (edit) """
        "removes it. The relay's role needs SELECT on the referenced tables (docs/rules.md).",
    ),
]
Coalesce = Annotated[
    bool | None,
    typer.Option(
        "--coalesce/--no-coalesce",
        help="Send a row's changes within one transaction as one event (created then updated: "
        "one created, with the last image); --no-coalesce, the default: every change.",
    ),
]
OrderingKey = Annotated[
    str | None,
    typer.Option(
        "--ordering-key",
        metavar="TEMPLATE",
        help="With --ordering key (implied when --ordering is not given): a Jinja2 template, "
        "with the body's context; compiled before it is stored.",
    ),
]

BodyFormat = Annotated[
    str | None,
    typer.Option(
        "--body-format",
        metavar="relay|netbox4",
        help="The default body's shape (when there is no body template): relay's (NetBox 3's "
        "keys and relay's own: relay, the default) or NetBox 4's (netbox4: event, timestamp, "
        "object_type, data, request, snapshots).",
    ),
]


@webhook_app.command("add")
def webhook_add(
    name: Annotated[str, typer.Argument(help="Unique name.")],
    url: Annotated[str, typer.Option("--url", help="Payload URL (may be a Jinja2 template).")],
    dsn: Dsn,
    method: Annotated[str, typer.Option(help="GET, POST, PUT, PATCH or DELETE.")] = "POST",
    content_type: Annotated[str, typer.Option()] = "application/json",
    header: Annotated[
        list[str] | None, typer.Option("--header", help="'Name: Value' (Jinja2); repeatable.")
    ] = None,
    body_template: Annotated[str | None, typer.Option(help="Jinja2 body (default: JSON).")] = None,
    body_template_file: Annotated[Path | None, typer.Option(help="Read the body template.")] = None,
    secret_env: Annotated[
        str | None,
        typer.Option(
            help="Name of an environment variable holding the secret (kept out of "
            "shell history and process lists)."
        ),
    ] = None,
    signature: Annotated[str, typer.Option(help="netbox, standard or none.")] = "netbox",
    ssl_verification: Annotated[
        bool, typer.Option("--ssl-verification/--no-ssl-verification")
    ] = True,
    ca_file: Annotated[str | None, typer.Option(help="CA bundle to verify the receiver.")] = None,
    timeout: Timeout = None,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled")] = True,
    max_attempts: MaxAttempts = None,
    retry_base_seconds: RetryBase = None,
    retry_max_seconds: RetryMax = None,
    batch_size: BatchSize = None,
    batch_wait_ms: BatchWait = None,
    concurrency: Concurrency = None,
    rate_limit: RateLimit = None,
    dead_after: DeadAfter = None,
    ordering: Ordering = None,
    ordering_key: OrderingKey = None,
    body_format: BodyFormat = None,
    related: Related = None,
    coalesce: Coalesce = None,
) -> None:
    """Add a webhook (its templates are compiled first: a broken one is refused)."""
    steering = _steering(concurrency, rate_limit, dead_after, ordering, ordering_key)
    template = _body_template(body_template, body_template_file) or ""
    secret = _secret(secret_env) or ""
    row = admin.WebhookRow(
        name=name,
        payload_url=url,
        http_method=method,
        http_content_type=content_type,
        additional_headers="\n".join(header or []),
        body_template=template,
        secret=secret,
        signature=signature,
        ssl_verification=ssl_verification,
        ca_file_path=ca_file,
        enabled=enabled,
        max_attempts=max_attempts,
        retry_base_seconds=_decimal(retry_base_seconds),
        retry_max_seconds=_decimal(retry_max_seconds),
    )
    if timeout is not None:
        row.timeout_seconds = Decimal(str(timeout))
    if batch_size is not None:
        row.batch_size = batch_size
    if batch_wait_ms is not None:
        row.batch_wait_ms = batch_wait_ms
    if body_format is not None:
        row.body_format = _body_format(body_format)
    if coalesce is not None:
        row.coalesce_changes = coalesce
    for key, value in steering.items():
        setattr(row, key, value)
    row.related = _related(related)
    _refuse_broken_templates(row)
    with admin_session(dsn) as db:
        db.add(row)
    out.print(f"webhook {name} added", highlight=False)


@webhook_app.command("edit")
def webhook_edit(
    name: Annotated[str, typer.Argument(help="The webhook to change.")],
    dsn: Dsn,
    url: Annotated[str | None, typer.Option("--url", help="Payload URL (Jinja2).")] = None,
    method: Annotated[str | None, typer.Option(help="GET, POST, PUT, PATCH or DELETE.")] = None,
    content_type: Annotated[str | None, typer.Option()] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", help="'Name: Value' (Jinja2); repeatable; replaces them all."),
    ] = None,
    body_template: Annotated[str | None, typer.Option(help="Jinja2 body ('' for JSON).")] = None,
    body_template_file: Annotated[Path | None, typer.Option(help="Read the body template.")] = None,
    secret_env: Annotated[
        str | None, typer.Option(help="Name of an environment variable holding the new secret.")
    ] = None,
    signature: Annotated[str | None, typer.Option(help="netbox, standard or none.")] = None,
    ssl_verification: Annotated[
        bool | None, typer.Option("--ssl-verification/--no-ssl-verification")
    ] = None,
    ca_file: Annotated[str | None, typer.Option(help="CA bundle ('' for none).")] = None,
    timeout: Timeout = None,
    max_attempts: MaxAttempts = None,
    retry_base_seconds: RetryBase = None,
    retry_max_seconds: RetryMax = None,
    batch_size: BatchSize = None,
    batch_wait_ms: BatchWait = None,
    retry_default: Annotated[
        bool,
        typer.Option(
            "--retry-default",
            help="Forget the webhook's own retry policy: the relay's settings apply again.",
        ),
    ] = False,
    concurrency: Concurrency = None,
    rate_limit: RateLimit = None,
    dead_after: DeadAfter = None,
    ordering: Ordering = None,
    ordering_key: OrderingKey = None,
    body_format: BodyFormat = None,
    related: Related = None,
    coalesce: Coalesce = None,
) -> None:
    """Change some of a webhook's fields; the others stay (templates compiled first)."""
    steering = _steering(concurrency, rate_limit, dead_after, ordering, ordering_key)
    if steering.get("ordering") in ("row", "transaction"):
        steering["ordering_key"] = None  # only ordering = key has one
    template = _body_template(body_template, body_template_file)
    secret = _secret(secret_env)
    changes: dict[str, Any] = {
        "payload_url": url,
        "http_method": method,
        "http_content_type": content_type,
        "additional_headers": None if header is None else "\n".join(header),
        "body_template": template,
        "secret": secret,
        "signature": signature,
        "ssl_verification": ssl_verification,
        "timeout_seconds": _decimal(timeout),
        "max_attempts": max_attempts,
        "retry_base_seconds": _decimal(retry_base_seconds),
        "retry_max_seconds": _decimal(retry_max_seconds),
        "batch_size": batch_size,
        "batch_wait_ms": batch_wait_ms,
        "body_format": None if body_format is None else _body_format(body_format),
        "coalesce_changes": coalesce,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    if retry_default:
        if {"max_attempts", "retry_base_seconds", "retry_max_seconds"} & changes.keys():
            fail("--retry-default forgets the webhook's retry policy: give it alone or drop it", 2)
        changes.update(max_attempts=None, retry_base_seconds=None, retry_max_seconds=None)
    if ca_file is not None:
        changes["ca_file_path"] = ca_file or None  # '' removes it
    changes.update(steering)
    if related is not None:
        changes["related"] = _related(related)
    if not changes:
        fail("nothing to change: give at least one option (relay webhook edit --help)", 2)
    with admin_session(dsn) as db:
        hook = named("webhook", admin.webhook_by_name, db, name)
        if "secret" in changes or changes.get("signature", hook.signature) != hook.signature:
            admin.forget_previous_secret(hook)
        for key, value in changes.items():
            setattr(hook, key, value)
        _refuse_broken_templates(hook)
    out.print(f"webhook {name} changed: {', '.join(sorted(changes))}", highlight=False)


def _related(value: str | None) -> dict[str, Any] | None:
    return checked(edits.related, value)


def _related_shown(related: dict[str, Any] | None) -> str:
    """The related option as written (names not ASCII-escaped), or "(none)"."""
    return "(none)" if related is None else json.dumps(related, ensure_ascii=False)


def _decimal(value: float | None) -> Decimal | None:
    """Seconds as the database keeps them (exactly what was typed, not a binary float's digits)."""
    return None if value is None else Decimal(str(value))


def _steering(
    concurrency: str | None,
    rate_limit: str | None,
    dead_after: str | None,
    ordering: str | None,
    ordering_key: str | None,
) -> dict[str, Any]:
    """The 0026 columns the options give (relay/rules/edits.py), refused in one line (exit 2)
    before anything is stored."""
    return checked(edits.steering, concurrency, rate_limit, dead_after, ordering, ordering_key)


def _duration(seconds: float) -> str:
    """Seconds as the largest unit that says them exactly: 5d, 12h, 90m, 61s."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _body_template(text: str | None, path: Path | None) -> str | None:
    if path is None:
        return text
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--body-template-file {path}: {_unreadable(exc)}", 2)


def _body_format(text: str) -> str:
    return checked(edits.body_format, text)


def _secret(variable: str | None) -> str | None:
    """The secret from the environment (never from the command line)."""
    if variable is None:
        return None
    if variable not in os.environ:
        fail(f"environment variable {variable} is not set: export it, or give another name", 2)
    return os.environ[variable]


def _refuse_broken_templates(row: admin.WebhookRow) -> None:
    problem = edits.template_problem(
        row.name,
        row.payload_url,
        row.additional_headers or "",
        row.body_template or "",
        row.ordering_key,
        load_settings(None).template_env_globs,
    )
    if problem is not None:
        fail(f"{problem} (nothing was stored: fix the template)", 2)


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return os.strerror(exc.errno) if exc.errno else first_line(exc)


@webhook_app.command("list")
def webhook_list(dsn: Dsn) -> None:
    """List webhooks (secrets masked), with their pause, limits, ordering and body format."""
    shown = _Shown(load_settings(None))
    with admin_session(dsn) as db:
        table = Table(
            "name",
            "method",
            "url",
            "signature",
            "secret",
            "enabled",
            "paused",
            "concurrency",
            "rate limit",
            "dead after",
            "ordering",
            "body format",
            "rules",
        )
        for hook in admin.webhooks(db):
            add_row(
                table,
                hook.name,
                hook.http_method,
                url_shown(hook.payload_url),
                hook.signature,
                preview_module.masked(hook.secret),
                "yes" if hook.enabled else "no",
                _paused_shown(hook.paused_at, hook.paused_reason),
                shown.concurrency(hook.concurrency),
                shown.rate_limit(hook.rate_limit),
                shown.dead_after(hook.dead_after_seconds),
                hook.ordering,
                hook.body_format,
                str(len(hook.rules)),
            )
    print_table(table)


@webhook_app.command("show")
def webhook_show(name: str, dsn: Dsn) -> None:
    """Show one webhook (secret masked), its pause, limits, ordering and body format."""
    shown = _Shown(load_settings(None))
    with admin_session(dsn) as db:
        hook = named("webhook", admin.webhook_by_name, db, name)
        fields = {
            "name": hook.name,
            "payload_url": url_shown(hook.payload_url),
            "http_method": hook.http_method,
            "http_content_type": hook.http_content_type,
            "additional_headers": _headers_shown(hook.additional_headers or ""),
            "body_template": hook.body_template,
            "body_format": _body_format_shown(hook.body_format, hook.body_template),
            "secret": preview_module.masked(hook.secret),
            "previous_secret": edits.previous_secret_shown(
                hook.previous_secret, hook.previous_secret_until
            ),
            "signature": hook.signature,
            "ssl_verification": hook.ssl_verification,
            "ca_file_path": hook.ca_file_path,
            "timeout_seconds": hook.timeout_seconds,
            **_retry_fields(hook),
            "batch_size": hook.batch_size,
            "batch_wait_ms": hook.batch_wait_ms,
            "enabled": hook.enabled,
            "paused": _paused_shown(hook.paused_at, hook.paused_reason),
            "concurrency": shown.concurrency(hook.concurrency),
            "rate_limit": shown.rate_limit(hook.rate_limit),
            "dead_after": shown.dead_after(hook.dead_after_seconds),
            "ordering": hook.ordering,
            "ordering_key": hook.ordering_key or "(none)",
            "related": _related_shown(hook.related),
            "coalesce_changes": hook.coalesce_changes,
            "rules": ", ".join(sorted(r.name for r in hook.rules)) or "(none)",
        }
    print_fields(fields)


class _Shown:
    """The 0026 columns as show and list print them: the webhook's own value, or, for NULL,
    the setting's value in this command's environment (the relay's may differ: it reads its
    own) marked "(setting NAME)", or "none"."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def concurrency(self, value: int | None) -> str:
        if value is not None:
            return str(value)
        return f"{self.settings.webhook_concurrency} (setting RELAY_WEBHOOK_CONCURRENCY)"

    @staticmethod
    def rate_limit(value: Decimal | None) -> str:
        return "none" if value is None else f"{value.normalize():f}/s"

    def dead_after(self, value: int | None) -> str:
        if value is not None:
            return _duration(value)
        setting = _duration(self.settings.dead_after_seconds)
        return f"{setting} (setting RELAY_DEAD_AFTER_SECONDS)"


def _paused_shown(paused_at: datetime | None, reason: str | None) -> str:
    """A webhook's pause in words: no, by the operator since when, or as dead since when."""
    if paused_at is None:
        return "no"
    since = paused_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"as dead since {since}" if reason == "dead" else f"by the operator since {since}"


def _body_format_shown(body_format: str, body_template: str) -> str:
    """The format, and whether it is sent: a body template, when set, is the body instead."""
    if body_template.strip():
        return f"{body_format} (not used: body_template is the body)"
    return body_format


def _headers_shown(lines: str) -> str:
    """additional_headers as shown: the value of a header whose name says it is a credential
    is masked, unless it is a template (which says where the value comes from)."""
    shown = []
    for line in lines.splitlines():
        name, sep, value = line.partition(":")
        if sep and sensitive(name) and value.strip() and "{" not in value:
            line = f"{name}: {MASK}"
        shown.append(line)
    return "\n".join(shown)


def _retry_fields(hook: admin.WebhookRow) -> dict[str, str]:
    """The retry policy as it applies: the webhook's own values, or the relay setting that
    decides (the relay process's, which this command cannot see)."""
    own = {
        "max_attempts": (hook.max_attempts, "RELAY_MAX_ATTEMPTS"),
        "retry_base_seconds": (hook.retry_base_seconds, "RELAY_RETRY_BASE_SECONDS"),
        "retry_max_seconds": (hook.retry_max_seconds, "RELAY_RETRY_MAX_SECONDS"),
    }
    return {
        key: f"relay's {setting}" if value is None else str(value)
        for key, (value, setting) in own.items()
    }


@webhook_app.command("rotate-secret")
def webhook_rotate_secret(
    name: Annotated[str, typer.Argument(help="The webhook whose secret changes.")],
    dsn: Dsn,
    grace: Annotated[
        str,
        typer.Option(
            help="How long the previous secret keeps signing (90s, 30m, 24h, 7d; at most 30d); "
            "0: the new one alone, at once."
        ),
    ] = "24h",
    secret_file: Annotated[
        Path | None,
        typer.Option(
            help="Read the new secret from this file (default: standard input; never an "
            "argument, which process lists and shell history would keep)."
        ),
    ] = None,
) -> None:
    """Give a webhook a new secret, the previous one signing for a period: Standard Webhooks
    requests carry both signatures until it ends; NetBox's single X-Hook-Signature stays
    signed with the previous secret until it ends, then with the new one (docs/security.md)."""
    period = checked(edits.grace, grace)
    given = _secret_given(secret_file)
    with admin_session(dsn) as db:
        hook = named("webhook", admin.webhook_to_rotate, db, name)
        secret = checked(edits.new_secret, given, hook.signature, hook.secret)
        kept = edits.kept_signing(hook, secret)
        said = edits.rotated(admin.rotate_secret(db, hook, secret, kept, period), hook.signature)
    out.print(f"webhook {name}: {said}", highlight=False)


def _secret_given(secret_file: Path | None) -> str:
    """The new secret's text, from the file, the terminal's prompt or standard input, read
    no further than a secret can be long: a wrong file (/dev/zero, a disk image) or an endless
    pipe would otherwise be read into memory whole."""
    if secret_file is None and sys.stdin.isatty():
        return str(typer.prompt("New secret", hide_input=True, err=True))
    where = "standard input" if secret_file is None else f"--secret-file {secret_file}"
    try:
        if secret_file is None:
            given = sys.stdin.read(edits.SECRET_LONGEST + 1)
        else:
            with secret_file.open(encoding="utf-8") as opened:
                given = opened.read(edits.SECRET_LONGEST + 1)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{where}: {_unreadable(exc)}; give a readable UTF-8 file holding the secret", 2)
    if len(given) > edits.SECRET_LONGEST:
        fail(
            f"{where}: longer than {edits.SECRET_LONGEST} characters, which no secret is: "
            "give the secret alone",
            2,
        )
    return given


@webhook_app.command("remove")
def webhook_remove(name: str, dsn: Dsn) -> None:
    """Remove a webhook no rule uses."""

    def in_use(hook: admin.WebhookRow) -> str | None:
        return edits.webhook_in_use(name, [r.name for r in hook.rules])

    remove("webhook", admin.webhook_by_name, name, dsn, in_use)


@webhook_app.command("enable")
def webhook_enable(name: str, dsn: Dsn) -> None:
    """Match changes for a disabled webhook again (`relay retry` sends what failed meanwhile)."""
    switch("webhook", admin.webhook_by_name, name, dsn, True)


@webhook_app.command("disable")
def webhook_disable(
    name: str,
    dsn: Dsn,
    yes: Annotated[
        bool, typer.Option("--yes", help="Fail the pending deliveries without asking.")
    ] = False,
) -> None:
    """Stop matching changes for a webhook, and FAIL ITS PENDING DELIVERIES (each saying the
    webhook is disabled; their changes fail with them, and `relay retry` sends them again once
    it is enabled). Asks first, saying how many (--yes: do not ask). To stop sending without
    failing anything, use `relay webhook pause`."""
    with database(dsn) as conn:
        found = Store(conn).webhook_steering(name)
    if found is None:
        fail(f"no webhook named {name!r} (relay webhook list shows them)", 2)
    if found.enabled and found.pending and not yes:
        count = f"{found.pending} pending deliver{'y' if found.pending == 1 else 'ies'}"
        if not sys.stdin.isatty():
            fail(
                f"disabling webhook {name!r} fails its {count}: give --yes to disable it anyway, "
                f"or pause it instead (relay webhook pause {name}) to keep them",
                2,
            )
        question = (
            f"Disabling webhook {name} fails its {count} (relay webhook pause {name} keeps "
            "them). Disable it?"
        )
        if not typer.confirm(question, default=False):
            fail(f"webhook {name} not disabled: nothing changed", 1)
    switch("webhook", admin.webhook_by_name, name, dsn, False)


@webhook_app.command("pause")
def webhook_pause(name: str, dsn: Dsn) -> None:
    """Stop sending to a webhook without losing anything: changes still match it, and its
    deliveries wait (no attempt is made or counted) until `relay webhook resume`, then go out
    in order. Requests in flight finish; what a relay had claimed and not sent goes back
    unsent. The same as, in SQL: UPDATE relay.webhooks SET
    paused_at = now(), paused_reason = 'operator' WHERE name = '...'."""
    with database(dsn) as conn:
        store = Store(conn)
        found = store.webhook_steering(name)
        if found is None:
            fail(f"no webhook named {name!r} (relay webhook list shows them)", 2)
        if found.paused_at is not None:
            out.print(
                f"webhook {name} is already paused "
                f"({_paused_shown(found.paused_at, found.paused_reason)}); "
                f"{_waiting(found.pending)}",
                highlight=False,
            )
            return
        store.pause_webhook(name)
    out.print(
        f"webhook {name} paused: {_waiting(found.pending)}; relay webhook resume {name} sends "
        "them, in order",
        highlight=False,
    )


@webhook_app.command("resume")
def webhook_resume(name: str, dsn: Dsn) -> None:
    """Send to a paused webhook again (paused by the operator, or by relay as dead): its
    waiting deliveries go out in order, and the time to a dead endpoint counts again from its
    next failure."""
    with database(dsn) as conn:
        store = Store(conn)
        found = store.webhook_steering(name)
        if found is None:
            fail(f"no webhook named {name!r} (relay webhook list shows them)", 2)
        resumed = store.resume_webhook(name)
    if not resumed:
        out.print(f"webhook {name} is not paused: nothing changed", highlight=False)
        return
    out.print(
        f"webhook {name} resumed ({_paused_shown(found.paused_at, found.paused_reason)}): "
        f"{found.pending} pending deliver{'y goes' if found.pending == 1 else 'ies go'} out, "
        "in order",
        highlight=False,
    )


def _waiting(pending: int) -> str:
    return f"{pending} pending deliver{'y waits' if pending == 1 else 'ies wait'}"

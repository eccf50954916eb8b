"""No URL token, password or secret reaches a recorded reason, a log line or a command's output,
whichever way it comes: a receiver's answer, the HTTP client's own message, a template's
output, an exception nobody foresaw, a reason an older relay recorded."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.db import Conn
from relay.delivery import plan
from relay.delivery.plan import Arrival, Plan
from relay.rules.ruleset import RuleSet
from relay.service import logs
from support.cli import relay, relay_env
from support.receivers import receiver
from support.worker import running, setup, sql, until

"""What must appear nowhere: each path's own, so that a failure says which path leaked."""
SECRET = "hook-secret-5e7a1c9d3b"
URL_TOKEN = "tok9-2c6e0a4f8b"


@contextmanager
def json_log() -> Iterator[io.TextIOWrapper]:
    """relay run's own JSON logging (relay/service/logs.py), into a buffer, for one test; the
    configuration before it is restored after."""
    before = structlog.get_config()
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    logs.configure(file=stream, fmt="json")
    structlog.configure(cache_logger_on_first_use=False)  # nothing keeps this configuration
    try:
        yield stream
    finally:
        structlog.configure(**before)


def test_every_value_of_every_log_line_is_scrubbed_whoever_logs_it() -> None:
    """Strings, the items of lists and mappings, an object written as its text, the event
    itself and a traceback: the processor sees them all, whatever the caller passed."""
    log = structlog.get_logger("anyone")
    url = f"https://u:pw-123456@hooks.example/services/{URL_TOKEN}"
    with json_log() as stream:
        try:
            raise ValueError(f"boom at {url}")
        except ValueError as exc:
            log.exception(f"failed at {url}", error=exc, urls=[url], more={"url": url}, n=3)
        stream.flush()
        text = stream.buffer.getvalue().decode()  # type: ignore[attr-defined]
    (line,) = [json.loads(line) for line in text.splitlines()]
    shown = "https://hooks.example/…"
    assert line["event"] == f"failed at {shown}" and line["error"] == f"boom at {shown}"
    assert line["urls"] == [shown] and line["more"] == {"url": shown} and line["n"] == 3
    assert f"ValueError: boom at {shown}" in line["exception"]
    assert URL_TOKEN not in text and "pw-123456" not in text


def test_a_fault_nobody_foresaw_is_logged_without_a_secret_or_a_url_token(
    rconn: Conn, relay_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception of relay's own outside any change, whose message (two lines) quotes the
    webhook's secret and a URL with a token: the log line says what failed, with a traceback,
    and shows neither."""
    make_plan = plan.plan
    faults = ["once"]

    def failing_plan(changes: Iterable[Arrival], ruleset: RuleSet) -> Plan:
        if faults:
            faults.pop()
            raise RuntimeError(
                f"injected with {SECRET} for https://u:p@hooks.example/services/{URL_TOKEN}"
                f"\nsecond line: {SECRET}"
            )
        return make_plan(changes, ruleset)

    monkeypatch.setattr(plan, "plan", failing_plan)

    async def scenario() -> int:
        async with receiver() as r:
            setup(rconn, r.url, secret=SECRET)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) == 1)
            return len(r.requests)

    with json_log() as stream:
        assert asyncio.run(scenario()) == 1
        stream.flush()
        text = stream.buffer.getvalue().decode()  # type: ignore[attr-defined]
    events: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    (failed,) = [e for e in events if e["event"] == "relay session failed, starting again"]
    assert failed["error"] == "RuntimeError: injected with ****** for https://hooks.example/…"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: injected with ******" in failed["exception"]
    assert SECRET not in text and URL_TOKEN not in text and "u:p@" not in text


def test_status_shows_a_reason_an_older_relay_recorded_without_its_url_token(
    rconn: Conn, relay_dsn: str
) -> None:
    """A reason recorded before this release (or written by hand) is shown by the same path."""
    setup(rconn, "https://example.test/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute(
        "INSERT INTO relay.deliveries (outbox_id, webhook_id, row_key, status, attempts)"
        " SELECT o.id, w.id, '1', 'failed', 1 FROM relay.outbox o, relay.webhooks w"
    )
    rconn.execute(
        "INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, duration_ms, error)"
        " SELECT outbox_id, webhook_id, 1, 5, %s FROM relay.deliveries",
        (f"HTTP 302: redirect to https://hooks.example/services/T0/B0/{URL_TOKEN} not followed",),
    )
    for args in (("status",), ("status", "--json")):
        shown = relay(*args, dsn=relay_dsn)
        assert shown.returncode == 0, shown.stderr
        assert "https://hooks.example/…" in shown.stdout and URL_TOKEN not in shown.stdout


def test_webhook_list_and_show_mask_credentials_in_the_url_and_headers(
    rconn: Conn, relay_dsn: str
) -> None:
    """The secret was masked while a URL's password, its token query and an Authorization
    header were printed in clear."""
    relay(
        "webhook",
        "add",
        "crm",
        "--url",
        f"https://bot:pw-{URL_TOKEN}@crm.example/hooks/orders?key={SECRET}&v=2",
        "--header",
        f"Authorization: Bearer auth-{URL_TOKEN}",
        dsn=relay_dsn,
    )
    listed = relay("webhook", "list", dsn=relay_dsn)
    shown = relay("webhook", "show", "crm", dsn=relay_dsn)
    for done in (listed, shown):
        assert done.returncode == 0, done.stderr
        assert "https://******@crm.example/hooks/orders?key=******&v=******" in done.stdout
        assert URL_TOKEN not in done.stdout and SECRET not in done.stdout
    assert "Authorization: ******" in shown.stdout


def test_preview_masks_credentials_in_the_url_and_values_read_from_the_environment(
    rconn: Conn, relay_dsn: str
) -> None:
    """A preview shows the request as it would go, the signature included, but not the URL's
    password, its query values or what templates read with env; a URL that renders to
    something else is shown by its origin."""
    setup(
        rconn,
        f"https://bot:pw-{URL_TOKEN}@crm.example/o/" + "{{ data.id }}?key={{ 'CRM_KEY' | env }}",
        "crm",
        secret=SECRET,
        additional_headers="X-Key: {{ 'CRM_KEY' | env }}",
    )
    setup(
        rconn,
        "{{ 'ftp' }}://bot:pw-" + f"{URL_TOKEN}@crm.example/x",
        "ftp",
        secret=SECRET,
    )
    rconn.execute("INSERT INTO items VALUES (7, 0)")
    env = {"RELAY_DSN": relay_dsn, "RELAY_TEMPLATE_ENV_ALLOW": "CRM_*", "CRM_KEY": "crm-key-9f3"}
    shown = relay_env("preview", "--rule", "crm", "--outbox-id", "1", **env)
    assert shown.returncode == 0, shown.stderr
    assert "POST https://******@crm.example/o/7?key=******" in shown.stdout.splitlines()
    assert "X-Key: ******" in shown.stdout and "X-Hook-Signature: " in shown.stdout
    assert URL_TOKEN not in shown.stdout and "crm-key-9f3" not in shown.stdout
    assert SECRET not in shown.stdout
    refused = relay_env("preview", "--rule", "ftp", "--outbox-id", "1", **env)
    assert refused.returncode == 1
    assert "payload_url rendered to 'ftp://crm.example/…'" in refused.stderr
    assert URL_TOKEN not in refused.stderr


def test_rules_check_reports_a_ca_file_that_cannot_be_used(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """It said "no problems" while every https delivery failed with "Unknown error 136"."""
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    setup(rconn, "https://a.example/", "not-a-cert", ca_file_path=str(not_a_certificate))
    setup(rconn, "http://b.example/", "missing", ca_file_path=str(tmp_path / "gone.pem"))
    setup(rconn, "https://c.example/", "fine")
    checked = relay("rules", "check", dsn=relay_dsn)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"webhook 'not-a-cert' (rule 'not-a-cert'): ca_file_path '{not_a_certificate}' holds no "
        "certificate (PEM, -----BEGIN CERTIFICATE-----)",
        f"webhook 'missing' (rule 'missing'): ca_file_path '{tmp_path / 'gone.pem'}' cannot be "
        "read: No such file or directory",
    ]

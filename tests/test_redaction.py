"""No URL token, password or secret reaches a recorded reason, a log line or a command's output,
whichever way it comes: a receiver's answer, the HTTP client's own message, a template's
output, an exception nobody foresaw, a reason an older relay recorded."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from relay.db import Conn
from relay.delivery import plan
from relay.delivery.plan import Arrival, Plan
from relay.rules.ruleset import RuleSet
from relay.service import logs
from support.cli import relay, relay_env
from support.receivers import free_port, raw_receiver, receiver
from support.worker import running, setup, sql, until

TOKENS = {
    "redirect": "tok1-0b8e4f2a9c",
    "ftp": "tok2-6d1c3a7e5f",
    "ftp-query": "tok3-9a2b7c4d1e",
    "status-line": "tok4-3e8f1a6b2c",
    "header-size": "tok5-7c4d9e2f8a",
    "chunk": "tok6-1f5a8b3c7d",
    "header-line": "tok7-4b9c2d6e1a",
    "userinfo": "tok8-8d3e7f1a5b",
}
"""What must appear nowhere: each path's own, so that a failure says which path leaked."""
SECRET = "hook-secret-5e7a1c9d3b"
URL_TOKEN = "tok9-2c6e0a4f8b"


def sinks(conn: Conn) -> dict[str, str]:
    """Every recorded reason, by where it is kept."""
    return {
        table: "\n".join(str(row[0]) for row in conn.execute(f"SELECT {column} FROM relay.{table}"))
        for table, column in [
            ("attempts", "error"),
            ("deliveries", "last_error"),
            ("outbox", "last_error"),
        ]
    }


def leaks(texts: dict[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """(sink, secret) for each secret a sink shows."""
    return [(sink, secret) for sink, text in texts.items() for secret in secrets if secret in text]


def test_no_sink_shows_a_url_token_a_password_or_a_credential(rconn: Conn, relay_dsn: str) -> None:
    """Webhooks whose receivers or templates put a token where a reason is made: a redirect
    to a Slack-style URL, a URL that renders to ftp://user:password@...?tok=..., responses
    aiohttp cannot parse (its message quotes the URL and its query), a header line missing
    its colon, a password in a URL nobody answers. ``relay run``'s JSON log, relay.attempts,
    relay.deliveries, relay.outbox and ``relay status`` (table and JSON) show none of them,
    and each reason still says what happened."""
    closed = free_port()

    async def slack_style(request: web.Request) -> web.Response:
        location = f"https://hooks.example/services/T000/B000/{TOKENS['redirect']}"
        return web.Response(status=302, headers={"Location": location})

    bad_status = b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"
    big_header = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
    bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"

    async def scenario() -> tuple[int | None, str, dict[str, str]]:
        async with (
            receiver(slack_style) as redirecting,
            receiver() as fine,
            raw_receiver(bad_status) as status_line,
            raw_receiver(big_header) as header_size,
            raw_receiver(bad_chunk) as chunk,
        ):
            urls = {
                "redirect": redirecting.url,
                "ftp": "{{ 'ftp' }}://user:"
                + f"{TOKENS['ftp']}@127.0.0.1/x?tok="
                + TOKENS["ftp-query"],
                "status-line": f"{status_line.url}?token={TOKENS['status-line']}",
                "header-size": f"{header_size.url}?token={TOKENS['header-size']}",
                "chunk": f"{chunk.url}?token={TOKENS['chunk']}",
                "header-line": fine.url,
                "userinfo": f"http://user:{TOKENS['userinfo']}@127.0.0.1:{closed}/x",
            }
            for name, url in urls.items():
                headers = ""
                if name == "header-line":
                    headers = f"Authorization Bearer {TOKENS['header-line']}{{{{ '' }}}}"
                setup(rconn, url, name, secret=f"{name}-secret", additional_headers=headers)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "run",
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
                    "RELAY_DSN": relay_dsn,
                    "RELAY_POLL_INTERVAL": "0.2",
                    "RELAY_MAX_ATTEMPTS": "2",
                    "RELAY_RETRY_BASE_SECONDS": "0.05",
                    "RELAY_RETRY_MAX_SECONDS": "0.1",
                },
                stderr=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
            )
            await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")

            def finished() -> bool:
                row = rconn.execute("SELECT status::text FROM relay.outbox").fetchone()
                return row is not None and row[0] == "failed"

            await until(finished, timeout=30)
            process.send_signal(signal.SIGTERM)
            _, log = await process.communicate()
        return process.returncode, log.decode(), {**urls, "status-line-host": status_line.url}

    code, log, urls = asyncio.run(scenario())
    assert code == 0, log
    table = relay("status", "--errors", "100", dsn=relay_dsn)
    as_json = relay("status", "--json", "--errors", "100", dsn=relay_dsn)
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    texts = {
        **sinks(rconn),
        "relay run's log": log,
        "relay status": table.stdout,
        "relay status --json": as_json.stdout,
    }
    assert leaks(texts, TOKENS.values()) == []
    assert all(json.loads(line) for line in log.splitlines())  # JSON lines, every one

    reasons: dict[str, str] = dict(
        rconn.execute(
            "SELECT w.name, d.last_error FROM relay.deliveries d"
            " JOIN relay.webhooks w ON w.id = d.webhook_id"
        ).fetchall()
    )
    status_host = urls["status-line-host"].removeprefix("http://").removesuffix("/hook")
    assert reasons["redirect"] == "HTTP 302: redirect to https://hooks.example/… not followed"
    assert reasons["ftp"] == (
        "payload_url rendered to 'ftp://127.0.0.1/…', not an http(s) URL with a host"
    )
    assert reasons["status-line"] == (
        f"the response from {status_host} cannot be read: Bad status line: "
        "Invalid status code: b'HTTP/1.1 2x0 OK'"
    )
    assert "cannot be read: Got more than 8190 bytes" in reasons["header-size"]
    assert "cannot be read: Invalid character in chunk size" in reasons["chunk"]
    assert reasons["header-line"] == "additional_headers line 1 is not 'Name: Value': it has no ':'"
    assert reasons["userinfo"] == f"cannot connect to 127.0.0.1:{closed}: Connection refused"
    assert "https://hooks.example/…" in table.stdout


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

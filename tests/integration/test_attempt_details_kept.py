"""What an attempt keeps of its request as sent and of the response (RELAY_ATTEMPT_DETAILS),
relay run against real receivers: credentials and signatures masked (the masking alone:
tests/unit/test_attempt_details.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay.db import Conn
from relay.reasons import MASK
from support.receivers import Receiver, receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until

SECRET = "s3cr3t-for-signing"


def failing_then_ok() -> Callable[[web.Request], Awaitable[web.Response]]:
    """A receiver's handler: 500 with headers of its own (a cookie, one echoing the token) the
    first time, 200 after."""
    answered: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        answered.append(1)
        if len(answered) > 1:
            return web.Response(text="ok", headers={"X-Request-Id": "req-2"})
        response = web.Response(status=500, text="<b>broken</b>", headers={"X-Request-Id": "req-1"})
        response.headers.add("Set-Cookie", "sid=abcdef123; HttpOnly")
        response.headers.add("X-Echo", request.headers.get("Authorization", ""))
        response.headers.add("X-Got", request.headers.get("X-Hook-Signature", ""))
        return response

    return handle


def header(kept: dict[str, Any], name: str) -> str:
    """A kept header's value by name, in any case (aiohttp's server writes X-Request-ID)."""
    found: str = next(value for key, value in kept["headers"] if key.lower() == name.lower())
    return found


def attempts(rconn: Conn) -> list[tuple[int, int, dict[str, Any] | None, str]]:
    rows = rconn.execute(
        "SELECT attempt, status_code, details, a::text FROM relay.attempts a ORDER BY id"
    ).fetchall()
    return [(n, status, kept, text) for n, status, kept, text in rows]


def run_one_change(rconn: Conn, relay_dsn: str, keep: str) -> Receiver:
    async def scenario() -> Receiver:
        async with receiver(failing_then_ok()) as r:
            setup(
                rconn,
                r.url + "?api_token=qt-7777777&region=eu",
                secret=SECRET,
                additional_headers="Authorization: Bearer tok-1234567\nX-Tenant: acme",
            )
            settings = FAST.model_copy(update={"attempt_details": keep})
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 7)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"])
            return r

    return asyncio.run(scenario())


def test_a_failed_attempt_keeps_the_request_as_sent_masked_and_the_response_headers(
    rconn: Conn, relay_dsn: str
) -> None:
    """The default (failed): the 500's attempt keeps method, URL, headers and body as sent,
    with the signature, the token and the cookie masked, and the response's headers; the
    delivered attempt keeps what it kept before."""
    r = run_one_change(rconn, relay_dsn, "failed")
    sent = r.requests[0]
    signature = hmac.new(SECRET.encode(), sent.body, hashlib.sha512).hexdigest()
    assert sent.headers["X-Hook-Signature"] == signature
    (first, status, kept, row), (second, ok, none, _) = attempts(rconn)
    assert (first, status, second, ok, none) == (1, 500, 2, 200, None)
    assert kept is not None
    request, response = kept["request"], kept["response"]
    assert request["method"] == "POST"
    assert request["url"] == f"{r.url}?api_token={MASK}&region={MASK}"
    headers = dict(request["headers"])
    assert headers["X-Hook-Signature"] == MASK
    assert headers["Authorization"] == MASK
    assert headers["X-Tenant"] == "acme"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Relay-Delivery"] == sent.headers["X-Relay-Delivery"]
    assert json.loads(request["body"]) == json.loads(sent.body)
    assert (request["body_bytes"], request["body_cut"]) == (len(sent.body), False)
    assert header(response, "X-Request-Id") == "req-1"
    assert header(response, "Set-Cookie") == MASK
    assert header(response, "X-Echo") == MASK
    assert header(response, "X-Got") == MASK  # the signature, echoed under another name
    for never in (SECRET, signature, "tok-1234567", "qt-7777777", "abcdef123"):
        assert never not in row


def test_all_keeps_delivered_attempts_too(rconn: Conn, relay_dsn: str) -> None:
    run_one_change(rconn, relay_dsn, "all")
    (_, _, failed, _), (_, _, delivered, _) = attempts(rconn)
    assert failed is not None and delivered is not None
    assert header(delivered["response"], "X-Request-Id") == "req-2"
    assert dict(delivered["request"]["headers"])["X-Hook-Signature"] == MASK


def test_none_keeps_nothing(rconn: Conn, relay_dsn: str) -> None:
    run_one_change(rconn, relay_dsn, "none")
    assert [kept for _, _, kept, _ in attempts(rconn)] == [None, None]


def test_a_request_that_got_no_answer_keeps_the_request_alone(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> None:
        setup(rconn, "http://127.0.0.1:9/hook", secret=SECRET)
        settings = FAST.model_copy(update={"max_attempts": 1})
        async with running(relay_dsn, settings):
            await sql(relay_dsn, "INSERT INTO items VALUES (1, 7)")
            await until(lambda: outbox_statuses(rconn) == ["failed"])

    asyncio.run(scenario())
    [(_, status, kept, _)] = attempts(rconn)
    assert status is None and kept is not None
    assert "response" not in kept
    assert dict(kept["request"]["headers"])["X-Hook-Signature"] == MASK


def test_a_batchs_request_is_kept_on_the_attempt_of_each_of_its_deliveries(
    rconn: Conn, relay_dsn: str
) -> None:
    """One request for three changes, refused: each delivery's attempt keeps that request (as
    each keeps its status and excerpt), the body being the batch's array."""

    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async def scenario() -> Receiver:
        async with receiver(refusing) as r:
            setup(rconn, r.url, secret=SECRET, batch_size=10, batch_wait_ms=300, max_attempts=1)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
                await until(lambda: outbox_statuses(rconn) == ["failed"] * 3)
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 1
    kept = [kept for _, status, kept, _ in attempts(rconn) if status == 503]
    assert len(kept) == 3 and kept[0] == kept[1] == kept[2] and kept[0] is not None
    request = kept[0]["request"]
    assert header(request, "X-Relay-Batch-Size") == "3"
    assert [c["data"]["id"] for c in json.loads(request["body"])] == [1, 2, 3]


def test_a_urls_password_echoed_back_as_basic_credentials_is_masked(
    rconn: Conn, relay_dsn: str
) -> None:
    """A URL's user part goes as Authorization: Basic base64(user:password), written by the
    HTTP client; a receiver that echoes it back (in a header or its body) shows no part of
    it."""

    async def echoing(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        return web.Response(status=500, text=f"got {sent}", headers={"X-Echo": sent})

    async def scenario() -> Receiver:
        async with receiver(echoing) as r:
            url = r.url.replace("http://", "http://bot:pw-7654321@")
            setup(rconn, url, secret=SECRET, max_attempts=1)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 7)")
                await until(lambda: outbox_statuses(rconn) == ["failed"])
            return r

    r = asyncio.run(scenario())
    basic = r.requests[0].headers["Authorization"]
    assert basic.startswith("Basic ")
    [(_, status, kept, row)] = attempts(rconn)
    assert status == 500 and kept is not None
    assert header(kept["response"], "X-Echo") == MASK
    assert basic.split()[1] not in row and "pw-7654321" not in row
    excerpt = rconn.execute("SELECT response_excerpt FROM relay.attempts").fetchone()
    assert excerpt is not None and basic.split()[1] not in excerpt[0]

"""What an attempt keeps of its request as sent and of the response (RELAY_ATTEMPT_DETAILS):
credentials and signatures masked (pure, first), then relay run against real receivers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from relay.db import Conn
from relay.delivery import details
from relay.reasons import MASK, Secrets, masking
from support.receivers import Receiver, receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until

SECRET = "s3cr3t-for-signing"


def shown(headers: dict[str, str], secrets: list[str] | None = None) -> dict[str, str]:
    return dict(details.masked_headers(headers.items(), secrets or [SECRET]))


def test_signatures_and_credentials_are_masked_whatever_their_case() -> None:
    kept = shown(
        {
            "X-Hook-Signature": "ab12" * 32,
            "webhook-signature": "v1,c2lnbmF0dXJl",
            "AUTHORIZATION": "Bearer tok-1234567",
            "Proxy-Authorization": "Basic dXNlcjpwdw==",
            "Cookie": "session=abcdef",
            "set-cookie": "id=42; HttpOnly",
            "X-Api-Key": "k-99999999",
            "Content-Type": "application/json",
            "webhook-id": "msg_1",
            "X-Relay-Delivery": "0f1e",
        }
    )
    assert kept == {
        "X-Hook-Signature": MASK,
        "webhook-signature": MASK,
        "AUTHORIZATION": MASK,
        "Proxy-Authorization": MASK,
        "Cookie": MASK,
        "set-cookie": MASK,
        "X-Api-Key": MASK,
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "X-Relay-Delivery": "0f1e",
    }


def test_a_header_whose_value_holds_the_secret_is_masked_whole() -> None:
    kept = shown({"X-Tenant": f"acme;{SECRET};eu", "X-Other": "acme"})
    assert kept == {"X-Tenant": MASK, "X-Other": "acme"}


def test_url_keeps_its_path_but_not_its_user_part_nor_query_values() -> None:
    request = details.request_details(
        "POST", "https://bot:pw-123456@hooks.example/T1/B2?token=abc&x=1", {}, b"{}", []
    )
    assert request["url"] == f"https://{MASK}@hooks.example/T1/B2?token={MASK}&x={MASK}"
    in_path = details.request_details("POST", f"https://h.example/in/{SECRET}/x", {}, b"", [SECRET])
    assert in_path["url"] == f"https://h.example/in/{MASK}/x"


def test_the_body_is_kept_to_4_kib_and_says_it_was_cut() -> None:
    body = b'{"v": "' + b"x" * 10_000 + b'"}'
    request = details.request_details("POST", "http://h/", {}, body, [])
    assert len(request["body"].encode()) == details.BODY_BYTES
    assert (request["body_bytes"], request["body_cut"]) == (len(body), True)
    small = details.request_details("POST", "http://h/", {}, b'{"id": 1}', [])
    assert (small["body"], small["body_bytes"], small["body_cut"]) == ('{"id": 1}', 9, False)


def test_a_secret_in_the_body_is_masked_even_across_the_cut() -> None:
    inside = details.body_excerpt(f'{{"token": "{SECRET}"}}'.encode(), [SECRET])
    assert SECRET not in inside and MASK in inside
    across = b"x" * (details.BODY_BYTES - 5) + SECRET.encode()
    excerpt = details.body_excerpt(across, [SECRET])
    assert SECRET[:5] not in excerpt


def test_a_body_of_secrets_brings_no_part_of_one_into_view() -> None:
    """Masking shortens the text: the first 8 KiB of 1000 copies of a 40-character secret mask
    to under 4 KiB, and what follows must not be the part of one that 8 KiB cut."""
    secret = "0123456789abcdef0123456789abcdefXYZW1234"
    excerpt = details.body_excerpt((secret * 1000).encode(), [secret])
    assert set(excerpt) == {"*"}  # masks, the last one cut
    assert len(excerpt.encode()) == details.BODY_BYTES


def test_a_value_read_with_env_is_masked_in_the_url_path_as_in_headers_and_body() -> None:
    """A URL template can put a value read with ``env`` in the path (Slack's token lives
    there); the worker knows those values (relay.reasons.masking)."""
    known = Secrets()
    known.update("settings", ["T0KEN-from-env-98765"])
    with masking(known):
        request = details.request_details(
            "POST",
            "https://hooks.example/services/T0KEN-from-env-98765",
            {"X-Route": "T0KEN-from-env-98765"},
            b'{"t": "T0KEN-from-env-98765"}',
            [],
        )
    assert request["url"] == f"https://hooks.example/services/{MASK}"
    assert dict(request["headers"]) == {"X-Route": MASK}
    assert request["body"] == f'{{"t": "{MASK}"}}'


def test_a_value_under_6_characters_is_no_secret_to_look_for_but_a_credential_is_masked() -> None:
    """As docs/security.md says: a secret of 5 characters is not looked for in other headers
    and the body (masking every "abcde" would make them unreadable); under a credential's
    name, or as the signature, it is masked all the same."""
    kept = shown({"X-Api-Key": "abcde", "X-Route": "abcde", "X-Hook-Signature": "ab"}, ["abcde"])
    assert kept == {"X-Api-Key": MASK, "X-Route": "abcde", "X-Hook-Signature": MASK}
    assert details.body_excerpt(b'{"r": "abcde"}', ["abcde"]) == '{"r": "abcde"}'


def test_what_no_column_can_hold_is_left_out() -> None:
    kept = shown({"X-Odd": "a\x00b\udcffc", "X-Long": "y" * 5000})
    assert kept["X-Odd"] == "ab?c"
    assert len(kept["X-Long"]) == details.HEADER_CHARS and kept["X-Long"].endswith("…")
    many = details.masked_headers([(f"X-{i}", "v") for i in range(70)], [])
    assert len(many) == details.MOST_HEADERS + 1
    assert many[-1] == ["…", "6 more not kept"]
    assert details.body_excerpt(b"a\x00\xffb", []) == "a\ufffdb"


@pytest.mark.parametrize(
    ("keep", "ok", "expected"),
    [
        ("failed", False, True),
        ("failed", True, False),
        ("all", True, True),
        ("all", False, True),
        ("none", False, False),
        ("none", True, False),
    ],
)
def test_which_attempts_keep_details(keep: details.Keep, ok: bool, expected: bool) -> None:
    assert details.kept(keep, ok=ok) is expected


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

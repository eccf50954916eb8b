"""Sending: every way a receiver can behave ends in an Outcome a person can read."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from aiohttp import web

from relay.delivery.send import Outcome, Sender, retry_after_seconds
from relay.model import Request, Webhook
from relay.render.request import Renderer
from support.receivers import Received, connect_proxy, never_answers, raw_receiver, receiver
from support.render import CHANGE
from support.render import HOOK as RENDER_HOOK

HOOK = Webhook(id=1, name="t", payload_url="unused", timeout_seconds=Decimal(2))
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def send(url: str, webhook: Webhook = HOOK, body: bytes = b'{"a": 1}') -> Outcome:
    request = Request(
        "POST", url, {"Content-Type": "application/json", "X-Relay-Delivery": "d1"}, body, "d1"
    )
    async with Sender() as sender:
        return await sender.send(request, webhook)


def test_2xx_is_success_and_the_request_arrives_intact() -> None:
    async def scenario() -> tuple[Outcome, list[Received]]:
        async with receiver() as r:
            outcome = await send(r.url + "?x=1")
            return outcome, r.requests

    outcome, requests = run(scenario())
    assert outcome.ok and outcome.status == 200 and outcome.excerpt == "ok"
    assert requests[0].method == "POST" and requests[0].path == "/hook?x=1"
    assert requests[0].body == b'{"a": 1}' and requests[0].headers["X-Relay-Delivery"] == "d1"


@pytest.mark.parametrize(
    ("status", "headers", "error", "permanent", "retry_after"),
    [
        (500, {}, "HTTP 500 Internal Server Error", False, None),
        (410, {}, "HTTP 410 Gone", True, None),
        (429, {"Retry-After": "7"}, "HTTP 429 Too Many Requests", False, 7.0),
        (503, {"Retry-After": "soon"}, "HTTP 503 Service Unavailable", False, None),
        (
            302,
            {"Location": "https://elsewhere.test/"},
            "HTTP 302: redirect to https://elsewhere.test not followed",
            False,
            None,
        ),
        # A redirect target by scheme and host alone: a Slack-style URL is its own token.
        (
            302,
            {"Location": "https://hooks.example/services/T000/B000/XXXXsecret"},
            "HTTP 302: redirect to https://hooks.example/… not followed",
            False,
            None,
        ),
        (
            307,
            {"Location": "/services/T000/B000/XXXXsecret?token=abc"},
            "HTTP 307: redirect to another path on the same host not followed",
            False,
            None,
        ),
    ],
)
def test_non_2xx_answers(
    status: int, headers: dict[str, str], error: str, permanent: bool, retry_after: float | None
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers, text="nope")

    async def scenario() -> tuple[Outcome, int]:
        async with receiver(answer) as r:
            return await send(r.url), len(r.requests)

    outcome, count = run(scenario())
    assert not outcome.ok and outcome.status == status and outcome.error == error
    assert outcome.permanent is permanent and outcome.retry_after == retry_after
    assert count == 1  # a redirect is not followed


def test_retry_after_as_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_after_seconds(format_datetime(when, usegmt=True))
    assert seconds is not None and 25 < seconds <= 30


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (" 12 ", 12.0),
        ("0", 0.0),
        ("9" * 400, float("inf")),  # the retry policy caps it at its longest delay
        ("²", None),  # str.isdigit() takes it, float() does not
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: float() reads it, HTTP does not
        ("1.5", None),
        ("-5", None),
        ("+5", None),
        ("1e3", None),
        ("Mon, 99 Foo 2026 00:00:00 GMT", None),
        ("Fri, 01 Jan 99999 00:00:00 GMT", None),
    ],
)
def test_retry_after_is_read_strictly(value: str, seconds: float | None) -> None:
    """Delay-seconds are ASCII digits (RFC 9110); anything else is no Retry-After at all, so
    the retry policy alone decides. Reading it never raises."""
    assert retry_after_seconds(value) == seconds


def test_a_503_with_an_unreadable_retry_after_is_the_receivers_answer() -> None:
    """The receiver got the request and said 503: the outcome says so and is retried, rather
    than "could not be made" and failed for good."""

    async def scenario() -> tuple[Outcome, int]:
        answer = "HTTP/1.1 503 Busy\r\nRetry-After: \u00b2\r\nContent-Length: 0\r\n\r\n"
        async with raw_receiver(answer.encode()) as r:
            return await send(r.url), r.requests

    outcome, requests = run(scenario())
    assert requests == 1
    assert (outcome.ok, outcome.status, outcome.error) == (False, 503, "HTTP 503 Busy")
    assert outcome.sent and not outcome.permanent and outcome.retry_after is None


def test_a_2xx_whose_body_cannot_be_read_is_delivered_and_says_why() -> None:
    """The receiver said yes; a broken gzip stream after it changes nothing but the excerpt.
    (No status of 400 is made up: nobody sent one.)"""
    broken = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!"

    async def scenario() -> Outcome:
        async with raw_receiver(broken) as r:
            return await send(r.url)

    outcome = run(scenario())
    assert (outcome.ok, outcome.status, outcome.error) == (True, 200, None)
    assert outcome.excerpt == (
        "(relay could not read the body: Can not decode content-encoding: gzip)"
    )


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "Bad status line"),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n",
            "Got more than 8190 bytes",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "Invalid character in chunk size",
        ),
    ],
    ids=["status line", "header too long", "chunk size"],
)
def test_a_response_that_cannot_be_parsed_is_said_without_the_url(
    answer: bytes, words: str
) -> None:
    """aiohttp's own message ends with the whole URL (query and all) and starts with its
    parser's "400": the reason has neither."""

    async def scenario() -> tuple[Outcome, str]:
        async with raw_receiver(answer) as r:
            return await send(r.url + "?token=tok-0123456789"), r.url

    outcome, url = run(scenario())
    host = url.removeprefix("http://").removesuffix("/hook")
    assert outcome.error is not None and not outcome.ok and outcome.status is None
    assert outcome.error.startswith(f"the response from {host} cannot be read: {words}")
    said = outcome.error.replace(host, "<host>")  # a port such as 40081 holds "400"
    assert "0123456789" not in said and "400" not in said
    assert "url=" not in outcome.error and "\n" not in outcome.error


@pytest.mark.timing
def test_a_receiver_that_never_answers_times_out() -> None:
    async def scenario() -> tuple[Outcome, float]:
        async with receiver(never_answers) as r:
            hook = Webhook(**{**HOOK.__dict__, "timeout_seconds": Decimal("0.5")})
            started = time.monotonic()
            outcome = await send(r.url, hook)
            return outcome, time.monotonic() - started

    outcome, elapsed = run(scenario())
    assert not outcome.ok and outcome.status is None
    assert outcome.error is not None
    assert (
        outcome.error.startswith("no response from 127.0.0.1:") and "within 0.5 s" in outcome.error
    )
    assert elapsed < 2


def test_nobody_listening() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    outcome = run(send(f"http://127.0.0.1:{port}/secret-token-path"))
    assert not outcome.ok
    assert outcome.error == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert "secret-token-path" not in outcome.error


def test_a_reset_connection() -> None:
    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.Response()

    async def scenario() -> Outcome:
        async with receiver(reset) as r:
            return await send(r.url)

    outcome = run(scenario())
    assert not outcome.ok and outcome.status is None
    assert outcome.error is not None
    assert "closed the connection" in outcome.error or "failed" in outcome.error


@pytest.mark.timing
def test_a_huge_response_is_cut_to_an_excerpt() -> None:
    big = b"x" * (10 * 1024 * 1024)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=big)

    async def scenario() -> tuple[Outcome, float]:
        async with receiver(answer) as r:
            started = time.monotonic()
            outcome = await send(r.url)
            return outcome, time.monotonic() - started

    outcome, elapsed = run(scenario())
    assert outcome.ok and len(outcome.excerpt) == 4096 and elapsed < 5


def test_tls_untrusted_fails_clearly_and_a_ca_file_makes_it_work(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_tls = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def scenario() -> tuple[Outcome, Outcome, Outcome]:
        async with receiver(tls=server_tls) as r:
            untrusted = await send(r.url)
            trusted = await send(r.url, Webhook(**{**HOOK.__dict__, "ca_file_path": str(ca_file)}))
            unverified = await send(r.url, Webhook(**{**HOOK.__dict__, "ssl_verification": False}))
            return untrusted, trusted, unverified

    untrusted, trusted, unverified = run(scenario())
    assert untrusted.error is not None
    assert not untrusted.ok and "certificate" in untrusted.error and "127.0.0.1" in untrusted.error
    assert trusted.ok and unverified.ok


def test_a_ca_file_that_cannot_be_used_names_the_field_and_http_does_not_need_it(
    tmp_path: Path,
) -> None:
    """A CA file that is no certificate, or is missing, fails an https request unsent, naming
    ca_file_path and the file (not OpenSSL's error number as the system's: "Unknown error
    136"), and is retried: the file can be fixed. An http webhook never reads it."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    missing = tmp_path / "missing.pem"

    def hook(path: Path) -> Webhook:
        return replace(HOOK, ca_file_path=str(path))

    async def scenario() -> tuple[list[Outcome], Outcome, str, int]:
        async with receiver(tls=server_tls) as secure, receiver() as plain:
            refused = [await send(secure.url, hook(path)) for path in (not_a_certificate, missing)]
            host = secure.url.removeprefix("https://").removesuffix("/hook")
            made = await send(plain.url, hook(not_a_certificate))
            return refused, made, host, len(secure.requests)

    refused, plain, host, reached = run(scenario())
    assert reached == 0
    assert [outcome.error for outcome in refused] == [
        f"request to {host} could not be made: ca_file_path '{not_a_certificate}' holds no "
        "certificate (PEM, -----BEGIN CERTIFICATE-----)",
        f"request to {host} could not be made: ca_file_path '{missing}' cannot be read: "
        "No such file or directory",
    ]
    assert all(not o.sent and not o.permanent for o in refused)
    assert plain.ok and plain.status == 200


def test_a_ca_file_replaced_on_disk_takes_effect_at_once(tmp_path: Path) -> None:
    """Trust follows the file, not the path: rewritten in place or renamed over, the next
    request reads it (before, a context cached by path trusted the old CA until a restart)."""
    first, second = trustme.CA(), trustme.CA()
    first_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    first.issue_cert("127.0.0.1").configure_cert(first_tls)
    second_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    second.issue_cert("127.0.0.1").configure_cert(second_tls)
    ca_file = tmp_path / "ca.pem"
    hook = replace(HOOK, ca_file_path=str(ca_file))

    async def scenario() -> list[bool]:
        seen = []
        async with receiver(tls=first_tls) as old, receiver(tls=second_tls) as new:
            first.cert_pem.write_to_path(str(ca_file))
            seen += [(await send(old.url, hook)).ok, (await send(new.url, hook)).ok]
            second.cert_pem.write_to_path(str(ca_file))  # rewritten in place
            seen += [(await send(old.url, hook)).ok, (await send(new.url, hook)).ok]
            replacement = tmp_path / "ca.pem.new"
            first.cert_pem.write_to_path(str(replacement))
            replacement.replace(ca_file)  # renamed over
            seen += [(await send(old.url, hook)).ok, (await send(new.url, hook)).ok]
        return seen

    assert run(scenario()) == [True, False, False, True, True, False]


def test_the_user_agent_names_the_installed_release() -> None:
    async def scenario() -> list[Received]:
        async with receiver() as r:
            hook = replace(RENDER_HOOK, payload_url=r.url)
            request = Renderer().request(hook, CHANGE, timestamp=0, delivery_id=str(uuid.uuid4()))
            async with Sender() as sender:
                assert (await sender.send(request, hook)).ok
            return r.requests

    (received,) = run(scenario())
    assert received.headers["User-Agent"] == f"relay/{version('relay')}"


def test_a_source_tree_that_was_never_installed_names_its_release_too(tmp_path: Path) -> None:
    """Without the distribution's metadata (no site-packages: -S), the version is
    pyproject.toml's, not a made-up 0.0.0."""
    source = Path(__file__).resolve().parents[2]
    script = (
        "import importlib.util as u; "
        f"spec = u.spec_from_file_location('v', {str(source / 'relay' / '_version.py')!r}); "
        "module = u.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(module.__version__)"
    )
    found = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, check=True
    )
    with (source / "pyproject.toml").open("rb") as file:
        assert found.stdout.strip() == tomllib.load(file)["project"]["version"]


def test_connections_are_kept_alive_between_requests() -> None:
    ports: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(text="ok")

    async def scenario() -> None:
        async with receiver(answer) as r, Sender() as sender:
            for _ in range(5):
                request = Request("POST", r.url, {}, b"{}", "d")
                assert (await sender.send(request, HOOK)).ok

    run(scenario())
    assert len(set(ports)) == 1


def test_http_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def scenario() -> tuple[Outcome, Outcome, list[Received], list[Received], str]:
        # The "proxy" answers itself: what matters is which server the request reached.
        async with receiver() as proxy, receiver() as target:
            proxy_url = proxy.url.replace("http://", "http://ops:pa55@").removesuffix("/hook")
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("http_proxy", proxy_url)
            via_proxy = await send(target.url)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            monkeypatch.setenv("no_proxy", "127.0.0.1")
            direct = await send(target.url)
            return via_proxy, direct, proxy.requests, target.requests, target.url

    via_proxy, direct, at_proxy, at_target, target_url = run(scenario())
    assert via_proxy.ok and direct.ok
    assert len(at_proxy) == 1 and len(at_target) == 1
    assert at_proxy[0].headers["Host"] == target_url.removeprefix("http://").removesuffix("/hook")
    assert at_proxy[0].headers["Proxy-Authorization"] == "Basic b3BzOnBhNTU="  # ops:pa55
    assert "Proxy-Authorization" not in at_target[0].headers


def test_https_goes_through_a_connect_proxy_whose_credentials_stay_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    ca = trustme.CA()
    server_tls = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    hook = Webhook(**{**HOOK.__dict__, "ca_file_path": str(ca_file)})

    async def scenario() -> tuple[Outcome, list[tuple[str, dict[str, str]]], list[Received], str]:
        async with connect_proxy() as proxy, receiver(tls=server_tls) as target:
            address = proxy.url.replace("http://", "http://ops:pa55@")
            monkeypatch.setenv("HTTPS_PROXY", address)
            monkeypatch.setenv("https_proxy", address)
            outcome = await send(target.url, hook)
            return outcome, proxy.connects, target.requests, target.url

    outcome, connects, requests, url = run(scenario())
    assert outcome.ok, outcome.error
    host = url.removeprefix("https://").removesuffix("/hook")
    assert [target for target, _ in connects] == [host]  # it went through the tunnel
    assert connects[0][1]["Proxy-Authorization"] == "Basic b3BzOnBhNTU="  # ops:pa55
    assert len(requests) == 1 and "Proxy-Authorization" not in requests[0].headers


def test_an_unknown_host_fails_clearly(tmp_path: Path) -> None:
    """In a network namespace of its own (no interfaces up), so the name lookup cannot leave
    the machine: it fails at once, as an unknown name does."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode:
        pytest.skip("cannot make a network namespace here (needs unshare and root)")
    script = tmp_path / "send.py"
    script.write_text(
        "import asyncio\n"
        "from decimal import Decimal\n"
        "from relay.delivery.send import Sender\n"
        "from relay.render.request import Request, Webhook\n"
        "async def main():\n"
        "    async with Sender() as sender:\n"
        "        outcome = await sender.send(\n"
        "            Request('POST', 'https://no-such-host.invalid/hook', {}, b'{}', 'd1'),\n"
        "            Webhook(id=1, name='t', payload_url='x', timeout_seconds=Decimal(5)))\n"
        "    print(outcome.ok, outcome.error)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [unshare, "-n", sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False cannot resolve host no-such-host.invalid: ")


def test_a_request_the_http_client_refuses_is_an_outcome_that_names_no_secret() -> None:
    """What the renderer cannot see coming (headers aiohttp refuses to write, a URL it cannot
    use) ends as a failure for good, not sent, with the reason; the receiver gets nothing, and
    a credential in a header or in the URL is not repeated in the reason."""

    async def scenario() -> tuple[list[Outcome], list[Received]]:
        async with receiver() as r, Sender() as sender:
            headers = {"Authorization": "Bearer tok-0123456789", "X-Note": "a\r\nX-Evil: 1"}
            bad_header = Request("POST", r.url, headers, b"{}", "d1")
            port = r.url.split(":")[2].split("/")[0]
            bad_url = Request("POST", f"http://u:pw-0123456789@127.0.0.1:{port}99/x", {}, b"", "d2")
            return [await sender.send(q, HOOK) for q in (bad_header, bad_url)], r.requests

    outcomes, requests = run(scenario())
    assert requests == []
    for outcome in outcomes:
        assert outcome.error is not None
        assert not outcome.ok and outcome.permanent and not outcome.sent
        assert "0123456789" not in outcome.error and "\n" not in outcome.error
    assert outcomes[0].error is not None and outcomes[1].error is not None
    assert (
        outcomes[0].error.startswith("request to 127.0.0.1:")
        and "ValueError: " in outcomes[0].error
    )
    assert "the URL cannot be used" in outcomes[1].error

"""`relay receive`, the receiver for trying webhooks out, run as a person runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from relay.render.sign import signature_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # good for both schemes


def post(port: int, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hook?x=1", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_receive_prints_numbered_requests_and_checks_signatures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "receive",
            "--port",
            str(port),
            "--secret",
            SECRET,
            "--status",
            "202",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            assert time.monotonic() < deadline, "relay receive did not start"
            time.sleep(0.05)
        body = b'{"event": "created", "data": {"id": 7, "name": "caf\\u00e9"}}'
        json_type = {"Content-Type": "application/json"}
        good = {**json_type, **signature_headers("netbox", SECRET, body, "d1", 0)}
        bad = {**json_type, "X-Hook-Signature": "0" * 128}
        standard = {**json_type, **signature_headers("standard", SECRET, body, "msg_1", 1700000000)}
        statuses = [
            post(port, body, good),
            post(port, body, bad),
            post(port, body, standard),
            post(port, b"plain text", {}),
            post(port, b"[/] brackets", {"X-Style": "[/][bold]not a style"}),
            post(port, b"\x1b[2J\x1b]0;pwned\x07 \xc2\x9b1m", {}),
            post(port, b'{"a": "\\u001b[31m\\u0085"}', json_type),
        ]
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.0 400")
    finally:
        process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=20)
    assert statuses == [202] * 7
    assert "#1" in output and "#4" in output and "POST /hook?x=1" in output
    assert "signature (netbox): valid" in output
    assert "signature (netbox): INVALID" in output
    assert "signature (standard): valid" in output
    assert "signature: none" in output and "plain text" in output
    assert '"name": "café"' in output  # pretty JSON, non-ASCII kept
    assert "X-Style: [/][bold]not a style" in output  # a sender's brackets are text
    # A sender's control characters are shown, never sent to the terminal.
    assert "\x1b" not in output and "\x9b" not in output and "\x85" not in output
    assert "\\x1b[2J\\x1b]0;pwned\\x07 \\x9b1m" in output
    assert '"a": "\\u001b[31m\\x85"' in output  # JSON's own escape, then ours
    # A request that cannot be read: one line saying why, no traceback.
    assert "Traceback" not in errors
    assert "Invalid character in Content-Length" in errors.splitlines()[0]
    assert output.index("#1") < output.index("#2") < output.index("#3") < output.index("#4")


def test_receive_shows_the_numbers_as_sent_and_pads_no_line() -> None:
    """A person checking what relay sent must see ``10.00``, not a float's ``10.0``; and piped
    to a file, no line ends in the spaces rich pads with."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "receive", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            assert time.monotonic() < deadline, "relay receive did not start"
            time.sleep(0.05)
        body = b'{"total": 10.00, "big": 1e5, "zero": -0, "long": 123456789012345678901234567890}'
        assert post(port, body, {"Content-Type": "application/json"}) == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert '"total": 10.00,' in output and '"big": 1e5,' in output
    assert '"zero": -0,' in output and '"long": 123456789012345678901234567890' in output
    padded = [line for line in output.splitlines() if line != line.rstrip()]
    assert padded == []

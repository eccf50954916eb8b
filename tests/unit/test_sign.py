"""Signatures, checked the way receivers check them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import replace

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.model import Webhook as Model
from relay.render.sign import InvalidSecret, signature_headers, signing_secret


def test_netbox_signature_is_hex_hmac_sha512_of_the_body() -> None:
    body = '{"event": "created", "data": {"id": 1, "name": "Zürich"}}'.encode()
    headers = signature_headers("netbox", "s3cret", body, "msg_1", 0)
    expected = hmac.new(b"s3cret", body, hashlib.sha512).hexdigest()
    assert headers == {"X-Hook-Signature": expected}
    assert len(expected) == 128


def test_no_secret_or_scheme_none_signs_nothing() -> None:
    assert signature_headers("netbox", None, b"x", "m", 0) == {}
    assert signature_headers("netbox", "", b"x", "m", 0) == {}
    assert signature_headers("none", "s", b"x", "m", 0) == {}
    with pytest.raises(ValueError, match="unknown signature scheme"):
        signature_headers("md5", "s", b"x", "m", 0)


def test_standard_webhooks_signature_verifies_with_the_reference_library() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    body = b'{"type": "orders.updated", "data": {"id": 7}}'
    now = int(time.time())
    headers = signature_headers("standard", secret, body, "msg_42", now)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(secret).verify(body, headers) == {"type": "orders.updated", "data": {"id": 7}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_rotation_signs_with_every_secret() -> None:
    old = "whsec_" + base64.b64encode(b"old-key-old-key-old-key!").decode()
    new = "whsec_" + base64.b64encode(b"new-key-new-key-new-key!").decode()
    body = b'{"ok": true}'
    headers = signature_headers("standard", f"{old}\n{new}\n", body, "msg_1", int(time.time()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers) == {"ok": True}
    assert Webhook(new).verify(body, headers) == {"ok": True}


def test_a_malformed_standard_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidSecret) as excinfo:
        signature_headers("standard", "whsec_not base64!!", b"x", "m", 0)
    assert "not base64" not in str(excinfo.value)


def test_a_rotated_secrets_previous_one_signs_until_its_period_ends_and_never_after() -> None:
    old = "whsec_" + base64.b64encode(b"old-key-old-key-old-key!").decode()
    new = "whsec_" + base64.b64encode(b"new-key-new-key-new-key!").decode()
    until = 1_000_000.0
    standard = Model(
        1,
        "std",
        "http://x",
        secret=new,
        signature="standard",
        previous_secret=old,
        previous_secret_until=until,
    )
    assert signing_secret(standard, until - 1).split("\n") == [new, old]
    assert signing_secret(standard, until) == new
    netbox = replace(standard, signature="netbox", secret="new", previous_secret="old")
    assert signing_secret(netbox, until - 1) == "old"
    assert signing_secret(netbox, until + 1) == "new"
    assert signing_secret(replace(netbox, previous_secret_until=None), 0) == "new"
    assert signing_secret(replace(netbox, previous_secret=""), 0) == "new"
    assert "secret=" not in repr(netbox)

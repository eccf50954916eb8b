"""Request signatures.

* ``netbox``: ``X-Hook-Signature`` is the hex HMAC-SHA512 of the exact body bytes, keyed with
  the secret's UTF-8 bytes; what NetBox sends and what its receivers check.
* ``standard``: the Standard Webhooks scheme. ``webhook-signature`` is
  ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed with the base64-decoded part of a
  ``whsec_...`` secret. A webhook may hold several secrets, one per line, while keys rotate: the
  request then carries one signature per secret, space-separated.

A rotated secret (``relay webhook rotate-secret``, 0033_secret_rotation.sql) keeps its previous
one until a time; which of them sign is decided here, at each signing, by the relay's clock, so
that a relay running for days stops using the previous one when its period ends, unprompted:

* ``standard``: during the period both sign (the new one's signatures first), as the scheme
  means rotation to work: a receiver that knows either accepts the request.
* ``netbox``: ``X-Hook-Signature`` holds one signature, so the previous secret signs until the
  period ends and the new one after: the receiver has the period to take the new one. A
  period of 0 switches at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.model import Webhook

SIGNATURES = ("netbox", "standard", "none")


class InvalidSecret(ValueError):
    """A secret that cannot sign (never contains the secret itself)."""


def _netbox_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def _standard_key(secret: str) -> bytes:
    encoded = secret.strip().removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise InvalidSecret("a Standard Webhooks secret is 'whsec_' followed by base64") from None
    if not key:
        raise InvalidSecret("a Standard Webhooks secret must not be empty")
    return key


def _standard_signature(secrets: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    keys = [_standard_key(line) for line in secrets.splitlines() if line.strip()]
    if not keys:
        raise InvalidSecret("no secret to sign with")
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def check_secret(scheme: str, secret: str) -> None:
    """Raise :class:`InvalidSecret` when ``secret`` cannot sign for ``scheme`` (Standard
    Webhooks: each line ``whsec_`` and base64)."""
    if scheme == "standard":
        _standard_signature(secret, "", 0, b"")
    elif not secret.strip():
        raise InvalidSecret("no secret to sign with")


def signing_secret(webhook: Webhook, now: float) -> str:
    """The secret(s) that sign a request of ``webhook`` made at ``now`` (seconds since the
    epoch): its previous secret's period decides (see the module's docstring)."""
    return secrets_signing(
        webhook.signature,
        webhook.secret,
        webhook.previous_secret,
        webhook.previous_secret_until,
        now,
    )


def secrets_signing(
    scheme: str, secret: str, previous: str, until: float | None, now: float
) -> str:
    """The secret(s) that sign at ``now`` for a webhook of ``scheme`` holding ``secret`` and,
    until ``until``, ``previous``: the relay's signing and a rotation (which keeps what signs
    now) both ask this."""
    if not previous.strip() or until is None or now >= until:
        return secret
    if scheme == "standard":
        return secret + "\n" + previous
    return previous


def signature_headers(
    scheme: str, secret: str | None, body: bytes, message_id: str, timestamp: int
) -> dict[str, str]:
    """The headers that sign ``body``: none when there is no secret or the scheme is 'none'."""
    if scheme == "none" or not secret:
        return {}
    if scheme == "netbox":
        return {"X-Hook-Signature": _netbox_signature(secret, body)}
    if scheme == "standard":
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": _standard_signature(secret, message_id, timestamp, body),
        }
    raise ValueError(f"unknown signature scheme {scheme!r} (use one of {', '.join(SIGNATURES)})")


def verify(headers: Mapping[str, str], body: bytes, secret: str) -> tuple[str, bool] | None:
    """Which scheme signed a received request and whether the signature is right for
    ``secret``; None when it carries no signature. (For ``relay receive``; a Standard Webhooks
    request is valid when any of its signatures matches.)"""
    lowered = {name.lower(): value for name, value in headers.items()}
    if "x-hook-signature" in lowered:
        expected = _netbox_signature(secret, body)
        return "netbox", hmac.compare_digest(expected, lowered["x-hook-signature"].strip())
    if "webhook-signature" in lowered:
        try:
            timestamp = int(lowered.get("webhook-timestamp", ""))
            expected = _standard_signature(secret, lowered.get("webhook-id", ""), timestamp, body)
        except (ValueError, InvalidSecret):
            return "standard", False
        given = set(lowered["webhook-signature"].split())
        return "standard", any(
            hmac.compare_digest(sig, mine) for sig in given for mine in expected.split()
        )
    return None

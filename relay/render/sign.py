"""Request signatures.

* ``netbox``: ``X-Hook-Signature`` is the hex HMAC-SHA512 of the exact body bytes, keyed with
  the secret's UTF-8 bytes; what NetBox sends and what its receivers check.
* ``standard``: the Standard Webhooks scheme. ``webhook-signature`` is
  ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed with the base64-decoded part of a
  ``whsec_...`` secret. A webhook may hold several secrets, one per line, while keys rotate: the
  request then carries one signature per secret, space-separated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

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

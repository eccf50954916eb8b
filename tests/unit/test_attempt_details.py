"""What an attempt keeps of its request as sent and of the response (RELAY_ATTEMPT_DETAILS),
pure: credentials and signatures masked, bodies cut (relay/delivery/details.py)."""

from __future__ import annotations

import pytest

from relay.delivery import details
from relay.reasons import MASK, Secrets, masking

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

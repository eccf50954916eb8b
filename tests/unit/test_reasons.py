"""The one path reasons, log lines and shown values take (relay/reasons.py): pure, no database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.reasons import MASK, MAX_CHARS, Secrets, masking, reason, scrub, url_origin, url_shown


@pytest.mark.parametrize(
    ("url", "origin", "shown"),
    [
        (
            "https://hooks.example/services/T000/B000/XXXXsecret",
            "https://hooks.example/…",
            "https://hooks.example/services/T000/B000/XXXXsecret",
        ),
        (
            "ftp://user:password@host:21/x?tok=abc&v=1",
            "ftp://host:21/…",
            f"ftp://{MASK}@host:21/x?tok={MASK}&v={MASK}",
        ),
        ("https://h.example", "https://h.example", "https://h.example"),
        ("https://h.example/", "https://h.example", "https://h.example/"),
        ("http://[::1]:8080/x", "http://[::1]:8080/…", "http://[::1]:8080/x"),
        ("https://tok-123456@api.example/", "https://api.example", f"https://{MASK}@api.example/"),
        ("/services/T000/B000/XXXXsecret", "…", "/services/T000/B000/XXXXsecret"),
        ("hooks.example/services/x", "hooks.example…", "hooks.example/services/x"),
        ("user:password@host/x", "user:…", f"{MASK}@host/x"),
        ("paid", "paid", "paid"),
        (
            "https://h.example/cb#access_token=tok-1234567",
            "https://h.example/…",
            f"https://h.example/cb#{MASK}",
        ),
        ("http://[::1", "http:…", "http:…"),
        (
            "https://x.example/{{ data.id }}?key={{ 'KEY' | env }}",
            "https://x.example/…",
            f"https://x.example/{{{{ data.id }}}}?key={MASK}",
        ),
    ],
)
def test_a_url_is_shown_by_origin_in_reasons_and_with_its_path_by_commands(
    url: str, origin: str, shown: str
) -> None:
    assert url_origin(url) == origin
    assert url_shown(url) == shown


def test_urls_inside_any_message_are_cut_to_their_origin() -> None:
    aiohttp = "400, message='Bad status line', url='http://127.0.0.1:9/h?token=tok-1234567'"
    yarl = "Invalid URL: URL('https://u:pw-1234567@h.example/p')"
    assert scrub(aiohttp) == "400, message='Bad status line', url='http://127.0.0.1:9/…'"
    assert scrub(yarl) == "Invalid URL: URL('https://h.example/…')"
    assert scrub("see https://h.example/a b") == "see https://h.example/… b"


def test_given_and_known_secrets_are_masked_and_short_values_are_not() -> None:
    assert scrub("key abc and long-secret-1", ["abc", "long-secret-1"]) == f"key abc and {MASK}"
    known = Secrets()
    known.update("webhooks", ["hook-secret-1", "s"])
    assert scrub("hook-secret-1 s") == "hook-secret-1 s"  # no masking outside the block
    with masking(known):
        assert scrub("hook-secret-1 s") == f"{MASK} s"
        assert reason("x\nhook-secret-1") == f"x {MASK}"
        known.update("webhooks", ["other-secret-2"])  # a reload replaces a source whole
        assert scrub("hook-secret-1 other-secret-2") == f"hook-secret-1 {MASK}"


def test_a_secret_past_the_length_limit_is_masked_before_the_cut() -> None:
    secret = "s" * 10 + "-secret"
    text = "x" * (MAX_CHARS - 5) + secret
    assert secret[:5] not in reason(text, [secret]).removeprefix("x" * (MAX_CHARS - 5))


@given(st.text(max_size=300) | st.text("ahtps:/?@#[]%.é \n\x00", max_size=300))
def test_a_reason_is_one_line_within_the_limit_and_stays_as_it_is(text: str) -> None:
    once = reason(text)
    assert len(once) <= MAX_CHARS and "\n" not in once and "\r" not in once
    assert reason(once) == once


tokens = st.text("ABCDEFGHJKMNPQRSTUVWXYZ", min_size=8, max_size=20)
around = st.text("0123456789 ,;()'\"=\n", max_size=40)


@given(around, tokens, tokens, tokens, around, st.sampled_from(["https", "http", "ftp", "x-y"]))
def test_no_part_of_a_url_but_its_origin_survives_in_any_text(
    before: str, password: str, path: str, query: str, after: str, scheme: str
) -> None:
    text = f"{before}{scheme}://user:{password}@h.example:8/{path}?t={query}{after}"
    scrubbed = reason(text)
    assert password not in scrubbed and path not in scrubbed and query not in scrubbed
    assert f"{scheme}://h.example:8/…" in scrubbed

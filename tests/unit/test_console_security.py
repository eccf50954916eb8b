"""The console's pure rules, without a database or a server: sessions and their cookies, CSRF
tokens and origins, login limits, what the deliveries log is asked for, and how pages write
what came from elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.console.filters import cursor, delivery_filter, whole_number
from relay.console.security import (
    MAX_AGE_SECONDS,
    MAX_COUNTED,
    LoginLimits,
    Sessions,
    same_origin,
    same_token,
)
from relay.console.views import Exchange, age, excerpt_shown, exchange, reason_shown, url, when
from relay.store import DeliveryFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_cookie_names_its_session_only_while_it_is_used() -> None:
    clock = Clock()
    sessions = Sessions(idle_seconds=60, clock=clock)
    session = sessions.start("alice", "pw")
    cookie = sessions.cookie(session)
    assert "pw" not in cookie and "alice" not in cookie
    assert sessions.find(cookie) is session
    session_id, signature = cookie.split(".")
    for forged in [
        f"{session_id}.{'0' * len(signature)}",
        f"{session_id}x.{signature}",
        session_id,
        "",
        None,
        f"{cookie}.x",
    ]:
        assert sessions.find(forged) is None
    # Another console process (another key) does not know the cookie.
    assert Sessions(idle_seconds=60, clock=clock).find(cookie) is None
    clock.now += 59
    assert sessions.find(cookie) is session  # used: idle time starts again
    clock.now += 61
    assert sessions.find(cookie) is None
    assert len(sessions) == 0


def test_a_busy_session_still_ends_and_signing_in_again_makes_a_new_one() -> None:
    clock = Clock()
    sessions = Sessions(idle_seconds=600, clock=clock)
    first = sessions.start("alice", "pw")
    second = sessions.start("alice", "pw")
    assert first.id != second.id and first.csrf != second.csrf
    cookie = sessions.cookie(first)
    while clock.now < 1000 + MAX_AGE_SECONDS - 300:
        clock.now += 300
        assert sessions.find(cookie) is first
    clock.now += 301
    assert sessions.find(cookie) is None
    assert "pw" not in repr(second)


def test_tokens_and_origins() -> None:
    assert same_token("abc", "abc")
    assert not same_token(None, "abc") and not same_token("", "abc") and not same_token("ab", "abc")
    assert same_origin(None, "http", "127.0.0.1:8780")  # an older browser sends none
    assert same_origin("http://127.0.0.1:8780", "http", "127.0.0.1:8780")
    assert not same_origin("null", "http", "127.0.0.1:8780")
    assert not same_origin("http://evil.example", "http", "127.0.0.1:8780")
    assert not same_origin("http://127.0.0.1:8780", "https", "127.0.0.1:8780")


def test_sign_in_failures_are_limited_per_role_and_per_address() -> None:
    clock = Clock()
    limits = LoginLimits(per_address=10, per_role=5, window=300, clock=clock)
    for _ in range(5):
        assert limits.wait("10.0.0.1", "alice") == 0
        limits.failed("10.0.0.1", "alice")
    assert limits.wait("10.0.0.1", "alice") == 300
    assert limits.wait("10.0.0.9", "alice") == 300  # the role, from anywhere
    assert limits.wait("10.0.0.1", "bob") == 0  # this address may try 5 more
    for _ in range(5):
        limits.failed("10.0.0.1", f"role{_}")
    assert limits.wait("10.0.0.1", "bob") == 300  # the address, for any role
    clock.now += 120
    assert limits.wait("10.0.0.9", "alice") == 180
    clock.now += 180
    assert limits.wait("10.0.0.9", "alice") == 0
    limits.failed("10.0.0.2", "carol")
    limits.succeeded("10.0.0.2", "carol")
    assert limits.wait("10.0.0.2", "carol") == 0


def test_made_up_role_names_do_not_grow_the_count_without_end() -> None:
    clock = Clock()
    limits = LoginLimits(window=300, clock=clock)
    for n in range(30_000):
        limits.failed(f"10.0.{n // 250}.{n % 250}", f"role{n}")
        clock.now += 0.1
        assert len(limits._failures) <= MAX_COUNTED + 2


def test_the_deliveries_log_reads_its_filter_or_says_what_is_wrong() -> None:
    asked = delivery_filter(
        {"webhook": " orders ", "status": "failed", "table": "public.items", "key": "42"}
    )
    assert asked.problem is None
    assert asked.wanted == DeliveryFilter(
        "orders", "failed", "public", "items", key_text="42", key_raw="42"
    )
    assert asked.wanted.keyed
    composite = delivery_filter({"table": "items", "key": '{"a": 1, "b": "x"}'})
    assert composite.wanted.key_json == '{"a": 1, "b": "x"}' and composite.wanted.schema is None
    assert delivery_filter({"key": "ab-42"}).wanted.key_raw is None
    # A text key may read NaN or 1e999999: PostgreSQL's jsonb reads neither as a number.
    for text in ("NaN", "-Infinity", "1e999999"):
        assert delivery_filter({"key": text}).wanted == DeliveryFilter(key_text=text), text
    assert delivery_filter({"key": "1e3"}).wanted.key_raw == "1e3"
    deep = "[" * 1999 + "]" * 1999  # deeper than Python's JSON reader goes: a text key
    assert delivery_filter({"key": deep}).wanted == DeliveryFilter(key_text=deep)
    assert delivery_filter({"before": "10-3"}).wanted.cursor == (10, 3)
    # An object's changes are oldest first: its pages go on after a cursor.
    assert delivery_filter({"key": "7", "after": "10-3", "before": "1-1"}).wanted.cursor == (10, 3)
    assert delivery_filter({}).wanted == DeliveryFilter()
    timed = delivery_filter({"event": "update", "since": "2h", "until": "2030-11-23T10:00+01:00"})
    assert timed.problem is None and timed.wanted.event == "update"
    assert timed.wanted.until == datetime(2030, 11, 23, 9, 0, tzinfo=UTC)
    assert timed.wanted.since is not None and not timed.wanted.keyed
    for query, says in [
        ({"status": "lost"}, "status: one of pending, delivered, failed"),
        ({"table": "public."}, "table: schema.table"),
        ({"key": "{oops"}, "key: a JSON object"),
        ({"key": "{}"}, "key: a JSON object"),
        ({"key": '{"id": NaN}'}, "key: a JSON object"),
        ({"key": '{"id": 1e999999}'}, "key: a number with an exponent past ±4000"),
        ({"key": '{"id": [1e-5000]}'}, "key: a number with an exponent past ±4000"),
        ({"key": '{"id": "a\\u0000"}'}, "key: a NUL character, which no key holds"),
        ({"key": '{"\\udc00": 1}'}, "key: a lone surrogate"),
        ({"key": "x" * 4001}, "key: longer than 4000"),
        ({"table": "x" * 1001}, "table: longer than 1000"),
        ({"webhook": "a\x00b"}, "webhook: holds a NUL"),
        ({"before": "10"}, "before: not a page"),
        ({"before": "1-99999999999999999999"}, "before: not a page"),
        ({"before": "\u0661-\u0662"}, "before: not a page"),  # Arabic-Indic digits
        ({"key": "1", "after": "x"}, "after: not a page"),
        ({"event": "<b>"}, "event: one of insert, update, delete, truncate, snapshot"),
        ({"since": "yesterday"}, "since: an age (30m, 12h, 7d) or a time"),
        ({"until": "9" * 30 + "d"}, "until: an age"),
        ({"since": "1h", "until": "2h"}, "until: later than since"),
        ({"key": "[" * 5000 + "]" * 5000}, "key: longer than 4000"),
        ({"key": '{"a": ' + "[" * 1990 + "]" * 1990 + "}"}, "key: a JSON object"),
    ]:
        problem = delivery_filter(query).problem
        assert problem is not None and problem.startswith(says), (query, problem)
    assert cursor(None) is None and cursor("") is None
    assert whole_number("7") == 7
    assert [whole_number(v) for v in ("0", "-1", "x", None, "9" * 20, "\u0663")] == [None] * 6


def test_pages_write_ages_times_and_what_came_from_elsewhere() -> None:
    assert [age(None), age(4.24), age(720), age(12_600), age(200_000)] == [
        "-",
        "4.2 s",
        "12 min",
        "3.5 h",
        "2.3 d",
    ]
    assert when(None) == "-"
    assert when(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05 +0000"
    assert (
        url("https://user:pw@hooks.example/in?token=abc")
        == "https://******@hooks.example/in?token=******"
    )
    assert reason_shown(None) == "-"
    assert reason_shown("failed\nat https://hooks.example/x?token=abc") == (
        "failed at https://hooks.example/…"
    )
    assert "abc" not in excerpt_shown("see https://hooks.example/x?token=abc\nbye")
    assert excerpt_shown("line\nline") == "line\nline"


def test_an_attempts_details_are_read_whatever_their_shape() -> None:
    """What relay.attempts.details holds is shown as far as it has the expected shape; nothing
    else (another release's, a hand-made row) breaks the page."""
    assert exchange(None) == Exchange(kept=False)
    assert exchange("not json") == Exchange(kept=False)
    assert exchange("[1, 2]") == Exchange(kept=False)
    odd = exchange('{"request": {"method": 7, "headers": [["A", "b"], ["C"], [1, 2], "x"]}}')
    assert odd.kept and odd.method == "" and odd.request_headers == [("A", "b")]
    assert not odd.answered and odd.body_bytes == 0
    full = exchange(
        '{"request": {"method": "POST", "url": "http://h/x", "headers": [["X-A", "1"]],'
        ' "body": "{}", "body_bytes": 9000, "body_cut": true},'
        ' "response": {"headers": [["Server", "s"]]}}'
    )
    assert (full.method, full.url, full.body, full.body_bytes, full.body_cut) == (
        "POST",
        "http://h/x",
        "{}",
        9000,
        True,
    )
    assert full.answered and full.response_headers == [("Server", "s")]

"""The console's sessions, cookies, CSRF tokens and login limits: pure logic, no database and
no network, so that each rule is tested on its own (tests/unit/test_console_security.py).

A session lives in this process's memory only, under a random id; the cookie carries that id
and its HMAC under a key drawn when the process starts. The password the person signed in with
stays in that memory, because every page opens a connection as their role and PostgreSQL
checks the password each time: it is never written anywhere, never sent back to the browser,
and a restart forgets every session (everyone signs in again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
"""Monotonic seconds (time.monotonic; tests give their own)."""

MAX_AGE_SECONDS = 12 * 3600.0
"""However busy, a session ends this long after sign-in: a stolen cookie is not good for ever."""


@dataclass
class Session:
    """A signed-in person: the role and the password PostgreSQL checks on every connection,
    and the token every form of theirs must carry."""

    id: str
    role: str
    password: str = field(repr=False)
    csrf: str
    started: float
    seen: float


class Sessions:
    """Every session of this process, by id; each ends after ``idle_seconds`` unused, or
    :data:`MAX_AGE_SECONDS` after it started."""

    def __init__(self, idle_seconds: float, clock: Clock = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, Session] = {}

    def start(self, role: str, password: str) -> Session:
        """A new session (a new id, so that an id known before sign-in is worth nothing after)."""
        now = self._clock()
        self._sweep(now)
        session = Session(
            secrets.token_urlsafe(32), role, password, secrets.token_urlsafe(32), now, now
        )
        self._sessions[session.id] = session
        return session

    def cookie(self, session: Session) -> str:
        """The cookie's value: the id and its signature."""
        return f"{session.id}.{self._sign(session.id)}"

    def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, its idle time started again; None for a missing,
        forged or unknown cookie and for a session that ended (which is then forgotten)."""
        if not cookie or cookie.count(".") != 1:
            return None
        session_id, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._ended(session, now):
            self.end(session.id)
            return None
        session.seen = now
        return session

    def end(self, session_id: str) -> None:
        """Forget a session (sign-out, or its role can no longer sign in)."""
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _ended(self, session: Session, now: float) -> bool:
        return now - session.seen > self.idle_seconds or now - session.started > MAX_AGE_SECONDS

    def _sweep(self, now: float) -> None:
        for session in [s for s in self._sessions.values() if self._ended(s, now)]:
            self.end(session.id)

    def _sign(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Whether a form's CSRF token is the session's, in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def new_token() -> str:
    """A token for the sign-in form, before there is a session (double submit: the same value
    in a cookie and in the form)."""
    return secrets.token_urlsafe(32)


def same_origin(origin: str | None, scheme: str, host: str) -> bool:
    """Whether a POST's Origin header, when the browser sent one, is the console itself: a
    form another site posts here is refused even before its missing token is."""
    return origin is None or origin == f"{scheme}://{host}"


MAX_COUNTED = 10_000
"""Addresses and roles with failures counted before those past the window are swept: made-up
role names must not grow the count without end."""


@dataclass
class LoginLimits:
    """Failed sign-ins allowed per client address and per role within ``window`` seconds: past
    either, sign-in is refused (without asking PostgreSQL) until the oldest failure is that
    old. Per address, so one client cannot try many roles; per role, so many addresses cannot
    try one role's passwords."""

    per_address: int = 10
    per_role: int = 5
    window: float = 300.0
    clock: Clock = time.monotonic
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def wait(self, address: str, role: str) -> float:
        """Seconds before ``address`` may try ``role`` again; 0 when it may now."""
        now = self.clock()
        waits = [
            self._wait(("address", address), self.per_address, now),
            self._wait(("role", role), self.per_role, now),
        ]
        return max(waits)

    def failed(self, address: str, role: str) -> None:
        """Count a failed sign-in."""
        now = self.clock()
        if len(self._failures) > MAX_COUNTED:
            for key in list(self._failures):
                self._wait(key, 1, now)  # drops what the window no longer holds
        for key in (("address", address), ("role", role)):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, address: str, role: str) -> None:
        """Forget the role's failures from this address's count and the role's: the person
        knew the password."""
        self._failures.pop(("address", address), None)
        self._failures.pop(("role", role), None)

    def _wait(self, key: tuple[str, str], allowed: int, now: float) -> float:
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < allowed:
            return 0.0
        return self.window - (now - times[0])

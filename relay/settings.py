"""Settings read from RELAY_* environment variables (pydantic-settings), optionally from an
env file in the same ``NAME=value`` form systemd's ``EnvironmentFile=`` reads; the process
environment wins over the file."""

from __future__ import annotations

import difflib
import fnmatch
import io
import os
import re
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import ByteSize, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay import db
from relay.reasons import MASK

MiB = 1024 * 1024
DAY = 86_400
HELD_PER_CHANGE_BYTE = 3
"""What a claimed delivery holds per byte of its change's JSON: the row images as text, and
the request body made from them (the default body carries the new image twice, as NetBox's
``data`` and ``postchange``)."""


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):(\d{1,5})$")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names it, in one line."""


class Settings(BaseSettings):
    """relay's configuration: field ``name`` is read from RELAY_NAME in the environment. Build it
    with :func:`load`, which also reads an env file and names a bad value in one line."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    dsn: str | None = Field(default=None, repr=False)
    """The database: libpq connection string or URI."""
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Changes fanned out, and deliveries claimed, per round trip."""
    poll_interval: float = Field(default=2.0, ge=0.01, le=3600, allow_inf_nan=False)
    """Seconds between looks at the outbox when no notification arrives."""
    lease_seconds: float = Field(default=60.0, ge=1, le=DAY, allow_inf_nan=False)
    """How long a claimed delivery stays this relay's; a crashed relay's work is taken over
    after it (keep it above twice the longest webhook timeout)."""
    max_attempts: int = Field(default=8, ge=1, le=1000)
    """Attempts per delivery before it fails for good (a webhook's own max_attempts has the
    same range)."""
    retry_base_seconds: float = Field(default=5.0, ge=0.001, le=DAY, allow_inf_nan=False)
    """First retry delay; each later one is four times longer, with +-20% jitter (a webhook's
    own retry_base_seconds has the same range)."""
    retry_max_seconds: float = Field(default=36_000.0, ge=0.001, le=30 * DAY, allow_inf_nan=False)
    """No retry waits longer than this (Retry-After included); a webhook's own
    retry_max_seconds has the same range."""
    webhook_concurrency: int = Field(default=16, ge=1, le=10_000)
    """Requests in flight to one webhook at once."""
    max_body_bytes: ByteSize = Field(default=ByteSize(32 * MiB), ge=1024, le=1024 * MiB)
    """The largest request body sent, at most 1 GiB (``32MiB``, ``5MB`` and plain numbers are
    understood). A change whose row images are larger is never read; a body that renders larger
    is not sent: either way the delivery fails at once, saying so."""
    max_held_bytes: ByteSize = Field(
        default=ByteSize(256 * MiB), ge=2 * HELD_PER_CHANGE_BYTE * 1024, le=1024 * 1024 * MiB
    )
    """Row images and request bodies a relay holds at once, fanning out, claimed, rendered and
    being sent, counted as HELD_PER_CHANGE_BYTE times the change's JSON. One webhook may take
    at most half of it."""
    breaker_failures: int = Field(default=5, ge=1, le=1_000_000)
    """Consecutive failed attempts after which a webhook is paused."""
    breaker_cooldown_seconds: float = Field(default=30.0, ge=0.001, le=DAY, allow_inf_nan=False)
    """How long a paused webhook gets no requests; then one failure pauses it again, one
    success resumes it."""
    dead_after_seconds: float = Field(default=432_000.0, ge=1, le=31_536_000, allow_inf_nan=False)
    """How long an endpoint may fail without one success before relay pauses its webhook as
    dead (5 days, as Svix disables an endpoint; a webhook's own dead_after_seconds, from 60 s
    to a year, wins). Its pending deliveries wait for ``relay webhook resume``. Values under a
    minute are for tests: the webhook column allows no less than 60."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600, allow_inf_nan=False)
    """On SIGTERM, how long in-flight requests may take to finish."""
    retention_days: float = Field(default=7.0, ge=0, le=36_500, allow_inf_nan=False)
    """Finished changes (delivered, failed, skipped) older than this are deleted by the relay,
    with their deliveries and attempts (0 keeps them for ever). A week: long enough to look
    into and ``relay retry`` a failure seen on Monday, short enough that the outbox of a busy
    database does not grow without end when nobody thought of it."""
    attempt_retention_days: float = Field(default=30.0, ge=0, le=36_500, allow_inf_nan=False)
    """Rows of relay.attempts older than this are deleted by the relay (0 keeps them all)."""
    attempt_details: Literal["failed", "all", "none"] = "failed"
    """Which attempts keep the request as sent (method, URL, headers, the body's first 4 KiB)
    and the response's headers, credentials and signatures masked, for the console's delivery
    page: ``failed`` ones (what operators open; a delivered attempt costs what it did
    without), ``all``, or ``none``."""
    template_env_allow: str = ""
    """Comma-separated globs of environment variable names templates may read with ``env``."""
    processes: int = Field(default=1, ge=1, le=64)
    """Relay processes ``relay run`` starts (each uses one core, with its own connections); see
    docs/operations.md for when more help."""
    metrics_address: str = ""
    """``host:port`` for /metrics, /healthz and /readyz (off when empty), e.g. 127.0.0.1:9089."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """``json`` lines, ``console`` colours, or ``auto``: colours on a terminal, JSON elsewhere."""
    console_listen: str = "127.0.0.1:8780"
    """``host:port`` ``relay console`` serves on: this machine only unless said otherwise (put
    a TLS reverse proxy in front to reach it from elsewhere: docs/console.md)."""
    console_idle_seconds: float = Field(default=900.0, ge=1, le=DAY, allow_inf_nan=False)
    """A console session unused this long ends: the person signs in again."""
    console_secure_cookie: bool = False
    """Mark the console's cookies Secure (sent over HTTPS only): set it behind a TLS proxy."""
    console_trust_forwarded: bool = False
    """Take the client's address from the last X-Forwarded-For entry (what the proxy in front
    saw) for the audit and the login limits; only behind a proxy that sets it, or anyone could
    choose the address they are recorded and limited by."""

    @field_validator("console_listen")
    @classmethod
    def _console_host_and_port(cls, value: str) -> str:
        found = _HOST_PORT.match(value)
        if found is None or not found[1] or int(found[2]) > 65535:
            raise ValueError(f"{value!r} is not host:port: give e.g. 127.0.0.1:8780")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        found = _HOST_PORT.match(value)
        if value and (found is None or int(found[2]) > 65535):
            raise ValueError(
                f"{value!r} is not host:port: give e.g. 127.0.0.1:9089 ([::1]:9089 for IPv6), "
                "or nothing to turn metrics off"
            )
        return value

    @field_validator("dsn")
    @classmethod
    def _readable_dsn(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # RELAY_DSN= in an env file is unset, not libpq's defaults
        problem = db.dsn_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("max_held_bytes")
    @classmethod
    def _room_for_the_largest(cls, held: ByteSize, info: ValidationInfo) -> ByteSize:
        """One webhook's half of the budget must hold a change of the largest size, or such a
        change could never be claimed."""
        body = info.data.get("max_body_bytes")
        if body is not None and held < 2 * HELD_PER_CHANGE_BYTE * body:
            least = ByteSize(2 * HELD_PER_CHANGE_BYTE * body).human_readable()
            most = ByteSize(_bounds(Settings.model_fields["max_held_bytes"])[1]).human_readable()
            raise ValueError(
                f"must be a size from {2 * HELD_PER_CHANGE_BYTE} x RELAY_MAX_BODY_BYTES "
                f"({least}) to {most}"
            )
        return held

    @property
    def template_env_globs(self) -> list[str]:
        """RELAY_TEMPLATE_ENV_ALLOW as a list of globs: the environment variables templates may read
        with ``env``."""
        return comma_list(self.template_env_allow)

    def shown(self) -> dict[str, Any]:
        """Every setting by its variable name, secrets masked: what ``relay config`` prints."""
        values = self.model_dump()
        values["dsn"] = mask_dsn(self.dsn) if self.dsn else None
        return {f"RELAY_{name.upper()}": value for name, value in values.items()}


def load(env_file: Path | None = None, **overrides: Any) -> Settings:
    """The effective settings, or :class:`SettingsError` naming the first bad one: the process
    environment, then the env file, then the defaults (``overrides`` win over all)."""
    from_file = read_env_file(env_file) if env_file is not None else {}
    in_environment = {name.upper() for name in os.environ}
    fields = {f"RELAY_{field.upper()}": field for field in Settings.model_fields}
    given = {
        fields[name.upper()]: value
        for name, value in from_file.items()
        if name.upper() in fields and name.upper() not in in_environment
    }
    try:
        settings = Settings(**{**given, **overrides})
    except ValidationError as exc:
        raise SettingsError(_problem(exc.errors()[0])) from None
    _refuse_unknown(settings, from_file)
    return settings


def _problem(error: ErrorDetails) -> str:
    """One line for a value pydantic refused: a number out of its range, or what cannot be a
    number, is answered with the range (whatever pydantic's reason); other settings with the
    validator's own words."""
    field = str(error["loc"][0]) if error["loc"] else None
    if field is None:
        return f"settings: {error['msg']}"
    name = f"RELAY_{field.upper()}"
    message = str(error["msg"]).removeprefix("Value error, ")  # our own validators' words
    info = Settings.model_fields[field]
    if info.annotation in NUMBERS and error["type"] != "value_error":
        shown = repr(error["input"]) if isinstance(error["input"], str) else str(error["input"])
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return f"{name}: must be {describe_range(field)}, not {shown}"
    return f"{name}: {message}"


NUMBERS = (int, float, ByteSize)
"""The types of the numeric settings: each has a range (ge and le) that PostgreSQL and Python
can hold, and the floats are finite (tests/integration/test_settings.py holds every field to it)."""


def _bounds(info: FieldInfo) -> tuple[float, float]:
    low = next(m.ge for m in info.metadata if getattr(m, "ge", None) is not None)
    high = next(m.le for m in info.metadata if getattr(m, "le", None) is not None)
    return low, high


def describe_range(field: str) -> str:
    """What a numeric setting may be, in words: "a whole number from 1 to 10000"."""
    info = Settings.model_fields[field]
    low, high = _bounds(info)
    if info.annotation is ByteSize:
        least = _AT_LEAST.get(field) or ByteSize(int(low)).human_readable()
        return (
            f"a size from {least} to {ByteSize(int(high)).human_readable()} (5MB, 32MiB or a "
            "number of bytes)"
        )
    kind = "a whole number" if info.annotation is int else "a number"
    return f"{kind} from {_plain(low)} to {_plain(high)}"


_AT_LEAST = {"max_held_bytes": f"{2 * HELD_PER_CHANGE_BYTE} x RELAY_MAX_BODY_BYTES"}
"""Lower bounds that depend on another setting (checked by the field's validator)."""


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file (comments and blank lines skipped), read once
    (it may be a pipe); :class:`SettingsError` naming the file, and the line, for a file that
    cannot be read, is not UTF-8, or holds a line of another form (python-dotenv would warn and
    skip it, twice, and a setting would silently be missing)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise SettingsError(f"env file {path} does not exist") from None
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SettingsError(f"env file {path} cannot be read: {reason}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SettingsError(
            f"env file {path}, line {line}: not UTF-8 text: save the file as UTF-8"
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            written = binding.original.string
            leading = written[: len(written) - len(written.lstrip())]
            raise SettingsError(
                f"env file {path}, line {binding.original.line + leading.count(chr(10))}: "
                "not NAME=value, a comment or a blank line: correct or remove it"
            )
    values = dotenv_values(stream=io.StringIO(text))
    return {name: value for name, value in values.items() if value is not None}


OTHER_NAMES = frozenset(
    {"RELAY_ENV_FILE", "RELAY_TEST_DSN", "RELAY_TEST_DOWN_SECONDS", "RELAY_SUPERVISOR_FD"}
)
"""RELAY_* variables that are not settings: the command line's, the test harness's, and the
one ``relay run --processes`` gives its processes."""


def _refuse_unknown(settings: Settings, from_file: dict[str, str]) -> None:
    """A misspelled setting would otherwise be ignored without a word. Variables templates may
    read (RELAY_TEMPLATE_ENV_ALLOW) may use the prefix too."""
    given = {name for name in [*os.environ, *from_file] if name.startswith("RELAY_")}
    known = {f"RELAY_{field.upper()}" for field in Settings.model_fields} | OTHER_NAMES
    for name in sorted(given - known):
        if any(fnmatch.fnmatchcase(name, glob) for glob in settings.template_env_globs):
            continue
        close = difflib.get_close_matches(name, sorted(known - OTHER_NAMES), n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise SettingsError(
            f"{name} is not a relay setting{guess}: correct or remove it (docs/operations.md lists "
            "every setting)"
        )


def comma_list(*values: str) -> list[str]:
    """The items of comma-separated values, each stripped, empty ones dropped: how settings
    and command-line options write lists."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def mask_dsn(dsn: str) -> str:
    """The connection string with its password hidden (in either libpq form)."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # not parseable: show nothing of it rather than risk the secret
        return MASK
    if "password" in parts:
        parts["password"] = MASK
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})

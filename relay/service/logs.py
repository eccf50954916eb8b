"""Structured logs: one event per line, JSON when not on a terminal, colours on one.

Every value of every line, and the traceback of an exception logged with one, goes through
relay/reasons.py's :func:`~relay.reasons.scrub` first (URLs by origin, known secrets masked),
whoever logged it: the one path reasons take too. A traceback is text (no local variables, which
the console renderer would otherwise print, secrets and all).

JSON lines are written by orjson, as bytes: at thousands of deliveries a second (a line each)
the standard library's encoder was a tenth of the relay's CPU time.

Whatever else a relay process would write to standard error goes the same way, so that in JSON
mode every line is JSON: the standard library's loggers (psycopg's "error ignored terminating",
asyncio's "Task exception was never retrieved" and its child watcher, aiohttp's), the warnings
module, exceptions nobody could catch (in threads, in ``__del__``).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import MutableMapping
from datetime import date, datetime
from typing import Any, TextIO
from uuid import UUID

import orjson
import structlog

from relay.reasons import scrub

_streams: list[TextIO] = []


def configure(level: int = logging.INFO, file: TextIO | None = None, fmt: str = "auto") -> None:
    """Log to ``file`` (standard error by default) as ``json`` lines or ``console`` colours;
    ``auto`` picks colours on a terminal."""
    file = file or sys.stderr
    _streams[:] = [file]  # JSON goes to its buffer: the file must outlive the caller's reference
    shared: list[structlog.typing.Processor] = [
        scrubbed,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console" or (fmt == "auto" and file.isatty()):
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(file=file),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.processors.JSONRenderer(serializer=_json)],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.BytesLoggerFactory(file=file.buffer),
            cache_logger_on_first_use=True,
        )
    _take_over_the_rest()


def _json(event: object, **_: object) -> bytes:
    return orjson.dumps(event, default=str)


def scrubbed(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The event with each value scrubbed, and ``exc_info`` made a scrubbed traceback."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        event["exception"] = _traceback(exc_info)
    for key, value in event.items():
        if type(value) is str:
            event[key] = scrub(value)
        elif not isinstance(value, _PLAIN):
            event[key] = _scrub(value)
    return event


_PLAIN = (int, float, type(None), datetime, date, UUID)
"""Values no text of anyone else's can be in (the JSON writer writes them as they are)."""


def _scrub(value: Any) -> Any:
    """A value of a log line scrubbed: strings, the items of lists and mappings, and anything
    else as the text it would be written as."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    return scrub(value if isinstance(value, str) else str(value))


def _traceback(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, tuple) and exc_info[1] is not None:
        return "".join(traceback.format_exception(exc_info[1]))
    return "(no exception)"


class _Forward(logging.Handler):
    """Records of the standard library's loggers, as structlog events of the same level (with
    the logger's name): the one format every line is in."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def _take_over_the_rest() -> None:
    """Route what the standard library would print itself through structlog. For a process's
    entry point: it takes over the root logger (warnings and above, as Python's last-resort
    handler printed them) and the hooks for exceptions nobody can catch."""
    root = logging.getLogger()
    root.handlers[:] = [_Forward()]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.unraisablehook = _unraisable
    threading.excepthook = _in_thread


def _unraisable(unraisable: Any) -> None:
    """An exception Python could only ignore (in ``__del__``, a finalizer, a callback)."""
    where = unraisable.err_msg or "Exception ignored in"
    structlog.get_logger("relay").warning(
        f"{where}: {unraisable.object!r}" if unraisable.object is not None else where,
        exc_info=unraisable.exc_value,
    )


def _in_thread(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread."""
    name = args.thread.name if args.thread is not None else "a thread"
    structlog.get_logger("relay").error(
        f"exception in thread {name}",
        exc_info=args.exc_value,
    )

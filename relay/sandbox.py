"""What a template may cost: time, loop iterations, and the size of what it makes.

Jinja2's sandbox already stops templates from reaching Python's internals. It does not stop
one that loops a hundred thousand times inside a loop of a hundred thousand, raises a number
to the power of a number to the power of a number, or multiplies a string into a gigabyte: each
of those would hold the relay's event loop (every delivery, not just this one) for minutes.
Templates rendered by :class:`GuardedEnvironment` inside :func:`budget` stop with
:class:`TemplateTooCostly` instead, at the next operation that passes through the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 1.0
"""Rendering time per template."""
MAX_OUTPUT = 8 * 1024 * 1024
"""Characters per rendered template, and per string or list a template builds."""
MAX_ITERATIONS = 1_000_000
"""Items of ``range(...)`` per template, all loops together."""
MAX_EXPONENT_BITS = 4096
"""Bits of the result of ``**`` (a 1,233-digit number)."""


class TemplateTooCostly(Exception):
    """A template went past one of the limits; the message says which."""


@dataclass
class Budget:
    deadline: float
    iterations: int = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateTooCostly(f"stopped after {MAX_SECONDS:g} s (the limit per template)")

    def spend(self, items: int) -> None:
        self.iterations += items
        if self.iterations > MAX_ITERATIONS:
            raise TemplateTooCostly(
                f"loops went past {MAX_ITERATIONS:,} iterations (the limit per template)"
            )
        self.check()


_current: ContextVar[Budget | None] = ContextVar("relay_template_budget", default=None)


@contextmanager
def budget() -> Iterator[Budget]:
    """The limits for one rendering."""
    limits = Budget(time.monotonic() + MAX_SECONDS)
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def _check() -> None:
    spent = _current.get()
    if spent is not None:
        spent.check()


def collect(chunks: Iterator[str]) -> str:
    """Join a template's output, stopping it once it is larger than the limit."""
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise TemplateTooCostly(f"output went past {MAX_OUTPUT:,} characters")
        parts.append(chunk)
        _check()
    return "".join(parts)


def _counted(items: range) -> Iterator[int]:
    for index, item in enumerate(items):
        if not index % 1024:
            _check()
        yield item


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 1


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = self._range

    @staticmethod
    def _range(*args: int) -> Iterator[int]:
        items = range(*args)
        spent = _current.get()
        if spent is not None:
            spent.spend(len(items))
        return _counted(items)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check()
        if (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and abs(left).bit_length() * right > MAX_EXPONENT_BITS
        ):
            raise TemplateTooCostly(f"{left} ** {right} is too large a number")
        if operator == "*" and isinstance(left, int) != isinstance(right, int):
            count, value = (left, right) if isinstance(left, int) else (right, left)
            if isinstance(count, int) and count * _sized(value) > MAX_OUTPUT:
                raise TemplateTooCostly(
                    f"repeating a value {count:,} times goes past {MAX_OUTPUT:,} characters"
                )
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check()
        for argument in (*args, *kwargs.values()):
            if type(argument) is int and abs(argument) > MAX_OUTPUT:
                raise TemplateTooCostly(f"an argument of {argument:,} is too large")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check()
        return super().getitem(obj, argument)

"""Event-rule conditions, in NetBox's syntax, and what relay adds to it.

A condition is ``{"attr": "data.status", "op": "eq", "value": "active", "negate": false}``;
sets are ``{"and": [...]}`` or ``{"or": [...]}``, nested to any depth. ``attr`` is a dotted
path into the template context: a key of an object, an index into a list (``data.lines.0``), or,
on a list, the same key of every item (``data.tags.slug`` is the list of the tags' slugs).

Evaluation never raises: a path that leads nowhere, or a comparison between values that cannot
be compared, makes that condition false (``negate`` included: it inverts a comparison that was
made, not one that could not be). :func:`explain` says why a rule did not match.

Relay adds ``changed`` and ``unchanged`` (no ``value``): they compare the path in
``snapshots.prechange`` with the same path in ``snapshots.postchange`` (a leading ``data.`` is
dropped, so ``data.status`` and ``status`` mean the same). An absent side counts as a value of
its own, so every column of an inserted or deleted row has ``changed``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

OPS = ("eq", "gt", "gte", "lt", "lte", "in", "contains", "regex", "changed", "unchanged")
NO_VALUE_OPS = ("changed", "unchanged")
CONDITION_KEYS = frozenset({"attr", "op", "value", "negate"})


class InvalidConditions(ValueError):
    """The conditions document is malformed; the message says where."""


class _Missing:
    """The value at a path that leads nowhere."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def validate(conditions: Any, where: str = "conditions") -> None:
    """Raise :class:`InvalidConditions` naming the first thing wrong; None and {} mean "always"."""
    if conditions is None or conditions == {}:
        return
    if not isinstance(conditions, Mapping):
        raise InvalidConditions(f"{where} must be an object, not {type(conditions).__name__}")
    logic = [key for key in ("and", "or") if key in conditions]
    if logic:
        if len(conditions) != 1:
            raise InvalidConditions(f'{where}: a set holds only one key, "and" or "or"')
        items = conditions[logic[0]]
        if not isinstance(items, list) or not items:
            raise InvalidConditions(f"{where}.{logic[0]} must be a non-empty list")
        for i, item in enumerate(items):
            validate(item, f"{where}.{logic[0]}[{i}]")
        return
    unknown = set(conditions) - CONDITION_KEYS
    if unknown:
        raise InvalidConditions(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    attr = conditions.get("attr")
    if not isinstance(attr, str) or not attr or any(not part for part in attr.split(".")):
        raise InvalidConditions(f'{where}: "attr" must be a dotted path such as "data.status"')
    op = conditions.get("op", "eq")
    if not isinstance(op, str) or op not in OPS:
        raise InvalidConditions(f'{where}: unknown op "{op}" (use one of {", ".join(OPS)})')
    if not isinstance(conditions.get("negate", False), bool):
        raise InvalidConditions(f'{where}: "negate" must be true or false')
    if op in NO_VALUE_OPS:
        if "value" in conditions:
            raise InvalidConditions(f'{where}: op "{op}" takes no "value"')
        return
    if "value" not in conditions:
        raise InvalidConditions(f'{where}: op "{op}" needs a "value"')
    value = conditions["value"]
    if op == "in" and not isinstance(value, list):
        raise InvalidConditions(f'{where}: op "in" needs a list "value"')
    if op == "regex":
        if not isinstance(value, str):
            raise InvalidConditions(f'{where}: op "regex" needs a string "value"')
        try:
            re.compile(value)
        except re.error as exc:
            raise InvalidConditions(f"{where}: invalid regular expression: {exc}") from None


def lookup(context: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING."""
    current = context
    for key in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(key, MISSING)
        elif isinstance(current, list):
            if key.lstrip("-").isdigit():
                index = int(key)
                current = current[index] if -len(current) <= index < len(current) else MISSING
            else:
                current = [item.get(key, MISSING) for item in current if isinstance(item, Mapping)]
                current = [item for item in current if item is not MISSING]
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    if isinstance(haystack, list | Mapping):
        return needle in haystack
    raise TypeError(f"cannot look inside {type(haystack).__name__}")


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """Order comparisons between numbers, or between strings; never across kinds or with bool."""

    def check(left: Any, right: Any) -> bool:
        numbers = (int, float)
        if isinstance(left, bool) or isinstance(right, bool):
            raise TypeError("booleans are not ordered")
        if not (
            (isinstance(left, numbers) and isinstance(right, numbers))
            or (isinstance(left, str) and isinstance(right, str))
        ):
            raise TypeError(f"cannot order {type(left).__name__} and {type(right).__name__}")
        return compare(left, right)

    return check


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _matches(value: Any, pattern: Any) -> bool:
    if not isinstance(value, str):
        raise TypeError("regex applies to strings")
    return _regex(pattern).match(value) is not None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": _ordered(operator.gt),
    "gte": _ordered(operator.ge),
    "lt": _ordered(operator.lt),
    "lte": _ordered(operator.le),
    "in": lambda value, options: value in options,
    "contains": _contains,
    "regex": _matches,
}


@dataclass(frozen=True)
class Verdict:
    """Whether conditions matched, and if not, the first reason why."""

    matched: bool
    reason: str = ""


def explain(conditions: Any, context: Mapping[str, Any]) -> Verdict:
    """Evaluate ``conditions`` (already validated) against a template context."""
    if conditions is None or conditions == {}:
        return Verdict(True)
    if "and" in conditions:
        for item in conditions["and"]:
            verdict = explain(item, context)
            if not verdict.matched:
                return verdict
        return Verdict(True)
    if "or" in conditions:
        reasons = []
        for item in conditions["or"]:
            verdict = explain(item, context)
            if verdict.matched:
                return verdict
            reasons.append(verdict.reason)
        return Verdict(False, "none of: " + "; ".join(reasons))
    return _leaf(conditions, context)


def matches(conditions: Any, context: Mapping[str, Any]) -> bool:
    return explain(conditions, context).matched


def _leaf(condition: Mapping[str, Any], context: Mapping[str, Any]) -> Verdict:
    attr: str = condition["attr"]
    op: str = condition.get("op", "eq")
    negate: bool = condition.get("negate", False)
    label = f"{attr} {'not ' if negate else ''}{op}"
    if op in NO_VALUE_OPS:
        path = attr.removeprefix("data.")
        snapshots = context.get("snapshots") or {}
        before = lookup(snapshots.get("prechange"), path)
        after = lookup(snapshots.get("postchange"), path)
        result = (before != after) if op == "changed" else (before == after)
        described = f"{before!r} -> {after!r}"
    else:
        value = lookup(context, attr)
        if value is MISSING:
            return Verdict(False, f"{attr}: not present")
        try:
            result = _COMPARE[op](value, condition["value"])
        except TypeError as exc:
            return Verdict(False, f"{label} {condition['value']!r}: {exc}")
        described = f"{value!r}"
    if negate:
        result = not result
    if result:
        return Verdict(True)
    expected = "" if op in NO_VALUE_OPS else f" {condition['value']!r}"
    return Verdict(False, f"{label}{expected} is false (found {described})")

"""Event-rule conditions, in NetBox's syntax, and what relay adds to it.

A condition is ``{"attr": "status.value", "op": "eq", "value": "active", "negate": false}``;
sets are ``{"and": [...]}`` or ``{"or": [...]}``, nested to any depth. ``attr`` is a dotted
path: a key of an object, an index into a list (``data.lines.0``), or, on a list, the same key of
every item (``data.tags.slug`` is the list of the tags' slugs).

Two dialects share ``attr``, told apart by the path's first part. One of relay's template context
names (:data:`CONTEXT_KEYS`: ``data``, ``event``, ``id``...) makes it relay's path into the
context, as in templates. Any other first part makes it NetBox's, relative to the object's data
(``data``: the new image, the old one for a delete), so ``status`` is ``data.status``. Where a
column's name is also a context name (a column ``id``), relay's meaning wins and ``data.id``
reaches the column: the context names are fixed, so a rule's meaning never depends on a row.

The database holds what NetBox's serializer expands, so two steps bridge the gap, wherever a path
goes: ``value`` as the last step on a plain scalar (string, number, boolean) yields the scalar (a
choice stored as text is its own value: NetBox's ``status.value``), and ``X.id`` where an object
has no ``X`` but a non-null ``X_id`` yields ``X_id`` (NetBox's ``site.id`` is relay's
``site_id``). An object nested under ``X`` is followed as it is. Nothing else is made up: a
choice's ``label`` is the serializer's, never the database's, so it leads nowhere, as does a null
choice or key (NetBox's is null too).

Evaluation never raises: a path that leads nowhere, or a comparison between values that cannot
be compared, makes that condition false (``negate`` included: it inverts a comparison that was
made, not one that could not be). :func:`explain` says why a rule did not match, in the terms of
the path as written (which column the row lacks, a label, a truncate's missing row).

Values compare as JSON values: numbers by their exact value whatever their form (``120.00``,
``120``, ``1.2e2``), never equal to a boolean; lists and objects item by item. Regular
expressions run on RE2, whose time is linear in the text: no pattern can stall matching. What
:func:`validate` accepts is exactly what evaluation can run: documents nest at most
``MAX_DEPTH`` levels (so neither side recurses without bound), and a path part is a list index
only when it is ASCII digits with an optional minus sign (any other part is a key). A key holding
a dot cannot be named (a dot always separates parts).

Relay adds ``changed`` and ``unchanged`` (no ``value``): they compare the path in
``snapshots.prechange`` with the same path in ``snapshots.postchange``. Only the row has a before
and an after, so their path is always the row's: a leading ``data.`` is dropped (``data.status``,
``status`` and ``status.value`` mean the same; ``data`` alone is the whole row), and a first part
that is a context name is a column here. An absent side counts as a value of its own; an absent
image (an insert's before, a delete's after) makes every path ``changed``, even one that leads
nowhere in the other image (a null ``status.value``), so a row that appeared or went has changed
in every respect.
"""

from __future__ import annotations

import operator
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import re2  # type: ignore[import-untyped]

OPS = ("eq", "gt", "gte", "lt", "lte", "in", "contains", "regex", "changed", "unchanged")
NO_VALUE_OPS = ("changed", "unchanged")
CONDITION_KEYS = frozenset({"attr", "op", "value", "negate"})
MAX_DEPTH = 32
"""Levels of JSON nesting in a conditions document, values included (``{"and": [...]}`` is two
levels); relay.conditions_problem has the same limit."""
CONTEXT_KEYS = frozenset(
    {
        "event",
        "timestamp",
        "model",
        "object_type",
        "username",
        "request_id",
        "request",
        "data",
        "snapshots",
        "id",
        "pk",
        "txid",
        "action_data",
    }
)
"""The template context's own names (relay/render/request.py): a path starting with one is
relay's; any other path is NetBox's, relative to ``data``. A rule's ``action_data`` keys, also at
the context's top level for templates, are not among them: a condition reaches them as
``action_data.X``."""
MAX_INDEX_DIGITS = 18
"""A list index with more digits is past the end of any list."""
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the reason goes to the rule's problem, not to stderr


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
    if json_depth(conditions, MAX_DEPTH) > MAX_DEPTH:
        raise InvalidConditions(f"{where}: nested more than {MAX_DEPTH} levels deep")
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
            _regex(value)
        except re2.error as exc:
            raise InvalidConditions(
                f"{where}: invalid regular expression (RE2 syntax): {_re2_message(exc)}"
            ) from None


def json_depth(value: Any, cap: int) -> int:
    """Levels of lists and objects in ``value`` (a scalar is 0, ``[]`` is 1), counted without
    recursion and no further than ``cap + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth <= cap:
            stack.extend((child, depth) for child in children)
    return deepest


def _re2_message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def lookup(context: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING; with NetBox's ``X.value`` and ``X.id`` bridged
    (see the module's docstring)."""
    current = context
    keys = path.split(".")
    last = len(keys) - 1
    for step, key in enumerate(keys):
        if isinstance(current, Mapping):
            found = current.get(key, MISSING)
            if found is MISSING and step == last - 1 and keys[last] == "id":
                key_value = current.get(f"{key}_id")
                return key_value if _plain(key_value) else MISSING
            current = found
        elif isinstance(current, list):
            digits = key.removeprefix("-")
            if digits.isascii() and digits.isdigit():
                if len(digits) > MAX_INDEX_DIGITS:
                    return MISSING
                index = int(key)
                current = current[index] if -len(current) <= index < len(current) else MISSING
            else:
                current = [item.get(key, MISSING) for item in current if isinstance(item, Mapping)]
                current = [item for item in current if item is not MISSING]
        elif step == last and step > 0 and key == "value" and _plain(current):
            return current  # a choice stored as text is its own value
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current


def _plain(value: Any) -> bool:
    """A scalar a choice or a foreign key can hold: not null, an object or a list."""
    return isinstance(value, str | int | float | Decimal)  # bool is an int


def resolve(context: Mapping[str, Any], attr: str) -> Any:
    """The value ``attr`` names: relay's path into the context, or NetBox's into ``data``."""
    if attr.partition(".")[0] in CONTEXT_KEYS:
        return lookup(context, attr)
    return lookup(context.get("data"), attr)


def row_path(attr: str) -> str | None:
    """The path ``changed``/``unchanged`` look up in each image (None: the whole image)."""
    return None if attr == "data" else attr.removeprefix("data.")


def same(left: Any, right: Any) -> bool:
    """JSON equality: numbers by exact value (``1 == 1.0 == 1e0``, and never a boolean),
    strings, null, lists and objects item by item. Iterative, so a deep value costs no stack."""
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        kind = _kind(a)
        if kind is not _kind(b):
            return False
        if kind is list:
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif kind is Mapping:
            if a.keys() != b.keys():
                return False
            pending.extend((a[key], b[key]) for key in a)
        else:
            try:
                if a != b:  # int, float and Decimal compare by exact value
                    return False
            except ArithmeticError:  # a signalling NaN
                return False
    return True


def _kind(value: Any) -> type:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int | float | Decimal):
        return Decimal  # every number is one kind
    if isinstance(value, Mapping):
        return Mapping
    if isinstance(value, list | tuple):
        return list
    if isinstance(value, str):
        return str  # request.user is a str of its own kind (relay/render/request.py)
    return type(value)


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    if isinstance(haystack, list):
        return any(same(item, needle) for item in haystack)
    if isinstance(haystack, Mapping):
        return isinstance(needle, str) and needle in haystack
    raise TypeError(f"cannot look inside {type(haystack).__name__}")


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """Order comparisons between two numbers (by exact value, whatever their form), or between
    two strings; never across kinds or with a boolean."""

    def check(left: Any, right: Any) -> bool:
        kind = _kind(left)
        if kind is not _kind(right) or kind not in (Decimal, str):
            raise TypeError(f"cannot order {type(left).__name__} and {type(right).__name__}")
        try:
            return compare(left, right)
        except ArithmeticError:  # Decimal NaN has no order
            raise TypeError("NaN is not ordered") from None

    return check


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _matches(value: Any, pattern: Any) -> bool:
    if not isinstance(value, str):
        raise TypeError("regex applies to strings")
    return _regex(pattern).match(value) is not None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": same,
    "gt": _ordered(operator.gt),
    "gte": _ordered(operator.ge),
    "lt": _ordered(operator.lt),
    "lte": _ordered(operator.le),
    "in": lambda value, options: any(same(value, option) for option in options),
    "contains": _contains,
    "regex": _matches,
}


class _Brief(reprlib.Repr):
    """repr() cut short for reasons, and never raising: a 5,000-digit int has no repr."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 80, 80, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4000:
            return f"<integer of about {int(x.bit_length() * 0.30103):,} digits>"
        return super().repr_int(x, level)

    def repr_Decimal(self, x: Decimal, level: int) -> str:
        text = str(x)
        return text if len(text) <= self.maxlong else f"{text[:20]}...{text[-17:]}"


_BRIEF = _Brief()


def _show(value: Any) -> str:
    try:
        return _BRIEF.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


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
    """Whether ``conditions`` hold for ``context``; :func:`explain` also says why not."""
    return explain(conditions, context).matched


def _leaf(condition: Mapping[str, Any], context: Mapping[str, Any]) -> Verdict:
    attr: str = condition["attr"]
    op: str = condition.get("op", "eq")
    negate: bool = condition.get("negate", False)
    label = f"{attr} {'not ' if negate else ''}{op}"
    if op in NO_VALUE_OPS:
        path = row_path(attr)
        snapshots = context.get("snapshots") or {}
        images = snapshots.get("prechange"), snapshots.get("postchange")
        before, after = (image if path is None else lookup(image, path) for image in images)
        # a row that appeared or went changed in every respect, whatever the path finds in it
        appeared_or_went = (images[0] is None) is not (images[1] is None)
        result = (not appeared_or_went and same(before, after)) is (op == "unchanged")
        described = f"{_show(before)} -> {_show(after)}"
    else:
        value = resolve(context, attr)
        if value is MISSING:
            return Verdict(False, f"{attr}: {_absent(context, attr)}")
        try:
            result = _COMPARE[op](value, condition["value"])
        except (TypeError, ValueError, ArithmeticError) as exc:
            return Verdict(False, f"{label} {_show(condition['value'])}: {exc}")
        described = _show(value)
    if negate:
        result = not result
    if result:
        return Verdict(True)
    expected = "" if op in NO_VALUE_OPS else f" {_show(condition['value'])}"
    return Verdict(False, f"{label}{expected} is false (found {described})")


def _absent(context: Mapping[str, Any], attr: str) -> str:
    """Why a path into the row leads nowhere, said of the row (its columns), since that is where
    a NetBox path and ``data.``'s look."""
    keys = attr.split(".")
    if keys[0] in CONTEXT_KEYS:
        if keys[0] != "data" or len(keys) == 1:
            return "not present"
        keys = keys[1:]
    row = context.get("data")
    if row is None:
        return "not present (the change has no row: data is null)"
    if not isinstance(row, Mapping):
        return "not present"
    column = keys[0]
    if column not in row:
        key = f"{column}_id"
        if key in row and keys[1:] == ["id"]:
            return f"not present ({key} is {'null' if row[key] is None else _show(row[key])})"
        if key in row:
            return f"not present (the row has {key}, not {column}'s columns)"
        return f"not present (the row has no column {column!r})"
    if len(keys) > 1 and keys[-1] == "label":
        return "not present (a label is NetBox's serializer's, never in the database: use value)"
    held = row[column]
    if len(keys) > 1 and not isinstance(held, Mapping | list):
        shown, rest = "null" if held is None else _show(held), ".".join(keys[1:])
        return f"not present ({column} holds {shown}, which has no {rest!r})"
    return "not present"

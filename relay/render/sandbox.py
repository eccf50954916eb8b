"""What a template may cost: time, loop iterations, and the size of every value it makes.

Jinja2's sandbox stops templates from reaching Python's internals, not from being costly: a loop
over a long string inside another, a string doubled thirty times (``{% set a = a ~ a %}``),
``""|center(300000000)``. Templates compiled by :class:`GuardedEnvironment` and rendered inside
:func:`budget` pass a check wherever work is repeated or a value is made:

- every ``{% for %}`` loop and ``range()`` count the items taken against the budget and look at
  the clock every 256 items; filters and calls that keep all of an iterator's items (``list``,
  ``sort``, ``join``, ``dict()``) take them into a list first, measured as it grows;
- operators (``+ - * / // % **`` and ``~``), filters, method and function calls look at the
  clock, and refuse *before* running when their operands tell that the result would be larger
  than :data:`MAX_OUTPUT` (a width, a count, a separator, a replacement, a format spec, the
  input of one that never shrinks it); what they return is measured right after;
- output, macro results and ``{% set %}`` blocks are measured as they grow, and a collection is
  measured before it is printed.

What never passes a check (one C-level call that runs long: a sort, a sum of lists) is stopped
from outside: relay/render/pool.py renders in a process it kills at the deadline. Nothing is
evaluated while compiling (constant folding is off), so compiling costs only the source's size.
"""

from __future__ import annotations

import functools
import pprint
import re
import string
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from types import BuiltinFunctionType
from typing import Any

import simplejson
from jinja2 import nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, generate_lorem_ipsum
from markupsafe import Markup
from simplejson.encoder import encode_basestring_ascii

MAX_SECONDS = 1.0
"""Rendering time per request: all its templates together, compiling included."""
MAX_OUTPUT = 8 * 1024 * 1024
"""Size of a rendered template, and of any value a template makes (see :func:`size`)."""
MAX_ITERATIONS = 1_000_000
"""Items per request taken by ``{% for %}`` loops and from ``range()``."""
MAX_INT_BITS = 4096
"""Bits of an integer made by ``*`` or ``**`` (a 1,233-digit number)."""
ITEM = 16
"""What each item of a list, tuple, set or mapping adds to its size, besides the item itself:
more than its separator when printed, about what it costs in memory."""


class TemplateTooCostly(Exception):
    """A template went past one of the limits; the message says which."""


@dataclass
class Budget:
    """What rendering one request has spent (see :func:`budget`): the deadline it must end by, and
    the loop items taken so far."""

    deadline: float
    iterations: int = 0

    def check(self) -> None:
        """Raise :class:`TemplateTooCostly` once past the deadline."""
        if time.monotonic() > self.deadline:
            raise TemplateTooCostly(f"stopped after {MAX_SECONDS:g} s (the limit per request)")

    def spend(self) -> None:
        """Count one loop item: raise :class:`TemplateTooCostly` past MAX_ITERATIONS, and look at
        the clock every 256 items."""
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise TemplateTooCostly(
                f"loops went past {MAX_ITERATIONS:,} iterations (the limit per request)"
            )
        if not self.iterations & 255:
            self.check()


_current: ContextVar[Budget | None] = ContextVar("relay_template_budget", default=None)


@contextmanager
def budget() -> Iterator[Budget]:
    """The limits for rendering one request."""
    limits = Budget(time.monotonic() + MAX_SECONDS)
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def _tick() -> None:
    spent = _current.get()
    if spent is not None:
        spent.check()


_COLLECTIONS: tuple[type[Collection[Any]], ...] = (
    list,
    tuple,
    set,
    frozenset,
    type({}.keys()),
    type({}.values()),
    type({}.items()),
)


_PRINTS_ITEMS = (*_COLLECTIONS, dict, Namespace)
_PRINTS_ITSELF = frozenset({str, Markup, int, float, bool, Decimal, type(None)})


def size(value: Any) -> int:
    """About how many characters ``value`` takes when printed: a string its length, a list,
    tuple, set or mapping its items plus :data:`ITEM` each, an integer a digit per 3 bits, other
    values :data:`ITEM`. An item that appears twice counts twice, as it prints twice. Counting
    stops once past :data:`MAX_OUTPUT` (the result is then only known to be larger), so
    measuring a huge value costs no more than measuring one at the limit."""
    total = 0
    pending: list[Any] = [value]
    while pending and total <= MAX_OUTPUT:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, _COLLECTIONS):
            total += ITEM * len(item)
            pending.extend(item)
        elif isinstance(item, dict):
            total += 2 * ITEM * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Decimal):
            total += len(item.as_tuple().digits) + ITEM
        elif isinstance(item, Namespace):  # prints its attributes
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += ITEM
    return total


def _within(made: int, what: str) -> None:
    if made > MAX_OUTPUT:
        raise TemplateTooCostly(f"{what} goes past {MAX_OUTPUT:,} characters (the limit per value)")


def _int(value: Any) -> int:
    """A width or count as given, or 0 when it is not an integer (the call then fails itself)."""
    return value if isinstance(value, int) else 0


class Counted:
    """Items of an iterable, counted against the request's budget as they are taken, the
    clock read every 256: what ``{% for %}`` loops and ``range()`` hand out."""

    __slots__ = ("_items", "_spent")

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self._spent = _current.get()

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        if self._spent is not None:
            self._spent.spend()
        return item


def _taken(items: Iterable[Any], what: str) -> list[Any]:
    """The items of an iterator as a list, measured as they are taken: C code that collects
    an iterator (``list()``, ``sorted()``, ``dict()``) would never stop at the limit."""
    taken: list[Any] = []
    total = 0
    for item in items:
        total += size(item) + ITEM
        _within(total, what)
        if not len(taken) & 255:
            _tick()
        taken.append(item)
    return taken


def _settled(value: Any, what: str) -> Any:
    """``value``, taken into a list first if it is an iterator."""
    return _taken(value, what) if isinstance(value, Iterator) else value


def collect(chunks: Iterator[str]) -> str:
    """Join a template's output, stopping it once it is larger than the limit."""
    parts: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_OUTPUT:
            raise TemplateTooCostly(f"output went past {MAX_OUTPUT:,} characters")
        parts.append(chunk)
        _tick()
    return "".join(parts)


def _joined(parts: Iterable[str]) -> str:
    """``environment.concat``: joins the output of macros, ``caller()`` and ``{% set %}``
    blocks, which would otherwise be joined without a look at their size."""
    pieces: list[str] = []
    total = 0
    for piece in parts:
        total += len(piece)
        _within(total, "a macro or block")
        pieces.append(piece)
    return "".join(pieces)


@pass_eval_context
def _finalize(eval_ctx: EvalContext, value: Any) -> Any:
    """Measure a collection ``{{ ... }}`` is about to print (a list holding one long string forty
    times is small, its text is not). Taking the eval context also keeps Jinja2 from printing
    constant expressions at compile time, where no limit applies."""
    if type(value) not in _PRINTS_ITSELF and isinstance(value, _PRINTS_ITEMS):
        _within(size(value), "a printed value")
    return value


def _made(value: Any, what: str) -> Any:
    """Measure a value just made."""
    if isinstance(value, str):
        _within(len(value), what)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        _within(size(value), what)
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateTooCostly(f"{what} made too large a number")
    return value


# Upper bounds on the size of what a filter or method would make, from its arguments; the same
# signature as the filter or method, without the leading context or environment.
Bound = Callable[..., int]


def _grows(value: Any, *_: Any, **__: Any) -> int:
    """At least as large as its input."""
    return size(value)


def _escaped(value: Any, *_: Any, **__: Any) -> int:
    if isinstance(value, str):
        return len(value) + 4 * sum(value.count(char) for char in "&<>'\"")
    return 5 * size(value)


def _is_ascii(value: Any) -> bool:
    return isinstance(value, str) and value.isascii()


def _cased(value: Any, *_: Any, **__: Any) -> int:
    """Changing case keeps ASCII's length; elsewhere one character may become three."""
    return len(value) if _is_ascii(value) else 3 * size(value)


def _listed(value: Any, *_: Any, **__: Any) -> int:
    """A list of the items of ``value`` (a string's characters become items)."""
    return size(value) + (ITEM * len(value) if isinstance(value, str) else 0)


def _width(value: Any, width: Any = 80, *_: Any, **__: Any) -> int:
    return max(size(value), _int(width))


def _expandtabs(value: Any, tabsize: Any = 8, *_: Any, **__: Any) -> int:
    tabs = value.count("\t") if isinstance(value, str) else value.count(b"\t")
    return len(value) + tabs * _int(tabsize)


def _replace(value: Any, old: Any, new: Any, count: Any = None, *_: Any, **__: Any) -> int:
    if not (isinstance(value, str) and isinstance(old, str) and isinstance(new, str)):
        return (size(value) + 1) * max(1, size(new))
    hits = value.count(old) if old else len(value) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(value) + hits * max(0, len(new) - len(old))


def _translate(value: Any, table: Any = None, *_: Any, **__: Any) -> int:
    return len(value) * max(1, size(table))


def _indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    lines = value.count("\n") + 2 if isinstance(value, str) else size(value) + 2
    each = len(width) if isinstance(width, str) else _int(width)
    return size(value) + lines * each


def _wordwrap(
    s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, **__: Any
) -> int:
    """Every character could end a line."""
    return size(s) * (1 + (size(wrapstring) if wrapstring is not None else 1))


def _truncate(
    s: Any, length: Any = 255, killwords: Any = False, end: Any = "...", **__: Any
) -> int:
    return size(s) + size(end)


def _urlize(
    value: Any,
    trim_url_limit: Any = None,
    nofollow: Any = False,
    target: Any = None,
    rel: Any = None,
    **__: Any,
) -> int:
    """A link is at least four characters; each becomes an ``<a>`` tag that repeats its text
    and carries ``target`` and ``rel``."""
    links = size(value) // 4 + 1
    return 10 * size(value) + links * (size(target) + size(rel) + 64)


def _batch(value: Any, linecount: Any = 1, fill_with: Any = None) -> int:
    """The last batch is filled up to ``linecount`` items at once."""
    return 0 if fill_with is None else _int(linecount) * (ITEM + size(fill_with))


def _number(value: Any) -> str:
    """A number as a reason may quote it: itself when short, else how many digits it has."""
    text = str(value)
    return text if len(text) <= 24 else f"a {len(text.lstrip('-'))}-digit number"


def _to_int(value: Any, *_: Any, **__: Any) -> int:
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() > MAX_INT_BITS // 3:
        raise TemplateTooCostly(f"{_number(value)} is too large a number to make an integer of")
    return 0


def _to_bytes(number: Any, length: Any = 1, *_: Any, **__: Any) -> int:
    return _int(length)


def _lipsum_size(n: Any = 5, html: Any = True, *args: Any, **kwargs: Any) -> int:
    """Paragraphs of up to ``max`` words of at most 16 characters."""
    words = kwargs.get("max", args[1] if len(args) > 1 else 100)
    return 16 * _int(n) * (_int(words) + 8)


def _lipsum(*args: Any, **kwargs: Any) -> str:
    _within(_lipsum_size(*args, **kwargs), "lipsum()")
    return generate_lorem_ipsum(*args, **kwargs)


_NUMBER = re.compile(r"\d+")


def _format_bound(template: str, values: list[Any]) -> int:
    """``template.format(...)``: its text, and for each field the largest value and every width
    or precision in the field's spec (one given as an argument could be the largest integer)."""
    largest = max((size(value) for value in values), default=0)
    widest = max((abs(value) for value in values if isinstance(value, int)), default=0)
    total = 0
    for literal, field, spec, _ in string.Formatter().parse(template):
        total += len(literal)
        if field is not None:
            total += largest + sum(int(n) for n in _NUMBER.findall(spec or ""))
            total += widest * (spec or "").count("{")
    return total


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_bound(template: str, values: Any) -> int:
    """``template % values``: as :func:`_format_bound`, for printf-style conversions."""
    if isinstance(values, Mapping):
        items = list(values.values())
    else:
        items = list(values) if isinstance(values, tuple) else [values]
    largest = max((size(value) for value in items), default=0)
    widest = max((abs(value) for value in items if isinstance(value, int)), default=0)
    total = len(template)
    for width, precision in _PERCENT.findall(template):
        total += largest
        total += widest if width == "*" else int(width or 0)
        total += widest if precision == "*" else int(precision or 0)
    return total


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> int:
    if isinstance(value, str):
        return _percent_bound(value, kwargs or args)
    return size(value) + _percent_bound("", kwargs or args)


FILTER_BOUNDS: dict[str, Bound] = {
    "batch": _batch,
    "capitalize": _cased,
    "center": _width,
    "dictsort": _listed,
    "e": _escaped,
    "escape": _escaped,
    "forceescape": _escaped,
    "format": _format_filter,
    "groupby": _listed,
    "indent": _indent,
    "int": _to_int,
    "list": _listed,
    "lower": _cased,
    "replace": _replace,
    "reverse": _listed,
    "safe": _grows,
    "slice": _listed,
    "sort": _listed,
    "string": _grows,
    "title": _cased,
    "truncate": _truncate,
    "upper": _cased,
    "urlencode": lambda value, *_, **__: (3 if _is_ascii(value) else 12) * size(value),
    "urlize": _urlize,
    "wordwrap": _wordwrap,
    "xmlattr": lambda value, *_, **__: 6 * size(value),
}
"""Filters whose result can be larger than their input, and how large at most."""

COLLECTORS = frozenset({"groupby", "list", "reverse", "slice", "sort", "unique"})
"""Filters that keep all their input's items, in C or without a check: an iterator given to
them is taken into a list first, measured as it grows (:func:`_taken`)."""

ACCESSORS = frozenset({"attr", "d", "default", "first", "last", "max", "min", "random"})
"""Filters that return (part of) a value that already exists: nothing to measure."""

STRING_METHODS: dict[str, Bound] = {
    "capitalize": _cased,
    "casefold": _cased,
    "center": _width,
    "encode": lambda value, *_, **__: 4 * len(value) + 4,
    "expandtabs": _expandtabs,
    "ljust": _width,
    "lower": _cased,
    "replace": _replace,
    "rjust": _width,
    "rsplit": _listed,
    "split": _listed,
    "splitlines": _listed,
    "swapcase": _cased,
    "title": _cased,
    "translate": _translate,
    "upper": _cased,
    "zfill": _width,
}
"""Methods of strings (and bytes) that can make a larger value, and how large at most."""


def _method_bound(method: Any) -> Bound | None:
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, str | bytes):
        return STRING_METHODS.get(name)
    if isinstance(owner, int) and name == "to_bytes":
        return _to_bytes
    return None


Joinable = list[Any] | tuple[Any, ...] | str


def _hands_out(function: Any, owner: Any) -> bool:
    """Calls that return a value that already exists (``data.get('note')``, a cycler's next
    item): what they return was made, and measured, elsewhere."""
    if isinstance(owner, Mapping):
        return getattr(function, "__name__", "") == "get"
    return isinstance(owner, Cycler | LoopContext) or isinstance(function, Joiner)


def _joinable(items: Any, what: str) -> Joinable:
    """The items to join, taken first, so that the separator's repeats can be counted."""
    return items if isinstance(items, list | tuple | str) else _taken(items, what)


def _join_bound(items: Joinable, separator: Any) -> int:
    if isinstance(items, str):
        return len(items) * (1 + size(separator))
    return sum(size(item) for item in items) + size(separator) * max(len(items) - 1, 0)


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> str:
    """Jinja2's ``join``, with the items taken first: the separator repeats once per item."""
    items = _joinable(value, "the join filter")
    _within(_join_bound(items, d), "the join filter")
    return sync_do_join(eval_ctx, items, d, attribute)


JSON_WORST = 12
"""Characters JSON can need for one character of a string (a surrogate pair, escaped)."""
MAX_JSON_INDENT = 64
JSON_SLICE = 65536


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: Any = None) -> Markup:
    """Jinja2's ``tojson``, with ``json.dumps_kwargs`` (relay keeps exact numbers): encoded at
    once when even the worst case is under the limit, else piece by piece up to it."""
    kwargs = dict(eval_ctx.environment.policies["json.dumps_kwargs"])
    if indent is not None:
        if (len(indent) if isinstance(indent, str) else _int(indent)) > MAX_JSON_INDENT:
            raise TemplateTooCostly(f"a tojson indent over {MAX_JSON_INDENT} is not allowed")
        kwargs["indent"] = indent
    encoder = simplejson.JSONEncoder(**kwargs)
    measured = size(value)
    _within(measured, "the tojson filter")
    if indent is None and JSON_WORST * measured <= MAX_OUTPUT:
        text = encoder.encode(value)
    else:
        _encoded_strings_fit(value)
        out = _CappedText("the tojson filter")
        for chunk in encoder.iterencode(value):
            out.write(chunk)
        text = out.text()
    escapes = sum(text.count(char) for char in "<>&'")
    _within(len(text) + 5 * escapes, "the tojson filter")
    return Markup(
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


class _CappedText:
    """Text written piece by piece (a file for ``pprint``), refused once past the limit."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._parts: list[str] = []
        self._total = 0

    def write(self, text: str) -> int:
        self._total += len(text)
        _within(self._total, self._what)
        _tick()
        self._parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self._parts)


def _encoded_strings_fit(value: Any) -> None:
    """Refuse a value holding a string whose JSON would be over the limit by itself (the
    encoder makes each string in one piece), measured by encoding it a slice at a time."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and JSON_WORST * len(item) > MAX_OUTPUT:
            encoded = 0
            for start in range(0, len(item), JSON_SLICE):
                encoded += len(encode_basestring_ascii(item[start : start + JSON_SLICE]))
                _within(encoded, "the tojson filter")
        elif isinstance(item, _COLLECTIONS):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())


def _pprint(value: Any) -> str:
    """Jinja2's ``pprint``, written piece by piece up to the limit (deeply nested values indent
    every line by their depth, and can print far larger than they are)."""
    _within(size(value), "the pprint filter")
    out = _CappedText("the pprint filter")
    pprint.PrettyPrinter(stream=out).pprint(value)  # type: ignore[arg-type]
    return out.text().removesuffix("\n")


REPLACED_FILTERS: dict[str, Callable[..., Any]] = {
    "join": _join,
    "pprint": _pprint,
    "tojson": _tojson,
}


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    bound = FILTER_BOUNDS.get(name)
    measured = name not in ACCESSORS
    collects = name in COLLECTORS
    passed = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0
    what = f"the {name} filter"

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if collects and len(args) > passed:
            args = (*args[:passed], _settled(args[passed], what), *args[passed + 1 :])
        if bound is not None:
            _within(bound(*args[passed:], **kwargs), what)
        result = function(*args, **kwargs)
        return _made(result, what) if measured else result

    return guarded


class _Buffer(list[str]):
    """Where a macro, ``caller()`` or a ``{% set %}`` or ``{% filter %}`` block writes its
    output, measured as it grows: it is joined only at the end."""

    def __init__(self) -> None:
        super().__init__()
        self._total = 0

    def _grow(self, added: int) -> None:
        self._total += added
        _within(self._total, "a macro or block")
        _tick()

    def append(self, piece: str) -> None:
        self._grow(len(piece))
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        pieces = tuple(pieces)
        self._grow(sum(len(piece) for piece in pieces))
        super().extend(pieces)


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles ``~``, ``{% for %}`` and buffered output so that they pass a check: plain
    Jinja2 joins ``~``'s operands, iterates a loop's items and fills a macro's output without
    calling anything the sandbox sees."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.tilde((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.Call(
            nodes.EnvironmentAttribute("loop_items"),
            [node.iter],
            [],
            None,
            None,
            lineno=node.iter.lineno,
        )
        loop = nodes.For(
            node.target,
            counted,
            node.body,
            node.else_,
            node.test,
            node.recursive,
            lineno=node.lineno,
        )
        super().visit_For(loop, frame)


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the limits of this module. Output is not autoescaped
    (``~`` joins plain strings)."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = _GuardedCodeGenerator
    concat = staticmethod(_joined)

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, finalize=_finalize, **options)
        self.globals["range"] = self._range
        self.globals["lipsum"] = _lipsum
        for name, function in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, REPLACED_FILTERS.get(name, function))

    @staticmethod
    def _range(*args: int) -> Counted:
        return Counted(range(*args))

    @staticmethod
    def loop_items(items: Iterable[Any]) -> Counted:
        """What a ``{% for %}`` loop iterates: its items counted as they are taken."""
        return items if isinstance(items, Counted) else Counted(items)

    @staticmethod
    def output_buffer() -> list[str]:
        """Where compiled templates write a macro's or block's output: a list measured as it grows,
        so a block cannot build past MAX_OUTPUT before it is joined."""
        return _Buffer()

    @staticmethod
    def tilde(operands: tuple[Any, ...]) -> str:
        """``~`` as compiled templates call it: refused before joining when the operands would make
        a string past MAX_OUTPUT."""
        _tick()
        _within(sum(size(operand) for operand in operands), "'~'")
        return "".join([str(operand) for operand in operands])

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Jinja2's hook for arithmetic operators, guarded: numbers past MAX_INT_BITS and ``*``,
        ``+`` or ``%`` results past MAX_OUTPUT are refused before they are made."""
        _tick()
        if operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and abs(left).bit_length() * right > MAX_INT_BITS
            ):
                raise TemplateTooCostly(
                    f"{_number(left)} ** {_number(right)} is too large a number"
                )
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise TemplateTooCostly("'*' would make too large a number")
            else:
                count, value = (left, right) if isinstance(left, int) else (right, left)
                if isinstance(count, int):
                    _within(count * size(value), f"repeating a value {count:,} times")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _within(size(left) + size(right), "'+'")
        elif operator == "%" and isinstance(left, str):
            _within(_percent_bound(left, right), "'%' formatting")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Jinja2's hook for every call in a template, guarded: looks at the clock, and refuses
        before running when its arguments say the result would be too large; what it returns is
        measured."""
        _tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "a call")
        what = f"{name}()"
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (__self.loop_items(args[0]), *args[1:])
        elif isinstance(__obj, BuiltinFunctionType | type):  # may collect an iterator in C
            args = tuple(_settled(arg, what) for arg in args)
        if name == "join" and isinstance(owner, str | bytes):
            items = _joinable(args[0], what) if args else []
            _within(_join_bound(items, owner), what)
            args = (items, *args[1:])
        else:
            bound = _method_bound(__obj)
            if bound is not None:
                _within(bound(owner, *args, **kwargs), what)
        result = super().call(__context, __obj, *args, **kwargs)
        return result if _hands_out(__obj, owner) else _made(result, what)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, refused when their widths and values would make
        too long a string."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        formatted: Callable[..., str] = wrapped
        template: str = value.__self__
        mapped = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            if mapped and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            else:
                values = [*args, *kwargs.values()]
            _within(_format_bound(template, values), f"{value.__name__}()")
            return formatted(*args, **kwargs)

        return functools.update_wrapper(checked, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja2's sandboxed attribute lookup, which also looks at the clock."""
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """Jinja2's sandboxed item lookup (``a[b]``), which also looks at the clock."""
        _tick()
        return super().getitem(obj, argument)

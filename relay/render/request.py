"""Turning one change and one webhook into the exact HTTP request that will be sent.

Templates run in Jinja2's ``ImmutableSandboxedEnvironment``, with the cost limits of
relay/render/sandbox.py: no attribute starting with an underscore, no mutation of the context, no
access to files, modules or the process environment, except environment variables whose names
match a glob the operator allowed (NetBox's ``env`` filter). Every failure is a
:class:`RenderError` whose message says which field failed and why. :class:`Renderer` renders
in the calling process; relay/render/pool.py runs it in processes that can be stopped.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from contextvars import ContextVar
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson
import simplejson
from jinja2 import TemplateError, Undefined

from relay._version import __version__
from relay.model import Batch, Change, Request, UnreadableJSON, Webhook, dumps, loads
from relay.reasons import describe, scrub, sensitive, url_origin
from relay.render.sandbox import GuardedEnvironment, TemplateTooCostly, budget, collect
from relay.render.sign import InvalidSecret, signature_headers, signing_secret

EVENTS = {
    "insert": "created",
    "update": "updated",
    "delete": "deleted",
    "truncate": "truncated",
    "snapshot": "snapshot",
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_env_read: ContextVar[list[str] | None] = ContextVar("relay_env_read", default=None)
"""Values the ``env`` filter handed to the templates of the request being made."""


class RenderError(Exception):
    """A webhook could not be rendered for a change; the message is meant for a person."""


def context(change: Change, action_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The template context: NetBox's names, then relay's own, then NetBox 4's ``request``.
    ``action_data`` adds keys (and is also there as a whole) but never replaces one of these.
    ``data`` carries the rows the webhook's ``related`` option nests (relay/delivery/
    related.py); the snapshots are the images as captured."""
    data = change.new if change.new is not None else change.old
    if change.related_json is not None and isinstance(data, dict):
        data = {**data, **loads(change.related_json)}
    return _context(change, change.old, change.new, change.pk, action_data, data)


def batch_context(batch: Batch) -> dict[str, Any]:
    """A batch's template context: its first change's, so that a template written for one
    change still renders, plus ``changes``, every change's own context in outbox order."""
    contexts = [context(c, data) for c, data in zip(batch.changes, batch.action_data, strict=True)]
    return {**contexts[0], "changes": contexts}


def default_body(
    change: Change, action_data: Mapping[str, Any] | None = None, body_format: str = "relay"
) -> bytes:
    """The body without a template, in the webhook's ``body_format``: the shape as JSON, the
    row's JSON text spliced in as PostgreSQL wrote it (same values and digits; no parse, no
    re-encoding). orjson writes it (3 us rather than simplejson's 13); what orjson cannot write
    (an integer past 64 bits in the action data) takes simplejson's exact path."""
    shape = _SHAPES.get(body_format)
    if shape is None:
        raise RenderError(f"body_format {body_format[:40]!r} is not one of {', '.join(_SHAPES)}")
    pieces = _fragment(change.old_json), _fragment(change.new_json), _fragment(change.pk_json)
    data = _data_text(change)
    try:
        return orjson.dumps(
            shape(change, *pieces, action_data, _fragment(data)),
            default=_exact,
            option=orjson.OPT_PASSTHROUGH_DATETIME,
        )
    except orjson.JSONEncodeError:
        raw = _raw(change.old_json), _raw(change.new_json), _raw(change.pk_json)
        return dumps(shape(change, *raw, action_data, _raw(data))).encode()


def _data_text(change: Change) -> str | None:
    """``data``'s JSON text: the row's, with the related rows' members spliced in before its
    closing brace (neither is parsed: the row's text stays as PostgreSQL wrote it)."""
    text = change.new_json if change.new_json is not None else change.old_json
    if text is None or change.related_json is None:
        return text
    members = change.related_json.strip()[1:-1].strip()
    row = text.rstrip()
    if not members or not row.endswith("}"):
        return text  # an image that is no object nests nothing (related.wants)
    head = row[:-1].rstrip()
    return f"{head}{'' if head.endswith('{') else ','}{members}}}"


def _fragment(text: str | None) -> orjson.Fragment | None:
    return None if text is None else orjson.Fragment(text)


def _exact(value: Any) -> Any:
    """What orjson has no type for, written as :func:`relay.model.dumps` writes it: a Decimal
    with its exact digits, anything else as its ``str``."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    return str(value)


def default_batch_body(batch: Batch, body_format: str = "relay") -> bytes:
    """A batch's body without a template: a JSON array of its changes' default bodies."""
    bodies = (
        default_body(c, data, body_format)
        for c, data in zip(batch.changes, batch.action_data, strict=True)
    )
    return b"[" + b",".join(bodies) + b"]"


def _context(
    change: Change,
    old: Any,
    new: Any,
    pk: Any,
    action_data: Mapping[str, Any] | None,
    data: Any,
) -> dict[str, Any]:
    user = None if change.username is None else _User(change.username)
    ctx = _relay_body(change, old, new, pk, action_data, data)
    ctx["request"] = _request(change, user)  # after the action data's keys: it replaces theirs
    return ctx


def _relay_body(
    change: Change,
    old: Any,
    new: Any,
    pk: Any,
    action_data: Mapping[str, Any] | None,
    data: Any,
) -> dict[str, Any]:
    """The ``relay`` format: NetBox 3's names, relay's own, the action data's keys (which never
    replace those) at the top level and as a whole. It is the template context but for
    ``request``, and stays as it was before NetBox 4's format came (receivers read it)."""
    core = {
        "event": EVENTS[change.op],
        "timestamp": change.created_at.isoformat(),
        "model": change.model_name,
        "object_type": change.object_type,
        "username": change.username,
        "request_id": change.request_id,
        "data": data,
        "snapshots": {"prechange": old, "postchange": new},
        "id": change.id,
        "pk": pk,
        "txid": change.txid,
        "action_data": dict(action_data or {}),
    }
    return {**(action_data or {}), **core}


def _netbox4_body(
    change: Change,
    old: Any,
    new: Any,
    pk: Any,
    action_data: Mapping[str, Any] | None,
    data: Any,
) -> dict[str, Any]:
    """The ``netbox4`` format: NetBox 4's keys, in NetBox 4's order, and nothing else (no
    ``pk``, ``id``, ``txid`` or action data: a receiver that checks the shape sees NetBox's).
    What relay adds goes in the headers (X-Relay-Delivery, X-Relay-Event)."""
    return {
        "event": EVENTS[change.op],
        "timestamp": change.created_at.isoformat(),
        "object_type": change.object_type,
        "data": data,
        "request": _request(change, change.username),
        "snapshots": {"prechange": old, "postchange": new},
    }


_SHAPES = {"relay": _relay_body, "netbox4": _netbox4_body}
"""The default body of each ``webhooks.body_format`` (relay.check_webhook lists the same)."""


def _request(change: Change, user: str | None) -> dict[str, Any]:
    """NetBox 4's ``request``: the tags of the writing transaction (relay.tag's request_id and
    username, the relay.request_path and relay.request_method settings), None where unset."""
    return {
        "id": change.request_id,
        "path": change.request_path,
        "method": change.request_method,
        "user": user,
    }


class _User(str):
    """``request.user`` in templates: the username. NetBox 4's is a User object that prints as its
    username, so ``{{ request.user }}`` and ``{{ request.user.username }}`` render the same here
    as there; nothing else of a NetBox user (``id``, ``email``) is known to a database capture,
    and those are undefined. A str, so the sandbox measures and guards it as any string."""

    __slots__ = ()

    @property
    def username(self) -> str:
        """The name as a plain str (what NetBox's ``User.username`` is)."""
        return str.__str__(self)


def _raw(text: str | None) -> simplejson.RawJSON | None:
    return None if text is None else simplejson.RawJSON(text)


def header_line(line: str, what: str) -> tuple[str, str] | None:
    """A rendered header line as (name, value), None when blank; RenderError when it is not
    ``Name: Value``. Control characters leave the value, so no data can end the header."""
    if not line.strip():
        return None
    name, sep, value = line.partition(":")
    name = name.strip()
    # Never the line itself: what is missing its colon may be "Authorization Bearer <token>".
    if not sep:
        raise RenderError(f"{what} is not 'Name: Value': it has no ':'")
    if not _HEADER_NAME.match(name):
        raise RenderError(f"{what} is not 'Name: Value': {name[:40]!r} is not a header name")
    return name, _CONTROL.sub("", value).strip()


def needs_jinja(webhook: Webhook) -> bool:
    """Whether any of the webhook's fields is a template (has a ``{``): without one, rendering is
    a JSON dump of the row and nothing a template could make costly."""
    return any(
        "{" in source
        for source in (webhook.payload_url, webhook.body_template, webhook.additional_headers)
    )


class TemplateChecker(Protocol):
    """What checking rules needs of a renderer: compiling a template without rendering it (a
    Renderer, or a BlockingRenderPool for the limits ``relay run`` applies)."""

    def check(self, source: str, what: str) -> None:
        """Compile only: raise RenderError with the line of a syntax error."""


class Renderer:
    """Compiles templates once and renders them in the sandbox."""

    def __init__(self, env_allow: Sequence[str] = ()) -> None:
        self._env_allow = tuple(env_allow)
        self.jinja = GuardedEnvironment(
            undefined=Undefined, autoescape=False, keep_trailing_newline=True
        )
        self.jinja.filters["env"] = self._env
        self.jinja.policies["json.dumps_kwargs"] = {"use_decimal": True, "sort_keys": False}
        self._compile = lru_cache(maxsize=512)(self.jinja.from_string)

    def _env(self, name: str) -> str:
        if not env_allowed(name, self._env_allow):
            raise RenderError(
                f"environment variable {name!r} is not allowed in templates "
                "(RELAY_TEMPLATE_ENV_ALLOW lists the names that are)"
            )
        value = os.environ.get(name, "")
        read = _env_read.get()
        if read is not None:
            read.append(value)
        return value

    def check(self, source: str, what: str) -> None:
        """Compile only: raise RenderError with the line of a syntax error."""
        try:
            self._compile(source)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            raise RenderError(f"{what}: line {line}: {exc.message}") from None
        except Exception as exc:  # nesting past Python's recursion limit, for one
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from None

    def render(self, source: str, ctx: Mapping[str, Any], what: str) -> str:
        """Render one field, within the budget of the request being rendered."""
        if "{" not in source:
            return source  # no tag, expression or comment: nothing to render
        self.check(source, what)
        try:
            return collect(self._compile(source).generate(ctx))
        except TemplateTooCostly as exc:
            raise RenderError(f"{what}: {exc}") from None
        except RenderError as exc:
            raise RenderError(f"{what}: {exc}") from None
        except TemplateError as exc:
            raise RenderError(f"{what}: {exc.message or type(exc).__name__}") from None
        except Exception as exc:  # a template may raise anything a filter raises
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from None

    def headers(self, source: str, ctx: Mapping[str, Any]) -> dict[str, str]:
        """``Name: Value`` lines, each line a template of its own. Rendering line by line, then
        removing control characters from the value, means no data can add a header or end the
        request head; a line that renders empty is skipped, a malformed one is an error."""
        headers: dict[str, str] = {}
        for number, template in enumerate(source.splitlines(), 1):
            what = f"additional_headers line {number}"
            header = header_line(self.render(template, ctx, what), what)
            if header is not None:
                headers[header[0]] = header[1]
        return headers

    def request(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        """The request to send for a change (with its rule's ``action_data``) or a batch (each
        change with its own), under ``delivery_id`` (relay.deliveries.id, or batch_delivery_id:
        made with the delivery, never worked out here), or RenderError naming the field or step
        that failed. Whatever goes wrong, the message never carries the webhook's secrets or a
        value the templates read with ``env`` (an error may quote the value it choked on)."""
        templated = needs_jinja(webhook)
        with _reading_env() as env_values:
            try:
                with budget() if templated else nullcontext():
                    return self._build(
                        webhook, change, action_data, timestamp, delivery_id, templated
                    )
            except RenderError as exc:
                raise RenderError(scrub(str(exc), [*secrets_of(webhook), *env_values])) from None

    def _build(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None,
        timestamp: int,
        delivery: str,
        templated: bool,
    ) -> Request:
        try:
            # Without templates nothing reads the context, and building it parses the row.
            if not templated:
                ctx: dict[str, Any] = {}
            elif isinstance(change, Batch):
                ctx = batch_context(change)
            else:
                ctx = context(change, action_data)
        except UnreadableJSON as exc:
            raise RenderError(f"the change cannot be read: {exc}") from None
        except Exception as exc:
            raise RenderError(f"the change cannot be read: {describe(exc)}") from None
        url = self.render(webhook.payload_url, ctx, "payload_url").strip()
        check_url(url)
        if _CONTROL.search(webhook.http_content_type):
            raise RenderError("http_content_type holds a line break or another control character")
        if webhook.body_template.strip():
            body = self.render(webhook.body_template, ctx, "body_template").encode()
        elif isinstance(change, Batch):
            body = default_batch_body(change, webhook.body_format)
        else:
            body = default_body(change, action_data, webhook.body_format)
        headers = {
            "Content-Type": webhook.http_content_type,
            "User-Agent": f"relay/{__version__}",
        }
        headers["X-Relay-Delivery"] = delivery
        if isinstance(change, Batch):
            headers["X-Relay-Event"] = "batch"
            headers["X-Relay-Batch-Size"] = str(len(change.changes))
        else:
            headers["X-Relay-Event"] = f"{change.object_type}.{EVENTS[change.op]}"
        headers.update(self.headers(webhook.additional_headers, ctx))
        try:
            headers.update(
                signature_headers(
                    webhook.signature, signing_secret(webhook, timestamp), body, delivery, timestamp
                )
            )
        except InvalidSecret as exc:
            raise RenderError(f"secret: {exc}") from None
        except Exception as exc:
            raise RenderError(f"signing: {describe(exc)}") from None
        return Request(webhook.http_method, url, headers, body, delivery)


@contextmanager
def _reading_env() -> Iterator[list[str]]:
    values: list[str] = []
    token = _env_read.set(values)
    try:
        yield values
    finally:
        _env_read.reset(token)


def secrets_of(webhook: Webhook, request: Request | None = None) -> list[str]:
    """What no reason, log line or output may show of ``webhook`` and of a ``request``
    rendered for it: its secrets, its URL's password, and the values of query parameters and
    headers whose names say they are credentials (a template's own text is none: what it
    renders may be)."""
    found = [
        line.strip()
        for line in (webhook.secret + "\n" + webhook.previous_secret).splitlines()
        if line.strip()
    ]
    found += _url_credentials(webhook.payload_url)
    for line in webhook.additional_headers.splitlines():
        name, sep, value = line.partition(":")
        if sep and sensitive(name) and "{" not in value:
            found += _credential(value)
    if request is not None:
        found += _url_credentials(request.url)
        for name, value in request.headers.items():
            if sensitive(name):
                found += _credential(value)
    return [value for value in found if value]


def _credential(value: str) -> list[str]:
    """A credential header's value, after its scheme when it has one ("Bearer <token>")."""
    value = value.strip()
    scheme, space, rest = value.partition(" ")
    return [rest.strip()] if space and scheme.isalpha() else [value]


def _url_credentials(url: str) -> list[str]:
    """The password and credential-named query values of ``url``, and the Authorization: Basic
    credentials the HTTP client makes of its user part (base64 of ``user:password``, which a
    receiver may echo back). Not the user name: it is as often a word ("webhook") that masking
    everywhere would make every line unreadable (it never shows anyway: a URL in a reason or a
    log line shows no user part)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return []
    if parts.username is not None and "{" not in parts.netloc:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        # The client writes it in Latin-1; a pair outside it is never sent.
        with suppress(UnicodeEncodeError):
            found.append(base64.b64encode(pair.encode("latin-1")).decode())
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if sensitive(name):
            found.append(value)
    return [value for value in found if "{" not in value]  # a template's text is no secret


def env_allowed(name: str, globs: Sequence[str]) -> bool:
    """Whether templates may read the environment variable ``name`` (RELAY_TEMPLATE_ENV_ALLOW's
    ``globs``)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in globs)


def env_values(globs: Sequence[str]) -> list[str]:
    """The values templates may read with ``env``: secrets as much as a webhook's own."""
    return [value for name, value in os.environ.items() if env_allowed(name, globs)]


def check_url(url: str) -> None:
    """An http(s) URL with a host that can be looked up: the host name must encode the way the
    resolver will encode it (IDNA: no empty label, none over 63 characters)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError:
        parts = urlsplit("")
    host = parts.hostname
    if _CONTROL.search(url):
        raise RenderError("payload_url rendered to a URL with a line break or control character")
    if parts.scheme not in ("http", "https") or not host:
        # By origin alone: the rest may hold a password or a token (ftp://user:pw@host/...).
        raise RenderError(
            f"payload_url rendered to {url_origin(url)[:200]!r}, not an http(s) URL with a host"
        )
    if ":" not in host:  # an IPv6 address has no labels
        try:
            host.encode("idna")
        except UnicodeError as exc:
            raise RenderError(
                f"payload_url: host {host[:80]!r} is not a valid host name ({exc.__cause__ or exc})"
            ) from None

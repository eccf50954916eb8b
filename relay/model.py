"""The values that flow through every stage: a captured change, a webhook, a request.

Their JSON is read and written by :func:`loads` and :func:`dumps`, which keep numbers exact
(``120.00`` stays ``Decimal('120.00')``), so a value survives the trip from PostgreSQL to the
receiver unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

import simplejson


class UnreadableJSON(ValueError):
    """JSON that is valid but that Python cannot hold: nested deeper than its recursion limit."""


def loads(text: str) -> Any:
    """JSON with exact numbers: ``120.00`` stays ``Decimal('120.00')``, not ``120.0``, and an
    integer too long for Python's int-from-text limit (4,300 digits) becomes an exact Decimal.
    JSON nested too deeply to parse raises :class:`UnreadableJSON`, never RecursionError."""
    try:
        try:
            return simplejson.loads(text, use_decimal=True)
        except simplejson.JSONDecodeError:
            raise
        except ValueError:  # an integer past the limit: the rare case pays for the slow path
            return simplejson.loads(text, use_decimal=True, parse_int=_exact_int)
    except RecursionError:
        raise UnreadableJSON(
            f"JSON nested too deeply to read (Python stops near {sys.getrecursionlimit():,} levels)"
        ) from None


def _exact_int(text: str) -> int | Decimal:
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def as_written(text: str | bytes, indent: int | None = None) -> str:
    """JSON written again, each number exactly as ``text`` wrote it (``10.00``, ``1e5``, ``-0``),
    with ``indent`` if given: for showing a body to a person, who must see the digits that were
    sent, not what a float or a Decimal makes of them (``10.0``, ``1E+5``). ValueError when
    ``text`` is not JSON (:class:`UnreadableJSON` when nested too deeply to read)."""
    try:
        shown: str = simplejson.dumps(loads_as_written(text), indent=indent, ensure_ascii=False)
    except RecursionError:
        raise UnreadableJSON("JSON nested too deeply to write") from None
    return shown


def loads_as_written(text: str | bytes) -> Any:
    """JSON whose numbers stay the text that wrote them (``simplejson.RawJSON``), which
    :func:`dumps` writes back unchanged: for showing a value, never for computing with it.
    ValueError when ``text`` is not JSON (:class:`UnreadableJSON` when nested too deeply)."""
    try:
        return simplejson.loads(text, parse_float=simplejson.RawJSON, parse_int=simplejson.RawJSON)
    except RecursionError:
        raise UnreadableJSON("JSON nested too deeply to read") from None


def dumps(value: Any) -> str:
    """JSON as relay writes it: Decimals as exact numbers, text not ASCII-escaped, and any value
    JSON has no type for (a datetime, a UUID) as its ``str``."""
    text: str = simplejson.dumps(value, use_decimal=True, ensure_ascii=False, default=str)
    return text


@dataclass(frozen=True)
class Change:
    """An outbox row, as the renderer needs it. The jsonb columns stay the text PostgreSQL sent
    until something reads ``old``, ``new`` or ``pk`` (parsed with :func:`loads`, once): the
    default body splices the text in as it is, and rules without conditions never look, so
    most deliveries never parse their row at all."""

    id: int
    schema_name: str
    table_name: str
    op: str
    old_json: str | None
    new_json: str | None
    pk_json: str | None
    username: str | None
    request_id: str | None
    txid: str
    created_at: datetime
    model: str | None = None
    """The table's model name (``relay.track(..., model => 'dcim.device')``), if it has one."""
    request_path: str | None = None
    """The path of the application's request that made the change (``relay.request_path``), as
    the application said: None for a change made outside a request."""
    request_method: str | None = None
    """The HTTP method of that request (``relay.request_method``), as the application said."""
    related_json: str | None = None
    """The rows its webhook's ``related`` option nests in ``data``, as one JSON object's text
    (``{"site": {"id": 3, ...}, "tenant": null}``), read by the relay when it claimed the
    delivery (relay/delivery/related.py); None without the option."""

    @classmethod
    def of(cls, *, old: Any = None, new: Any = None, pk: Any = None, **fields: Any) -> Change:
        """A Change from values rather than stored text (previews, tests)."""
        return cls(
            old_json=None if old is None else dumps(old),
            new_json=None if new is None else dumps(new),
            pk_json=None if pk is None else dumps(pk),
            **fields,
        )

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], old: str | None, new: str | None, model: str | None = None
    ) -> Change:
        """A Change from an outbox row as relay's queries name its columns, with its images
        (None where they were not read) and its table's model name."""
        return cls(
            id=row["id"],
            schema_name=row["schema_name"],
            table_name=row["table_name"],
            op=row["op"],
            old_json=old,
            new_json=new,
            pk_json=row["pk"],
            username=row["username"],
            request_id=row["request_id"],
            txid=row["txid"],
            created_at=row["created_at"],
            model=model,
            request_path=row["request_path"],
            request_method=row["request_method"],
        )

    @cached_property
    def old(self) -> Any:
        """The row before an update or delete, parsed with :func:`loads` on first use; None for an
        insert or truncate, and when the image was not read."""
        return None if self.old_json is None else loads(self.old_json)

    @cached_property
    def new(self) -> Any:
        """The row after an insert or update, parsed with :func:`loads` on first use; None for a
        delete or truncate, and when the image was not read."""
        return None if self.new_json is None else loads(self.new_json)

    @cached_property
    def pk(self) -> Any:
        """The primary-key columns and their values, parsed on first use; None for a truncate and
        for a table without a primary key."""
        return None if self.pk_json is None else loads(self.pk_json)

    @property
    def object_type(self) -> str:
        """NetBox's "app_label.model" when the model name has a dot, else ``schema.table``."""
        if self.model and "." in self.model:
            return self.model
        return f"{self.schema_name}.{self.table_name}"

    @property
    def model_name(self) -> str:
        """NetBox's model: the part of the model name after its last dot, else the table."""
        return self.model.rpartition(".")[2] if self.model else self.table_name

    @property
    def table_key(self) -> tuple[str, str]:
        """The table, unambiguous even when its names hold dots (object_type is not)."""
        return self.schema_name, self.table_name


BODY_FORMATS = ("relay", "netbox4")
"""The shapes of a default body (``webhooks.body_format``; relay.check_webhook takes the same)."""


@dataclass(frozen=True)
class Webhook:
    """A webhook as relay sends to it (a relay.webhooks row). ``max_attempts`` and the retry fields
    are None where the relay's settings apply; the secrets stay out of the repr."""

    id: int
    name: str
    payload_url: str
    http_method: str = "POST"
    http_content_type: str = "application/json"
    additional_headers: str = ""
    body_template: str = ""
    secret: str = field(default="", repr=False)
    previous_secret: str = field(default="", repr=False)
    """The secret a rotation replaced; it signs until ``previous_secret_until`` (render.sign)."""
    previous_secret_until: float | None = None
    """When the previous secret stops signing, in seconds since the epoch (None: it does not)."""
    signature: str = "netbox"
    ssl_verification: bool = True
    ca_file_path: str | None = None
    timeout_seconds: Decimal = Decimal(10)
    enabled: bool = True
    max_attempts: int | None = None
    retry_base_seconds: Decimal | None = None
    retry_max_seconds: Decimal | None = None
    batch_size: int = 1
    """Changes per request, at most; above 1 the body is a JSON array, even of one change."""
    batch_wait_ms: int = 0
    """How long a batch that is not full may wait for more changes."""
    concurrency: int | None = None
    """Requests in flight to it across every relay (None: RELAY_WEBHOOK_CONCURRENCY, per relay
    process)."""
    rate_limit: Decimal | None = None
    """Requests a second across every relay, evenly spaced (None: no limit)."""
    ordering: str = "row"
    """Which changes go out one after another: ``row`` (each row's), ``transaction`` (all of
    them, in commit order) or ``key`` (those whose ``ordering_key`` renders the same)."""
    ordering_key: str | None = None
    """With ``ordering = 'key'``: a template, rendered with the body's context."""
    body_format: str = "relay"
    """The default body's shape (when ``body_template`` is empty): ``relay`` (NetBox 3's keys and
    relay's own) or ``netbox4`` (NetBox 4's: event, timestamp, object_type, data, request,
    snapshots)."""
    coalesce_changes: bool = False
    """One event per row per transaction: a row's changes within one transaction go as one
    (relay/delivery/coalesce.py)."""
    paused: bool = False
    """Paused (paused_at set, by an operator or as dead): what a relay claimed before it heard
    of the pause goes back unsent rather than out."""
    related: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per foreign-key column, the columns of the row it references to nest in ``data`` under
    :func:`related_name` (``(("site_id", ("name", "slug")),)``); empty: none."""


def related_name(column: str) -> str:
    """Where the row a foreign-key column references nests in ``data``: NetBox's name for it,
    the column without ``_id`` (``site_id``: ``site``); any other column adds ``_object``
    (``parent``: ``parent_object``), so that the nested row never takes the column's own name.
    relay.check_webhook (sql/functions/rules.sql) applies the same rule."""
    if len(column) > 3 and column.endswith("_id"):
        return column[:-3]
    return column + "_object"


@dataclass(frozen=True)
class Batch:
    """Changes that go to one webhook in one request, in outbox order, each with its rule's
    action data. ``id`` (relay.batch_ids) names the batch on every attempt: its delivery id is
    made from it."""

    id: int
    changes: tuple[Change, ...]
    action_data: tuple[Mapping[str, Any] | None, ...]


@dataclass(frozen=True)
class Request:
    """A rendered request, ready to send. ``delivery_id`` is the same for every attempt of one
    delivery (X-Relay-Delivery), so a receiver can drop repeats."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    delivery_id: str

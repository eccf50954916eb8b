"""Managing webhooks and event rules with SQLAlchemy, on the same tables plain SQL uses.

The database checks every row (see sql/functions/rules.sql); this module only maps the
tables, so what `relay webhook add` accepts is exactly what an INSERT accepts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, ForeignKey, MetaData, Text, create_engine, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import FetchedValue

from relay import db as db_module


class Base(DeclarativeBase):
    """The declarative base of the mapped tables, all in schema ``relay``."""

    metadata = MetaData(schema="relay")


def _defaulted() -> Any:
    """A column the database fills in when we leave it out."""
    return mapped_column(server_default=FetchedValue())


class WebhookRow(Base):
    """relay.webhooks as the webhook commands write it: a column left unset gets the database's
    default, and the database checks every value."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True, server_default=FetchedValue())
    name: Mapped[str]
    payload_url: Mapped[str]
    http_method: Mapped[str] = _defaulted()
    http_content_type: Mapped[str] = _defaulted()
    additional_headers: Mapped[str] = _defaulted()
    body_template: Mapped[str] = _defaulted()
    secret: Mapped[str] = _defaulted()
    previous_secret: Mapped[str] = _defaulted()
    previous_secret_until: Mapped[datetime | None]
    signature: Mapped[str] = _defaulted()
    ssl_verification: Mapped[bool] = _defaulted()
    ca_file_path: Mapped[str | None]
    timeout_seconds: Mapped[Decimal] = _defaulted()
    enabled: Mapped[bool] = _defaulted()
    max_attempts: Mapped[int | None]
    retry_base_seconds: Mapped[Decimal | None]
    retry_max_seconds: Mapped[Decimal | None]
    batch_size: Mapped[int] = _defaulted()
    batch_wait_ms: Mapped[int] = _defaulted()
    paused_at: Mapped[datetime | None]
    paused_reason: Mapped[str | None]
    concurrency: Mapped[int | None]
    rate_limit: Mapped[Decimal | None]
    dead_after_seconds: Mapped[int | None]
    ordering: Mapped[str] = _defaulted()
    ordering_key: Mapped[str | None]
    body_format: Mapped[str] = _defaulted()
    related: Mapped[Any] = mapped_column(JSONB(none_as_null=True), nullable=True)
    coalesce_changes: Mapped[bool] = _defaulted()
    created_at: Mapped[datetime] = _defaulted()
    updated_at: Mapped[datetime] = _defaulted()

    rules: Mapped[list[EventRuleRow]] = relationship(back_populates="webhook")


class EventRuleRow(Base):
    """relay.event_rules as the rule commands write it; ``conditions`` and ``action_data`` hold the
    JSON documents as Python values."""

    __tablename__ = "event_rules"

    id: Mapped[int] = mapped_column(primary_key=True, server_default=FetchedValue())
    name: Mapped[str]
    enabled: Mapped[bool] = _defaulted()
    tables: Mapped[list[str]] = mapped_column(ARRAY(Text))
    events: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=FetchedValue())
    conditions: Mapped[Any] = mapped_column(JSONB(none_as_null=True), nullable=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("relay.webhooks.id"))
    action_data: Mapped[Any] = mapped_column(JSONB, server_default=FetchedValue())
    created_at: Mapped[datetime] = _defaulted()
    updated_at: Mapped[datetime] = _defaulted()

    webhook: Mapped[WebhookRow] = relationship(back_populates="rules")


@contextmanager
def session(dsn: str, application_name: str | None = None) -> Iterator[Session]:
    """A session on a connection opened as the rest of relay opens them (relay.db.connect: its
    DatabaseUnavailable says in one line why there is none)."""
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: db_module.connect(dsn, autocommit=False, application_name=application_name),
        poolclass=NullPool,
    )
    try:
        with Session(engine) as db, db.begin():
            yield db
    finally:
        engine.dispose()


def webhook_by_name(db: Session, name: str) -> WebhookRow | None:
    """The webhook called ``name`` (names are unique), or None."""
    return db.scalars(select(WebhookRow).where(WebhookRow.name == name)).one_or_none()


def webhook_to_rotate(db: Session, name: str) -> WebhookRow | None:
    """The webhook called ``name``, its row locked until the transaction ends, or None: a
    rotation keeps the secrets that sign now, so two at once (a form sent twice, two people)
    must not each keep what the other replaced, losing a secret receivers were given."""
    found = select(WebhookRow).where(WebhookRow.name == name).with_for_update()
    return db.scalars(found).one_or_none()


def rule_by_name(db: Session, name: str) -> EventRuleRow | None:
    """The event rule called ``name`` (names are unique), or None."""
    return db.scalars(select(EventRuleRow).where(EventRuleRow.name == name)).one_or_none()


def webhooks(db: Session) -> list[WebhookRow]:
    """Every webhook, enabled or not, by name."""
    return list(db.scalars(select(WebhookRow).order_by(WebhookRow.name)))


def event_rules(db: Session) -> list[EventRuleRow]:
    """Every event rule, enabled or not, by name."""
    return list(db.scalars(select(EventRuleRow).order_by(EventRuleRow.name)))


def rotate_secret(
    db: Session, hook: WebhookRow, secret: str, kept: str, grace: timedelta
) -> datetime | None:
    """Put ``secret`` in ``hook``, ``kept`` (what signs now and keeps signing:
    relay.rules.edits.kept_signing) signing on until ``grace`` from the database's now
    (render/sign.py says how), and return when that is; with no grace, or nothing kept, the
    new one alone signs at once (None)."""
    keep = grace > timedelta() and bool(kept.strip())
    hook.previous_secret = kept if keep else ""
    hook.previous_secret_until = func.now() + grace if keep else None
    hook.secret = secret
    db.flush()
    return hook.previous_secret_until


def forget_previous_secret(hook: WebhookRow) -> None:
    """Stop a rotation's previous secret from signing: an edit of the secret or the signature
    replaces the secrets at once (a previous secret of another scheme could not sign)."""
    hook.previous_secret = ""
    hook.previous_secret_until = None

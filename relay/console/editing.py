"""The console's pages that change webhooks and rules, preview a rule and send a test event.

They check what is given as ``relay webhook add``/``edit`` and ``relay rule add``/``edit``
check it (relay/rules/edits.py: the same functions, the same words; templates compiled in a
render process), write through the same mapped tables (relay/admin.py), and show what
the database's own checks refuse on the form, in one line. Everything runs as the signed-in
role: a role without the right (the console's and the service's roles may not change
webhooks) gets a 403 page, and nothing is changed or recorded. Each change and its audit entry
are one transaction.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import psycopg
from aiohttp import web
from sqlalchemy import orm

from relay import admin
from relay.console import filters
from relay.console.app import Refused
from relay.db import explain
from relay.delivery import coalesced
from relay.delivery.send import Sender
from relay.model import BODY_FORMATS, Change, Webhook
from relay.reasons import reason, scrub
from relay.render.pool import BlockingRenderPool
from relay.render.request import RenderError, secrets_of
from relay.rules import edits, paths, ruleset
from relay.rules import preview as previews
from relay.store import HeldDeliveries, Store

if TYPE_CHECKING:
    from relay.console.app import Console

METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
SIGNATURES = ("netbox", "standard", "none")
ORDERINGS = ("row", "transaction", "key")

SAID = {
    "added": "Added.",
    "changed": "Saved.",
    "enabled": "Enabled: changes match it again.",
    "disabled": "Disabled: no change matches it until it is enabled.",
    "rotated": "Secret rotated (the new one is never shown).",
    "removed": "Removed.",
}
"""What a page says after an action, by the code its redirect names (never text from the
query string)."""


def _text(form: Mapping[str, Any], name: str) -> str:
    """A form's text field, its line breaks made ``\\n`` (browsers send ``\\r\\n``)."""
    value = form.get(name)
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _name(form: Mapping[str, Any], field: str = "name") -> str:
    name = _text(form, field).strip()
    if not name:
        raise edits.Invalid(f"{field}: give a name")
    return name


# -- webhooks --------------------------------------------------------------------------------


def webhook_fields(hook: admin.WebhookRow | None) -> dict[str, str]:
    """A webhook's form, filled with its values as text (the secret never: only whether it
    has one), or the defaults of ``relay webhook add`` for a new one."""
    if hook is None:
        return {
            "name": "",
            "url": "",
            "method": "POST",
            "content-type": "application/json",
            "header": "",
            "body-template": "",
            "signature": "netbox",
            "ssl-verification": "on",
            "ca-file": "",
            "timeout": "10",
            "max-attempts": "",
            "retry-base-seconds": "",
            "retry-max-seconds": "",
            "batch-size": "1",
            "batch-wait-ms": "0",
            "concurrency": "default",
            "rate-limit": "none",
            "dead-after": "default",
            "ordering": "row",
            "ordering-key": "",
            "body-format": "relay",
            "related": "",
            "coalesce": "",
            "enabled": "on",
            "has-secret": "",
        }

    dead_after = hook.dead_after_seconds

    def plain(value: Any) -> str:
        return "" if value is None else str(value)

    return {
        "name": hook.name,
        "url": hook.payload_url,
        "method": hook.http_method,
        "content-type": hook.http_content_type,
        "header": hook.additional_headers or "",
        "body-template": hook.body_template or "",
        "signature": hook.signature,
        "ssl-verification": "on" if hook.ssl_verification else "",
        "ca-file": plain(hook.ca_file_path),
        "timeout": plain(hook.timeout_seconds),
        "max-attempts": plain(hook.max_attempts),
        "retry-base-seconds": plain(hook.retry_base_seconds),
        "retry-max-seconds": plain(hook.retry_max_seconds),
        "batch-size": plain(hook.batch_size),
        "batch-wait-ms": plain(hook.batch_wait_ms),
        "concurrency": "default" if hook.concurrency is None else str(hook.concurrency),
        "rate-limit": "none" if hook.rate_limit is None else f"{hook.rate_limit.normalize():f}",
        "dead-after": "default" if dead_after is None else f"{dead_after}s",
        "ordering": hook.ordering,
        "ordering-key": hook.ordering_key or "",
        "body-format": hook.body_format,
        "related": "" if hook.related is None else _json(hook.related),
        "coalesce": "on" if hook.coalesce_changes else "",
        "enabled": "on" if hook.enabled else "",
        "has-secret": "on" if hook.secret else "",
    }


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _bounded(form: Mapping[str, Any], field: str, kind: type) -> Any:
    """A plain number field within the command line's bounds; None when left empty."""
    text = _text(form, field).strip()
    if not text:
        return None
    return edits.number(text, field, None, kind, edits.BOUNDS[field])


def webhook_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a webhook's form gives, checked as ``relay webhook add`` checks its options
    (raises :class:`edits.Invalid`). The secret is in only when a new one is given."""
    ordering = _text(form, "ordering") or "row"
    key_text = _text(form, "ordering-key")
    steering = edits.steering(
        _text(form, "concurrency").strip() or "default",
        _text(form, "rate-limit").strip() or "none",
        _text(form, "dead-after").strip() or "default",
        ordering,
        key_text if ordering == "key" else None,
        dashes="",
    )
    if ordering != "key":
        steering["ordering_key"] = None
    values: dict[str, Any] = {
        "payload_url": _text(form, "url").strip(),
        "http_method": _text(form, "method"),
        "http_content_type": _text(form, "content-type").strip(),
        "additional_headers": "\n".join(_lines(_text(form, "header"))),
        "body_template": _text(form, "body-template"),
        "signature": _text(form, "signature"),
        "ssl_verification": bool(_text(form, "ssl-verification")),
        "ca_file_path": _text(form, "ca-file").strip() or None,
        "max_attempts": _bounded(form, "max-attempts", int),
        "retry_base_seconds": _bounded(form, "retry-base-seconds", Decimal),
        "retry_max_seconds": _bounded(form, "retry-max-seconds", Decimal),
        "body_format": edits.body_format(_text(form, "body-format"), "body-format"),
        "related": edits.related(_text(form, "related"), "related"),
        "coalesce_changes": bool(_text(form, "coalesce")),
        **steering,
    }
    for field, column, kind in (
        ("timeout", "timeout_seconds", Decimal),
        ("batch-size", "batch_size", int),
        ("batch-wait-ms", "batch_wait_ms", int),
    ):
        number = _bounded(form, field, kind)
        if number is not None:  # empty: the database's default (a new webhook) or as it was
            values[column] = number
    secret = _text(form, "secret")
    if secret.strip():
        values["secret"] = secret
    return values


@dataclass
class Editing:
    """The handlers; ``console`` gives them pages, the signed-in role's connections and the
    audit's address."""

    console: Console

    def _globs(self) -> tuple[str, ...]:
        return self.console.config.template_env_globs

    def _form_page(
        self,
        request: web.Request,
        fields: Mapping[str, str],
        original: str | None,
        problem: str | None,
        code: int = 200,
        said: str | None = None,
        previous: str | None = None,
    ) -> web.Response:
        title = "New webhook" if original is None else f"Webhook {original}"
        return self.console.page(
            request,
            "webhook_form.html",
            code,
            title=title,
            f=fields,
            original=original,
            problem=problem,
            said=said,
            previous=previous,
            methods=METHODS,
            signatures=SIGNATURES,
            orderings=ORDERINGS,
            body_formats=BODY_FORMATS,
        )

    async def webhook_form(self, request: web.Request) -> web.StreamResponse:
        """A webhook's form: empty (``/webhooks/add``) or its values (``?name=``)."""
        name = request.query.get("name")
        if name is None:
            return self._form_page(request, webhook_fields(None), None, None)
        said = SAID.get(request.query.get("said", ""))
        return await self._webhook_page(request, _findable(name, "webhook"), None, said=said)

    async def _webhook_page(
        self,
        request: web.Request,
        name: str,
        problem: str | None,
        code: int = 200,
        said: str | None = None,
    ) -> web.Response:
        """The form of the webhook ``name`` with its values, and until when a rotated secret's
        previous one signs."""

        def read(db: orm.Session, store: Store) -> tuple[dict[str, str], str | None] | None:
            hook = admin.webhook_by_name(db, name)
            if hook is None:
                return None
            until = hook.previous_secret_until
            previous = edits.previous_secret_shown(hook.previous_secret, until) if until else None
            return webhook_fields(hook), previous

        found = await self.console.run_admin(request, read)
        if found is None:
            raise _no("webhook")
        fields, previous = found
        return self._form_page(request, fields, name, problem, code, said, previous)

    async def webhook_rotate(self, request: web.Request) -> web.StreamResponse:
        """Give the webhook a new secret, the previous one signing for the period given, as
        ``relay webhook rotate-secret`` does (the same checks and words). The new secret is
        never shown back, nor written to the audit."""
        form = await request.post()
        name = _findable(_text(form, "name"), "webhook")
        given = _text(form, "secret")
        address = self.console.address(request)
        try:
            period = edits.grace(_text(form, "grace"), "grace")

            def rotate(db: orm.Session, store: Store) -> bool:
                hook = admin.webhook_to_rotate(db, name)
                if hook is None:
                    return False
                secret = edits.new_secret(given, hook.signature, hook.secret)
                kept = edits.kept_signing(hook, secret)
                until = admin.rotate_secret(db, hook, secret, kept, period)
                store.audit(
                    "webhook rotate-secret", name, edits.rotated(until, hook.signature), address
                )
                return True

            found = await self.console.run_admin(request, rotate)
        except edits.Invalid as exc:
            return await self._webhook_page(request, name, str(exc), 400)
        if not found:
            raise _no("webhook")
        raise web.HTTPSeeOther(f"/webhooks/edit?{_query(name=name, said='rotated')}")

    async def webhook_remove(self, request: web.Request) -> web.StreamResponse:
        """Remove a webhook no rule uses (as ``relay webhook remove``; one a rule uses is
        refused in its words). Its deliveries go with it, so the console asks first, counting
        them (a page with a confirming form)."""
        form = await request.post()
        name = _findable(_text(form, "name"), "webhook")
        confirmed = _text(form, "confirm") == "yes"
        asked = _text(form, "id")
        address = self.console.address(request)

        def remove(db: orm.Session, store: Store) -> tuple[int, HeldDeliveries] | bool:
            hook = admin.webhook_by_name(db, name)
            if hook is None:
                return False
            _same_as_asked("webhook", name, hook.id, asked)
            why_not = edits.webhook_in_use(name, [rule.name for rule in hook.rules])
            if why_not is not None:
                raise Refused(409, f"Not removed: {why_not}.")
            held = store.webhook_deliveries(hook.id)
            if not confirmed:
                return hook.id, held
            db.delete(hook)
            db.flush()
            detail = (
                f"removed with {held.pending} pending, {held.failed} failed and "
                f"{held.delivered} delivered deliveries"
            )
            store.audit("webhook remove", name, detail, address)
            return True

        done = await self.console.run_admin(request, remove)
        if done is False:
            raise _no("webhook")
        if isinstance(done, tuple):
            return self.console.page(
                request,
                "confirm_remove.html",
                title=f"Remove webhook {name}?",
                kind="webhook",
                name=name,
                id=done[0],
                held=done[1],
            )
        raise web.HTTPSeeOther(f"/webhooks?{_query(said='removed')}")

    async def webhook_save(self, request: web.Request) -> web.StreamResponse:
        """Add a webhook, or change one (``original`` names it): checked first, templates
        compiled; what the database refuses is said on the form."""
        form = await request.post()
        original = _text(form, "original") or None
        fields = {key: _text(form, key) for key in webhook_fields(None)}
        fields["has-secret"] = _text(form, "has-secret")
        address = self.console.address(request)
        try:
            name = _name(form)
            values = webhook_values(form)
            problem = await _in_thread(
                edits.template_problem,
                name,
                values["payload_url"],
                values["additional_headers"],
                values["body_template"],
                values.get("ordering_key"),
                self._globs(),
            )
            if problem is not None:
                raise edits.Invalid(f"{problem} (nothing was stored: fix the template)")

            def save(db: orm.Session, store: Store) -> bool:
                if original is None:
                    row = admin.WebhookRow(name=name, enabled=bool(_text(form, "enabled")))
                    for key, value in values.items():
                        setattr(row, key, value)
                    db.add(row)
                    db.flush()
                    store.audit("webhook add", name, "added", address)
                    return True
                hook = admin.webhook_by_name(db, original)
                if hook is None:
                    return False
                changed = sorted(
                    key for key, value in values.items() if getattr(hook, key) != value
                )
                if "secret" in values or values["signature"] != hook.signature:
                    admin.forget_previous_secret(hook)
                for key, value in values.items():
                    setattr(hook, key, value)
                hook.name = name
                db.flush()
                if name != original:
                    changed.insert(0, f"name (was {original})")
                detail = "changed: " + (", ".join(changed) or "nothing")
                store.audit("webhook edit", name, detail, address)
                return True

            found = await self.console.run_admin(request, save)
        except edits.Invalid as exc:
            return self._form_page(request, fields, original, str(exc), 400)
        except psycopg.errors.InsufficientPrivilege:
            raise
        except psycopg.Error as exc:
            return self._form_page(request, fields, original, explain(exc)[0], 400)
        if not found:
            raise _no("webhook")
        said = "added" if original is None else "changed"
        raise web.HTTPSeeOther(f"/webhooks/edit?{_query(name=name, said=said)}")

    async def webhook_switch(self, request: web.Request) -> web.StreamResponse:
        """Enable, or disable a webhook: disabling fails its pending deliveries (as ``relay
        webhook disable`` does), so when it has some the console asks first, saying how many
        (a page with a confirming form); pausing keeps them."""
        on = request.match_info["action"] == "enable"
        form = await request.post()
        name = _findable(_text(form, "name"), "webhook")
        confirmed = _text(form, "confirm") == "yes"
        address = self.console.address(request)

        def switch(db: orm.Session, store: Store) -> str | int | None:
            hook = admin.webhook_by_name(db, name)
            if hook is None:
                return None
            if not on and hook.enabled and not confirmed:
                steering = store.webhook_steering(name)
                if steering is not None and steering.pending:
                    return steering.pending
            hook.enabled = on
            db.flush()
            said = "enabled" if on else "disabled"
            store.audit(f"webhook {'enable' if on else 'disable'}", name, said, address)
            return said

        done = await self.console.run_admin(request, switch)
        if done is None:
            raise _no("webhook")
        if isinstance(done, int):
            return self.console.page(
                request,
                "confirm_disable.html",
                title=f"Disable webhook {name}?",
                name=name,
                pending=done,
            )
        raise web.HTTPSeeOther(f"/webhooks/edit?{_query(name=name, said=done)}")

    async def webhook_test(self, request: web.Request) -> web.StreamResponse:
        """Send the webhook a made-up change once, signed as relay run signs, and show what
        came back: nothing is written to the outbox or the deliveries; the audit records it.

        The made-up change: an insert into the table of the webhook's first rule (by name),
        its row every column of that table (tracked) as null, then the JSON object given;
        rendered with that rule's action_data, under a fresh delivery id."""
        form = await request.post()
        name = _findable(_text(form, "name"), "webhook")
        given = _text(form, "row")
        address = self.console.address(request)
        try:
            row = _row(given)
        except edits.Invalid as exc:
            raise Refused(400, str(exc)) from None

        def made(store: Store) -> tuple[ruleset.Rule | None, Webhook | None, Change | None]:
            loaded = ruleset.load(store.conn, everything=True)
            rules = sorted(
                (r for r in loaded.rules if r.webhook.name == name), key=lambda r: r.name
            )
            if not rules:
                hooks = [ruleset.webhook_of(w) for w in store.unused_webhooks()]
                return None, next((h for h in hooks if h.name == name), None), None
            rule = rules[0]
            key = ruleset.table_key(rule.tables[0])
            assert key is not None, "the database checks a rule's table names"
            columns = paths.tables_of(store.tracked_columns()).get(key, {})
            new = {column: None for column, c in columns.items() if not c.excluded} | row
            # May the role record it? Asked before anything is sent: a test the audit cannot
            # record is not made.
            with store.conn.transaction(force_rollback=True):
                store.audit("webhook test", name, "checking the right to record", address)
            change = previews.made_up(key[0], key[1], "insert", new, None, "relay console test")
            return rule, rule.webhook, replace(change, model=loaded.model(*key))

        rule, hook, change = await self.console.run(request, made)
        if hook is None:
            raise _no("webhook")
        if rule is None or change is None:
            raise Refused(
                400,
                f"Webhook {name} has no rule: the test event is a change of its first rule's "
                "table. Add a rule first.",
            )
        delivery_id = str(uuid.uuid4())
        sent, excerpt = None, ""
        try:
            subject = previews.subject(rule, [change])
            rendered = await _in_thread(
                _render, hook, subject, rule.action_data, delivery_id, self._globs()
            )
        except RenderError as exc:
            outcome_text = f"not sent: {reason(str(exc))}"
        else:
            async with Sender() as sender:
                outcome = await sender.send(rendered, hook)
            if outcome.ok:
                outcome_text = f"delivered: HTTP {outcome.status} in {outcome.duration:.3f} s"
            else:
                outcome_text = f"failed: {outcome.error or outcome.status}"
            sent = previews.shown(rendered, hook, self._globs())
            excerpt = scrub(outcome.excerpt, secrets_of(hook, rendered))
        outcome_text = scrub(outcome_text, secrets_of(hook))

        def record(store: Store) -> None:
            with store.conn.transaction():
                store.audit("webhook test", name, outcome_text, address)

        await self.console.run(request, record)
        return self.console.page(
            request,
            "test_event.html",
            title=f"Test event to {name}",
            name=name,
            rule=rule.name,
            table=change.object_type,
            outcome=outcome_text,
            sent=sent,
            excerpt=excerpt,
        )

    # -- rules -------------------------------------------------------------------------------

    async def rules(self, request: web.Request) -> web.StreamResponse:
        """Every rule: its tables, events, conditions, webhook, whether it is enabled."""

        def read(db: orm.Session, store: Store) -> list[dict[str, Any]]:
            return [
                {
                    "name": rule.name,
                    "tables": ", ".join(rule.tables),
                    "events": ", ".join(rule.events),
                    "conditions": _json(rule.conditions) if rule.conditions else "-",
                    "webhook": rule.webhook.name,
                    "enabled": rule.enabled,
                }
                for rule in admin.event_rules(db)
            ]

        lines = await self.console.run_admin(request, read)
        return self.console.page(
            request,
            "rules.html",
            title="Rules",
            rules=lines,
            said=SAID.get(request.query.get("said", "")),
        )

    async def _rule_page(
        self,
        request: web.Request,
        fields: Mapping[str, Any],
        original: str | None,
        problem: str | None,
        code: int = 200,
        said: str | None = None,
    ) -> web.Response:
        def read(db: orm.Session, store: Store) -> tuple[list[str], list[str]]:
            hooks = [hook.name for hook in admin.webhooks(db)]
            if original is None:
                return hooks, []
            loaded = ruleset.load(store.conn, everything=True)
            tables = paths.tables_of(store.tracked_columns())
            mine = [rule for rule in loaded.rules if rule.name == original]
            return hooks, [scrub(str(w)) for w in paths.warnings(mine, tables)]

        hooks, warnings = await self.console.run_admin(request, read)
        return self.console.page(
            request,
            "rule_form.html",
            code,
            title="New rule" if original is None else f"Rule {original}",
            f=fields,
            original=original,
            problem=problem,
            said=said,
            webhooks=hooks,
            events=edits.EVENTS,
            warnings=warnings,
        )

    async def rule_form(self, request: web.Request) -> web.StreamResponse:
        """A rule's form (``?name=``: its values, and ``relay rules check``'s warnings for its
        conditions' paths), or an empty one."""
        name = request.query.get("name")
        if name is None:
            empty = {
                "name": "",
                "webhook": "",
                "table": "",
                "event": [],
                "conditions": "",
                "action-data": "{}",
                "enabled": "on",
            }
            return await self._rule_page(request, empty, None, None)
        _findable(name, "rule")

        def read(db: orm.Session, store: Store) -> dict[str, Any] | None:
            rule = admin.rule_by_name(db, name)
            if rule is None:
                return None
            return {
                "name": rule.name,
                "webhook": rule.webhook.name,
                "table": "\n".join(rule.tables),
                "event": list(rule.events),
                "conditions": "" if rule.conditions is None else _json(rule.conditions),
                "action-data": _json(rule.action_data),
                "enabled": "on" if rule.enabled else "",
            }

        fields = await self.console.run_admin(request, read)
        if fields is None:
            raise _no("rule")
        said = SAID.get(request.query.get("said", ""))
        return await self._rule_page(request, fields, name, None, said=said)

    async def rule_save(self, request: web.Request) -> web.StreamResponse:
        """Add a rule or change one: conditions validated as the relay evaluates them, JSON
        parsed; the database checks the rest (tables, events, action_data)."""
        form = await request.post()
        original = _text(form, "original") or None
        events = [e for e in form.getall("event", []) if isinstance(e, str)]
        webhook, tables = _text(form, "webhook"), _text(form, "table")
        conditions, data = _text(form, "conditions"), _text(form, "action-data")
        enabled = bool(_text(form, "enabled"))
        fields = {
            "name": _text(form, "name"),
            "webhook": webhook,
            "table": tables,
            "event": events,
            "conditions": conditions,
            "action-data": data,
            "enabled": "on" if enabled else "",
        }
        address = self.console.address(request)
        try:
            name = _name(form)
            values = {
                "tables": _lines(tables.replace(",", "\n")),
                "events": edits.events(events, "event"),
                "conditions": edits.rule_conditions(conditions, "conditions"),
                "action_data": edits.action_data(data, "action_data"),
            }
            if not values["events"]:
                raise edits.Invalid("event: tick at least one")

            def save(db: orm.Session, store: Store) -> str | None:
                hook = admin.webhook_by_name(db, webhook)
                if hook is None:
                    raise edits.Invalid(f"webhook: no webhook named {webhook!r}")
                if original is None:
                    row = admin.EventRuleRow(
                        name=name, webhook_id=hook.id, enabled=enabled, **values
                    )
                    db.add(row)
                    db.flush()
                    store.audit("rule add", name, "added", address)
                    return "added"
                rule = admin.rule_by_name(db, original)
                if rule is None:
                    return None
                changed = sorted(k for k, v in values.items() if getattr(rule, k) != v)
                if rule.webhook_id != hook.id:
                    changed.append("webhook")
                for key, value in values.items():
                    setattr(rule, key, value)
                rule.webhook_id = hook.id
                rule.name = name
                db.flush()
                if name != original:
                    changed.insert(0, f"name (was {original})")
                detail = "changed: " + (", ".join(changed) or "nothing")
                store.audit("rule edit", name, detail, address)
                return "changed"

            said = await self.console.run_admin(request, save)
        except edits.Invalid as exc:
            return await self._rule_page(request, fields, original, str(exc), 400)
        except psycopg.errors.InsufficientPrivilege:
            raise
        except psycopg.Error as exc:
            return await self._rule_page(request, fields, original, explain(exc)[0], 400)
        if said is None:
            raise _no("rule")
        raise web.HTTPSeeOther(f"/rules/edit?{_query(name=name, said=said)}")

    async def rule_switch(self, request: web.Request) -> web.StreamResponse:
        """Enable or disable a rule (changes already matched still go)."""
        on = request.match_info["action"] == "enable"
        form = await request.post()
        name = _findable(_text(form, "name"), "rule")
        address = self.console.address(request)

        def switch(db: orm.Session, store: Store) -> str | None:
            rule = admin.rule_by_name(db, name)
            if rule is None:
                return None
            rule.enabled = on
            db.flush()
            said = "enabled" if on else "disabled"
            store.audit(f"rule {'enable' if on else 'disable'}", name, said, address)
            return said

        said = await self.console.run_admin(request, switch)
        if said is None:
            raise _no("rule")
        raise web.HTTPSeeOther(f"/rules/edit?{_query(name=name, said=said)}")

    async def rule_remove(self, request: web.Request) -> web.StreamResponse:
        """Remove a rule (as ``relay rule remove``), after a page that asks: changes no longer
        match it; deliveries it made already stay and still go."""
        form = await request.post()
        name = _findable(_text(form, "name"), "rule")
        confirmed = _text(form, "confirm") == "yes"
        asked = _text(form, "id")
        address = self.console.address(request)

        def remove(db: orm.Session, store: Store) -> tuple[int, str] | None:
            rule = admin.rule_by_name(db, name)
            if rule is None:
                return None
            _same_as_asked("rule", name, rule.id, asked)
            if not confirmed:
                return rule.id, rule.webhook.name
            db.delete(rule)
            db.flush()
            store.audit("rule remove", name, "removed", address)
            return 0, ""

        found = await self.console.run_admin(request, remove)
        if found is None:
            raise _no("rule")
        rule_id, webhook = found
        if webhook:
            return self.console.page(
                request,
                "confirm_remove.html",
                title=f"Remove rule {name}?",
                kind="rule",
                name=name,
                id=rule_id,
                webhook=webhook,
            )
        raise web.HTTPSeeOther(f"/rules?{_query(said='removed')}")

    async def rule_preview(self, request: web.Request) -> web.StreamResponse:
        """What the rule would send for changes of the outbox, as ``relay preview --rule R
        --outbox-id N`` shows it: nothing is sent or written. A batched webhook's batch is its
        changes' ids, space- or comma-separated; a webhook that coalesces gets each change's
        event, as the relay makes it (relay/delivery/coalesced.py)."""
        name = request.query.get("name", "")
        outbox_ids = _change_ids(request.query.get("outbox_id", ""))
        globs = self._globs()

        def look(store: Store) -> dict[str, Any]:
            loaded = ruleset.load(store.conn, everything=True)
            enabled = {r.id for r in ruleset.load(store.conn).rules}
            rule = next((r for r in loaded.rules if r.name == name), None)
            if rule is None:
                raise _no("rule")
            if len(outbox_ids) > rule.webhook.batch_size:
                raise Refused(
                    400,
                    f"Webhook {rule.webhook.name} takes at most {rule.webhook.batch_size} "
                    "change(s) a request (its batch size): give fewer ids.",
                )
            changes, unsent = [], []
            for outbox_id in outbox_ids:
                found: Change | str | None
                if rule.webhook.coalesce_changes:
                    found = coalesced.as_sent(store, outbox_id, loaded.models)
                else:
                    found = store.change(outbox_id, loaded.models)
                if found is None:
                    raise Refused(404, f"No change with id {outbox_id} in relay.outbox.")
                if isinstance(found, str):
                    unsent.append(
                        f"change {outbox_id}: webhook {rule.webhook.name!r} coalesces changes, "
                        f"and {found}"
                    )
                else:
                    changes.append(found)
            sent, unjudged = previews.would_send(rule, changes, rule.id in enabled)
            made = None
            if len(sent) == 1 and rule.webhook.batch_size == 1:
                made = store.delivery_id(sent[0].id, rule.webhook.id)
            return {"rule": rule, "sent": sent, "unsent": unsent + unjudged, "made": made}

        found = await self.console.run(request, look)
        rule: ruleset.Rule = found["rule"]
        shown, problem = None, None
        if found["sent"]:
            try:
                rendered = await _in_thread(
                    _render,
                    rule.webhook,
                    previews.subject(rule, found["sent"]),
                    rule.action_data,
                    found["made"] or previews.PREVIEW_ID,
                    globs,
                )
                shown = previews.shown(rendered, rule.webhook, globs)
            except RenderError as exc:
                problem = f"would fail: {reason(str(exc))}"
        return self.console.page(
            request,
            "preview.html",
            title=f"Preview of rule {name}, change {' '.join(map(str, outbox_ids))}",
            rule=rule,
            unsent=found["unsent"],
            shown=shown,
            problem=problem,
            made=found["made"],
            preview_id=previews.PREVIEW_ID,
        )


MAX_PREVIEWED = 1000
"""The most change ids one preview takes (no webhook's batch is larger: check_webhook)."""


def _change_ids(text: str) -> list[int]:
    """The ids of changes to preview, in order and once each, from ``12`` or ``12 13, 14``;
    a 400 page for anything else."""
    words = text.replace(",", " ").split()
    if not words or len(words) > MAX_PREVIEWED:
        raise Refused(400, "Give the id of a change in relay.outbox (a whole number), or several.")
    ids = [filters.whole_number(word) for word in words]
    if None in ids:
        raise Refused(400, "Give the id of a change in relay.outbox (a whole number), or several.")
    return sorted({i for i in ids if i is not None})


def _render(
    hook: Webhook, subject: Any, action_data: Any, delivery_id: str, globs: tuple[str, ...]
) -> Any:
    """The request relay run would make, rendered in a render process as it renders."""
    with BlockingRenderPool(globs) as renders:
        return renders.request(
            hook, subject, action_data, timestamp=int(time.time()), delivery_id=delivery_id
        )


def _row(text: str) -> dict[str, Any]:
    """The test event's given columns: a JSON object, read as relay reads rows."""
    if not text.strip():
        return {}
    row = edits.json_value(text, "row")
    if not isinstance(row, dict):
        raise edits.Invalid('row must be a JSON object of column values, e.g. {"id": 9}')
    return row


async def _in_thread(work: Any, *args: Any) -> Any:
    return await asyncio.to_thread(work, *args)


def _query(**values: str) -> str:
    return urlencode(values)


def _findable(name: str, kind: str) -> str:
    """``name``, or the page says there is no such webhook or rule: PostgreSQL's text holds no
    NUL, and psycopg refuses to send one (names are refused control characters anyway)."""
    if "\x00" in name:
        raise _no(kind)
    return name


def _no(kind: str) -> Exception:
    return Refused(404, f"No such {kind}.")


def _same_as_asked(kind: str, name: str, found: int, asked: str) -> None:
    """Refuse (409) to remove a webhook or rule other than the one the confirm page named
    (``asked``: its id, empty when no page asked): it was removed, and another was added under
    its name, since the page was shown. The person has not seen that one."""
    if asked and filters.whole_number(asked) != found:
        raise Refused(
            409,
            f"Not removed: the {kind} {name} that the page asked about was removed since, and "
            f"another was added under its name; open that {kind} to look at it first.",
        )


def add_routes(app: web.Application, console: Console) -> None:
    """The pages of this module, after step one's."""
    editing = Editing(console)
    app.router.add_get("/webhooks/add", editing.webhook_form)
    app.router.add_get("/webhooks/edit", editing.webhook_form)
    app.router.add_post("/webhooks/save", editing.webhook_save)
    app.router.add_post("/webhooks/{action:enable|disable}", editing.webhook_switch)
    app.router.add_post("/webhooks/test", editing.webhook_test)
    app.router.add_post("/webhooks/rotate-secret", editing.webhook_rotate)
    app.router.add_post("/webhooks/remove", editing.webhook_remove)
    app.router.add_get("/rules", editing.rules)
    app.router.add_get("/rules/add", editing.rule_form)
    app.router.add_get("/rules/edit", editing.rule_form)
    app.router.add_post("/rules/save", editing.rule_save)
    app.router.add_post("/rules/{action:enable|disable}", editing.rule_switch)
    app.router.add_post("/rules/remove", editing.rule_remove)
    app.router.add_get("/rules/preview", editing.rule_preview)

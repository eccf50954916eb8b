"""A change and a webhook to render, and a template no sandbox check can stop in time."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.model import Change, Webhook, loads

CHANGE = Change.of(
    id=41,
    schema_name="public",
    table_name="orders",
    op="update",
    old=loads('{"id": 7, "status": "new", "total": 120.00, "note": "a\\r\\nX-Evil: 1"}'),
    new=loads('{"id": 7, "status": "paid", "total": 120.00, "note": "a\\r\\nX-Evil: 1"}'),
    pk={"id": 7},
    username="alice",
    request_id="req-1",
    txid="812",
    created_at=datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC),
)


HOOK = Webhook(id=3, name="orders", payload_url="https://example.test/hook", secret="s3cret")


STUCK = "{{ ([[0]] * 200000)|sum(start=[])|length }}"
"""One C call that no sandbox check sees (a sum of lists, quadratic), its values all under the
limits: minutes on the development machine, where the old sandbox said "stopped after 1 s" only
once it had finished."""

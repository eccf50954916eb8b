"""What a webhook that coalesces gets for one recorded change, asked outside the running relay
(``relay preview`` and the console's preview), so that both say the same.

The relay groups a transaction's changes when it fans them out and stores the grouping
(0031_coalesce.sql); a change not fanned out yet has no grouping stored, so it is grouped here
as fan-out will group it (:func:`relay.delivery.coalesce.group`), from the same rows.
"""

from __future__ import annotations

from dataclasses import replace

from relay.delivery import coalesce
from relay.model import Change
from relay.store import Models, Store


def as_sent(store: Store, outbox_id: int, models: Models) -> Change | str | None:
    """The change ``outbox_id`` as its group's event (the first change's op and old image,
    its own new image), or why it makes no event of its own (a sentence), or None when there
    is no such change."""
    change = store.change(outbox_id, models, coalesce=True)
    if change is None:
        return None
    into, cancelled = store.group(outbox_id)
    rows = store.transaction_changes(outbox_id)
    made = None
    if rows:
        grouping = coalesce.group(rows)
        made = next((row for row in grouping.events if row["id"] == outbox_id), None)
        into = grouping.into.get(outbox_id)
        cancelled = outbox_id in grouping.grouped and made is None
    if into is not None:
        return f"it is in the event of change {into} (preview change {into} instead)"
    if cancelled:
        return "its row was created and deleted in its transaction"
    if made is None or made["coalesced_from"] is None:
        return change
    first = store.change(made["coalesced_from"], models)
    old = None if made["op"] == "insert" or first is None else first.old_json
    return replace(change, op=made["op"], old_json=old)

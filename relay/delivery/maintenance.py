"""The sweep: what a relay does every lease period besides delivering.

It finishes changes a relay that died left unfinished (see ``unfinished_changes``), regenerates
capture functions a table's DDL left behind (when no notification said so: writers can turn
NOTIFY off), and deletes finished changes and attempts past their retention, a batch at a time so
that no lock is held long, and a few batches per sweep so that matching new changes (on the same
connection) never waits long. ``relay purge`` runs the same purge loop to the end.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from relay.settings import Settings
from relay.store import AsyncStore

PURGE_BATCH = 5_000
PURGE_BATCHES_PER_SWEEP = 4
UNFINISHED_PER_SWEEP = 10_000

Delete = Callable[[int], Awaitable[int]]
"""Deletes up to that many rows past their retention; how many it deleted."""


async def purge(
    delete: Delete,
    batch: int,
    *,
    batches: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, bool]:
    """Delete in batches until one comes back short, or after ``batches`` of them: how many
    rows went, and whether more are left."""
    deleted = done = 0
    while batches is None or done < batches:
        count = await delete(batch)
        deleted += count
        done += 1
        if progress is not None:
            progress(count)
        if count < batch:
            return deleted, False
    return deleted, True


async def sweep(store: AsyncStore, relay_id: str, settings: Settings) -> bool:
    """One sweep; True when a purge has more to do (come back in a second, not a period)."""
    await store.refresh_capture()
    await store.relay_seen(relay_id)
    ids = await store.unfinished_changes(UNFINISHED_PER_SWEEP)
    if ids:
        await store.finish_changes(ids)
    behind = False
    for delete, days in (
        (store.purge_changes, settings.retention_days),
        (store.purge_attempts, settings.attempt_retention_days),
    ):
        if days:
            batch = functools.partial(delete, days * 86_400)
            _, more = await purge(batch, PURGE_BATCH, batches=PURGE_BATCHES_PER_SWEEP)
            behind = behind or more
    return behind

"""The purge loop relay run and relay purge share, on its own: batches until one is short."""

from __future__ import annotations

import asyncio

from relay.delivery.maintenance import Delete, purge


def deleting(rows: int) -> tuple[list[int], Delete]:
    asked: list[int] = []
    left = [rows]

    async def delete(limit: int) -> int:
        asked.append(limit)
        count = min(limit, left[0])
        left[0] -= count
        return count

    return asked, delete


def test_purge_runs_to_the_end_and_reports_progress() -> None:
    asked, delete = deleting(12)
    seen: list[int] = []
    deleted, more = asyncio.run(purge(delete, 5, progress=seen.append))
    assert (deleted, more) == (12, False)
    assert seen == [5, 5, 2]
    assert asked == [5, 5, 5]


def test_a_sweep_stops_after_its_batches_and_says_more_is_left() -> None:
    asked, delete = deleting(100)
    assert asyncio.run(purge(delete, 10, batches=4)) == (40, True)
    assert len(asked) == 4
    _, exact = deleting(20)
    assert asyncio.run(purge(exact, 10, batches=4)) == (20, False)

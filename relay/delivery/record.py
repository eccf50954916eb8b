"""Writing attempts and outcomes to the database, many per statement.

At thousands of deliveries a second, a round trip per outcome would make the database
connection, not the receivers, the limit. A :class:`Recorder` owns one connection and writes
whatever finished while its previous write was under way in one ``record_outcomes`` statement
(and one ``finish_changes``), so batches grow with the load and a lone outcome waits for nobody.
A delivery's task waits until its outcome is written: the slot it holds (see the worker's
per-webhook limit) is only free once the database agrees.

One outcome the database refuses must not take its batch with it: a batch that fails while the
connection is fine is written again one outcome at a time, and an outcome refused on its own is
written once more without its details (error text, response excerpt, the request as sent), so
the delivery still ends as it did. Only a lost connection fails the whole batch (those leases
expire and the deliveries are attempted again).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import structlog

from relay.db import first_line
from relay.delivery.send import Outcome
from relay.reasons import describe, reason
from relay.store import AsyncStore, Claimed, DeadPause

log = structlog.get_logger("relay.delivery.record")

BATCH_LIMIT = 1000
DEAD_AFTER_SECONDS = 432_000.0
"""RELAY_DEAD_AFTER_SECONDS' default, for ``record_outcomes`` run without a Recorder (tests)."""

OnDead = Callable[[DeadPause], None]
"""Told of each webhook the recorder has just paused as dead (the worker logs and counts it)."""


@dataclass(frozen=True)
class Result:
    """What became of one attempt: the delivery's new status, and when to retry if pending."""

    outbox_id: int
    webhook_id: int
    attempt: int
    status: str
    retry_in: float
    outcome: Outcome
    counted: bool = True
    """False for a delivery given back unsent: no attempt is logged or counted."""
    batch_id: int | None = None
    """The batch the attempt carried it in, None when it went alone."""
    unbatch: bool = False
    """It leaves its batch unsent (with ``counted`` False), to go in a later batch."""
    replay: bool = False
    """The delivery was made pending again by ``relay replay``: the attempt is logged as one."""

    @classmethod
    def of(
        cls,
        item: Claimed,
        status: str,
        retry_in: float,
        outcome: Outcome,
        *,
        counted: bool = True,
        unbatch: bool = False,
    ) -> Result:
        """What became of an attempt at ``item``. The delivery, attempt number, batch and
        replay flag come from the claim, so no caller can mix them up."""
        return cls(
            item.outbox_id,
            item.webhook_id,
            item.number,
            status,
            retry_in,
            outcome,
            counted,
            item.batch_id,
            unbatch,
            item.replay,
        )


def parameters(results: Sequence[Result], relay_id: str) -> dict[str, Any]:
    """``record_outcomes``' parameters: the outcomes as one JSON array (orjson writes it in a
    fraction of the time psycopg takes to adapt ten arrays, and the server unpacks it once)."""
    outcomes = [
        (
            r.outbox_id,
            r.webhook_id,
            r.attempt,
            round(r.outcome.duration * 1000),
            r.outcome.status,
            None if r.outcome.error is None else reason(r.outcome.error),
            r.outcome.excerpt,
            r.status,
            r.retry_in,
            r.counted,
            r.batch_id,
            r.unbatch,
            r.replay,
            _endpoint(r),
            r.outcome.details,
        )
        for r in results
    ]
    return {
        "relay_id": relay_id,
        "outcomes": orjson.dumps(outcomes).decode(),
        "dead_after": DEAD_AFTER_SECONDS,
    }


def _endpoint(result: Result) -> str | None:
    """What the attempt says of the endpoint's health: 'ok', 'failed' (sent, or tried: a refused
    connection counts), or None for a request that never left (a template of ours, a rule
    removed, a delivery put back while the breaker holds its webhook)."""
    if not result.counted:
        return None
    if result.outcome.ok:
        return "ok"
    return "failed" if result.outcome.sent else None


class RecorderClosed(psycopg.OperationalError):
    """The recorder's connection failed: this outcome was not written (its lease will expire
    and the delivery will be attempted again)."""


class NotRecorded(Exception):
    """The database refused this outcome even without its details; its lease will expire and
    the delivery will be attempted again."""


class Recorder:
    """Writes outcomes in batches on the connection :meth:`run` is given; each delivery's task waits
    in :meth:`record` until its own outcome is written."""

    def __init__(
        self,
        relay_id: str,
        *,
        dead_after: float = DEAD_AFTER_SECONDS,
        on_dead: OnDead | None = None,
    ) -> None:
        self.relay_id = relay_id
        self.dead_after = dead_after
        """RELAY_DEAD_AFTER_SECONDS: for a webhook whose dead_after_seconds is NULL."""
        self.on_dead = on_dead
        self._waiting: list[tuple[Result, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._closed: BaseException | None = None

    async def record(self, result: Result) -> None:
        """Return once ``result`` is written; raise :class:`RecorderClosed` if it never will be."""
        if self._closed is not None:
            raise RecorderClosed(str(self._closed))
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((result, done))
        self._ready.set()
        await done

    async def run(self, store: AsyncStore) -> None:
        """Write batches until cancelled or the connection fails (then raise its error, after
        failing every outcome still waiting)."""
        try:
            while True:
                await self._ready.wait()
                batch = self._waiting[:BATCH_LIMIT]
                del self._waiting[:BATCH_LIMIT]
                if not self._waiting:
                    self._ready.clear()
                await self._write(store, batch)
        except BaseException as exc:
            self._close(exc)
            raise

    async def _write(
        self,
        store: AsyncStore,
        batch: list[tuple[Result, asyncio.Future[None]]],
    ) -> None:
        try:
            dead = await store.record_outcomes(self._parameters([result for result, _ in batch]))
        except Exception as exc:
            if _lost(store):
                self._fail(batch, exc)
                raise
            await self._one_by_one(store, batch, exc)
        except BaseException as exc:
            self._fail(batch, exc)
            raise
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            if dead:
                await self._pause_dead(store, dead)
        # A change is finished once its last outcome is written; should this fail, the
        # relay's sweep finishes it later (unfinished_changes).
        ids = [result.outbox_id for result, _ in batch]
        try:
            await store.finish_changes(ids)
        except Exception as exc:
            if _lost(store):
                raise
            log.error("could not finish changes", outbox_ids=ids[:10], error=describe(exc))

    def _parameters(self, results: Sequence[Result]) -> dict[str, Any]:
        return {**parameters(results, self.relay_id), "dead_after": self.dead_after}

    async def _pause_dead(self, store: AsyncStore, ids: list[int]) -> None:
        """Pause the webhooks whose endpoint has failed for longer than their dead_after (a
        statement of its own, run only then: it wakes every relay to reload its rules). A
        failure here is logged and tried again with the next failed outcome."""
        try:
            paused = await store.pause_dead(ids, self.dead_after)
        except Exception as exc:
            if _lost(store):
                raise
            log.error("could not pause dead webhooks", webhook_ids=ids, error=describe(exc))
            return
        for one in paused:
            if self.on_dead is not None:
                self.on_dead(one)

    async def _one_by_one(
        self,
        store: AsyncStore,
        batch: list[tuple[Result, asyncio.Future[None]]],
        first: Exception,
    ) -> None:
        """Write a refused batch's outcomes one at a time, each without its details if it is
        refused alone; the connection failing meanwhile raises."""
        log.warning("outcomes refused, writing them one by one", error=describe(first))
        try:
            for result, done in batch:
                refused = first if len(batch) == 1 else await self._try(store, result)
                if refused is not None:
                    refused = await self._try(store, _without_details(result, refused))
                if done.done():
                    continue  # its task was cancelled meanwhile
                if refused is None:
                    done.set_result(None)
                else:
                    log.error(
                        "outcome not recorded", outbox_id=result.outbox_id, error=describe(refused)
                    )
                    done.set_exception(NotRecorded(describe(refused)))
        except BaseException as exc:
            self._fail(batch, exc)
            raise

    async def _try(self, store: AsyncStore, result: Result) -> Exception | None:
        """Write one outcome: None when written, the error when the database refused it; a
        lost connection raises."""
        try:
            dead = await store.record_outcomes(self._parameters([result]))
        except Exception as exc:
            if _lost(store):
                raise
            return exc
        if dead:
            await self._pause_dead(store, dead)
        return None

    def _close(self, exc: BaseException) -> None:
        self._closed = exc
        self._fail(self._waiting, exc)
        self._waiting.clear()

    @staticmethod
    def _fail(batch: list[tuple[Result, asyncio.Future[None]]], exc: BaseException) -> None:
        for _, done in batch:
            if not done.done():
                done.set_exception(RecorderClosed(_describe(exc)))


def _lost(store: AsyncStore) -> bool:
    """The connection is gone (an error on a live one is the statement's fault)."""
    return store.conn.closed or store.conn.broken


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "the relay stopped before this outcome was written"
    return first_line(exc)


def _without_details(result: Result, refused: Exception | None) -> Result:
    """The outcome with only what cannot be refused: status, timing, and why the details are
    missing."""
    why = f"details not recorded ({describe(refused) if refused else 'refused'})"
    error = why if result.outcome.error is None else f"{result.outcome.error}; {why}"
    outcome = dataclasses.replace(result.outcome, error=reason(error), excerpt="", details=None)
    return dataclasses.replace(result, outcome=outcome)

"""A webhook's rate limit across relays: the request slots every relay takes from one row.

The executor waits here, once a request is rendered and right before it is sent (a batch is one
request, one slot). This is the only part of sending that needs the database, so it sits apart
and the executor runs without one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg

from relay.db import AConn
from relay.delivery import claim
from relay.delivery.executor import SlotTooFar
from relay.model import Webhook
from relay.store import AsyncStore


class Pacing:
    """The slots of one relay's session. ``connect`` opens the connection that takes them
    (take_slot), at the first request of a session to a webhook with a rate limit."""

    def __init__(self, connect: Callable[[], Awaitable[AConn]], lease_seconds: float) -> None:
        self._connect = connect
        self.lease_seconds = lease_seconds
        self._conn: AConn | None = None
        self._opened = asyncio.Lock()

    async def pace(self, hook: Webhook) -> None:
        """Wait for the request's slot when the webhook has a rate limit: every relay takes
        slots from the same row (take_slot), 1/rate_limit apart (RATE_SPACING of it), so the
        limit holds across relays. SlotTooFar when it comes later than half a lease."""
        if hook.rate_limit is None:
            return
        async with self._opened:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            conn = self._conn
        try:
            wait = await AsyncStore(conn).take_slot(hook.id, claim.RATE_SPACING)
        except psycopg.OperationalError:
            await self.close()  # the next request connects again
            raise
        if wait > self.lease_seconds / 2:
            raise SlotTooFar(wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Close the connection, if one was opened (at a session's end)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

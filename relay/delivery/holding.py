"""How many bytes of changes a relay holds, so that memory follows bytes rather than counts.

Twenty 50 MB rows in a batch of a thousand changes once took a relay to 7 GB. Now everything
that brings row images into the process asks first: the claim query takes only deliveries whose
changes fit in the room left (sql/queries/claim.sql, claim_deliveries), and fan-out reserves the
room for the rows that rules with conditions must read. Amounts are bytes of the changes' JSON
(``change_bytes``); each stands for HELD_PER_CHANGE_BYTE times as much memory (the text and the
body made from it), so the capacity is RELAY_MAX_HELD_BYTES divided by that.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.settings import HELD_PER_CHANGE_BYTE, Settings


class Holding:
    """The bytes of changes one relay holds, in total and per webhook: claims take at most
    :attr:`room`, fan-out waits in :meth:`reserve`."""

    def __init__(self, settings: Settings) -> None:
        self.capacity = settings.max_held_bytes // HELD_PER_CHANGE_BYTE
        self.per_webhook = self.capacity // 2
        """No webhook holds more: a slow receiver of large changes leaves the others half."""
        self.total = 0
        self.by_webhook: dict[int, int] = defaultdict(int)
        self._wanted = 0
        """Bytes fan-out waits for: claims leave them free, so fan-out is never starved."""
        self._released = asyncio.Event()

    @property
    def room(self) -> int:
        """What claims may take now."""
        return max(self.capacity - self.total - self._wanted, 0)

    def take(self, webhook_id: int, nbytes: int) -> None:
        """Count a claimed delivery's bytes against its webhook; whoever takes them must
        :meth:`give_back` the same amount when the delivery's task ends."""
        self.total += nbytes
        self.by_webhook[webhook_id] += nbytes

    def give_back(self, webhook_id: int, nbytes: int) -> None:
        """Release what :meth:`take` counted, and wake fan-out if it waits for room in
        :meth:`reserve`."""
        self.total -= nbytes
        self.by_webhook[webhook_id] -= nbytes
        self._released.set()

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` for the duration, once they fit (callers ask for at most half the
        capacity: see plan.groups)."""
        self._wanted += nbytes
        try:
            while self.total + nbytes > self.capacity:
                self._released.clear()
                await self._released.wait()
        finally:
            self._wanted -= nbytes
        self.total += nbytes
        try:
            yield
        finally:
            self.total -= nbytes
            self._released.set()

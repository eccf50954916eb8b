"""Keeping a process's rules current without a restart.

Every change to relay.webhooks or relay.event_rules is announced on channel ``relay_rules``
(sql/functions/rules.sql). A :class:`RuleWatcher` listens on its own connection and
reloads the whole rule set when told; a burst of changes causes one reload, a short moment after
the burst began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import psycopg

from relay.db import AConn, aconnect
from relay.rules import ruleset
from relay.rules.ruleset import RuleSet
from relay.store import AsyncStore


class RuleWatcher:
    """Keeps :attr:`ruleset` current for one process, on a connection of its own: :meth:`run`
    listens and reloads; ``loaded`` is set once the first load is done."""

    def __init__(
        self,
        dsn: str,
        *,
        settle_seconds: float = 0.05,
        application_name: str = "relay",
        settings: Mapping[str, str] | None = None,
        on_load: Callable[[RuleSet], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._settings = settings
        """Its connection's name and settings are its process's (relay.db.aconnect), so that it
        opens its sessions as the worker opens its own."""
        self._settle = settle_seconds
        self._on_load = on_load
        """Called with each rule set taken: the worker learns the secrets to mask from it."""
        self.ruleset = RuleSet([])
        self.version = 0
        """relay.rules_version as read just before the rules were (0006)."""
        self.loaded = asyncio.Event()

    async def run(self) -> None:
        """Listen and reload until cancelled, reconnecting with backoff when the connection is
        lost (and reloading then, since notices sent meanwhile were missed)."""
        backoff = 0.5
        while True:
            try:
                await self._watch()
            except psycopg.OperationalError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _watch(self) -> None:
        """The first load happens once listening, so that no change made in between is
        missed."""
        conn = await aconnect(
            self._dsn, application_name=self._application_name, settings=self._settings
        )
        async with conn:
            await AsyncStore(conn).listen("relay_rules")
            await self._reload(conn)
            while True:
                # Leave the notifies() generator before querying: the connection serves one
                # thing at a time. Notices that arrive meanwhile are drained, not lost: the
                # reload that follows reads everything committed so far.
                async for _ in conn.notifies(stop_after=1):
                    pass
                await asyncio.sleep(self._settle)
                async for _ in conn.notifies(timeout=0):
                    pass
                await self._reload(conn)

    async def catch_up(self, conn: AConn, version: int) -> None:
        """Reload now, on ``conn``, if the rules held are older than ``version``: a caller
        about to match changes must not wait for the notification."""
        if version > self.version:
            await self._reload(conn)

    async def _reload(self, conn: AConn) -> None:
        store = AsyncStore(conn)
        version = await store.rules_version()
        loaded = ruleset.of_rows(await store.rule_rows(), await store.models())
        if version >= self.version:  # a slower, older reload must not win
            self.ruleset, self.version = loaded, version
            if self._on_load is not None:
                self._on_load(loaded)
        self.loaded.set()

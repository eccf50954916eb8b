"""A running process sees rule changes within a second, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from relay.db import Conn
from relay.rules.watch import RuleWatcher
from support.hooks import add_rule, add_webhook


@pytest.mark.timing
def test_rule_changes_reach_a_running_watcher_within_a_second(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> list[float]:
        watcher = RuleWatcher(relay_dsn)
        task = asyncio.create_task(watcher.run())
        await asyncio.wait_for(watcher.loaded.wait(), 5)
        assert watcher.ruleset.rules == []
        delays = []

        async def until(predicate: Callable[[], bool]) -> None:
            start = time.monotonic()
            while not predicate():
                assert time.monotonic() - start < 1.0, "rules were not reloaded within a second"
                await asyncio.sleep(0.01)
            delays.append(time.monotonic() - start)

        hook = add_webhook(rconn)
        add_rule(rconn, hook, name="first")
        await until(lambda: [r.name for r in watcher.ruleset.rules] == ["first"])
        rconn.execute("UPDATE relay.webhooks SET payload_url = 'https://example.test/v2'")
        await until(lambda: watcher.ruleset.rules[0].webhook.payload_url.endswith("/v2"))
        rconn.execute("UPDATE relay.event_rules SET enabled = false")
        await until(lambda: watcher.ruleset.rules == [])
        task.cancel()
        return delays

    delays = asyncio.run(scenario())
    assert len(delays) == 3 and max(delays) < 1.0

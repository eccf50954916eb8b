"""Random interleavings of writes, key moves, replays, retries, SQL resets and restarts, with a
receiver that fails and stalls: everything drains, and per-row order holds at the receiver
(tests/support/interleave.py; bench/interleave.py runs more seeds)."""

from __future__ import annotations

import asyncio

import pytest

from support.interleave import interleave


@pytest.mark.parametrize("seed", [1, 2, 105])
def test_every_interleaving_drains_in_order(relay_dsn: str, seed: int) -> None:
    """Seed 2 found a failed change sent again after its row's later change (the receiver
    ended on the older image), seed 105 a relay that did not stop when restarted."""
    run = asyncio.run(interleave(relay_dsn, seed, steps=20))
    problems = run.problems()
    assert not problems, "\n".join([f"seed {seed}:", *problems, "steps:", *run.steps])

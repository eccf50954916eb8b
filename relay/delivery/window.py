"""Where fan-out has looked in the outbox: a position, and the gaps running transactions left."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.store import FanOutBatch


@dataclass(frozen=True)
class Gap:
    """Ids ``lo``..``hi`` were not visible when fan-out passed them, while transactions ``xids``
    were running: an id below a visible one can only belong to one of those (capture takes ids
    after the transaction has its own), or to none if its transaction rolled back."""

    lo: int
    hi: int
    xids: tuple[int, ...]


@dataclass(frozen=True)
class Window:
    """Every id up to ``scanned_to`` has been fanned out, except those in ``gaps``."""

    scanned_to: int
    gaps: tuple[Gap, ...] = ()

    def parameters(self) -> dict[str, Any]:
        """For ``move_fan_out_window``: a row for each gap and transaction."""
        rows = [(g.lo, g.hi, x) for g in self.gaps for x in g.xids]
        return {
            "scanned_to": self.scanned_to,
            "los": [lo for lo, _, _ in rows],
            "his": [hi for _, hi, _ in rows],
            "xids": [x for _, _, x in rows],
        }


def advance(
    window: Window, start: int, ids: Sequence[int], running: Iterable[int], full: bool
) -> Window:
    """The window after a pass that read ``ids`` (ascending: every visible id after ``start``,
    then fresh ones in ripe gaps and re-queued ones, cut to the batch size when ``full``) while
    ``running`` transactions were in progress. ``start`` below ``window.scanned_to`` means the
    outbox's ids started again (TRUNCATE ... RESTART IDENTITY): the old gaps mean nothing then."""
    active = frozenset(running)
    seen = [i for i in ids if i > start]
    scanned_to = seen[-1] if seen else start
    gaps: list[Gap] = []
    old = window.gaps if start >= window.scanned_to else ()
    for gap in old:
        still = tuple(x for x in gap.xids if x in active)
        if still == gap.xids or (full and ids and gap.hi > ids[-1]):
            gaps.append(gap)  # not read this pass, or not to its end
        elif still:
            gaps.append(Gap(gap.lo, gap.hi, still))
    if active:
        xids = tuple(sorted(active))
        previous = start
        for i in seen:
            if i > previous + 1:
                gaps.append(Gap(previous + 1, i - 1, xids))
            previous = i
    return Window(scanned_to, tuple(sorted(gaps, key=lambda g: g.lo)))


def moved(batch: FanOutBatch) -> tuple[Window, Window]:
    """The window before and after a look at the outbox."""
    before = Window(
        batch.stored_to, tuple(Gap(g["lo"], g["hi"], tuple(g["xids"])) for g in batch.gaps)
    )
    ids = [row["id"] for row in batch.rows]
    return before, advance(before, batch.scanned_to, ids, batch.running, batch.full)

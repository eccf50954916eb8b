"""Where fan-out has looked in the outbox: a position, and the gaps running transactions left."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.store import FanOutBatch


UNLISTED_LIMIT = 10_000
"""The most transaction ids a gap is written with beyond those its snapshot lists (see
:func:`advance`); past it, the window stops before the gap and the ids are read again."""


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
    window: Window,
    start: int,
    ids: Sequence[int],
    running: Iterable[int],
    full: bool,
    *,
    xmax: int | None = None,
    newest: int | None = None,
) -> Window:
    """The window after a pass that read ``ids`` (ascending: every visible id after ``start``,
    then fresh ones in ripe gaps and re-queued ones, cut to the batch size when ``full``) while
    ``running`` transactions were in progress. ``start`` below ``window.scanned_to`` means the
    outbox's ids started again (TRUNCATE ... RESTART IDENTITY): the old gaps mean nothing then.

    A snapshot lists the transactions running below its ``xmax``, which is one past the newest
    that had *ended*, not the newest that had begun: those from ``xmax`` on are running too, and
    unlisted. A transaction that took an id below a visible one began before the snapshot, so
    its id is below ``newest``, one the fan-out's own transaction took after the snapshot: a new
    gap waits for the listed ones and for every id from ``xmax`` to ``newest``. (Missing that,
    a change whose transaction began just after the last one to end was never fanned out.)"""
    active = frozenset(running)
    seen = [i for i in ids if i > start]
    scanned_to = seen[-1] if seen else start

    def still_running(xid: int) -> bool:
        return xid in active or (xmax is not None and xid >= xmax)

    gaps: list[Gap] = []
    old = window.gaps if start >= window.scanned_to else ()
    for gap in old:
        still = tuple(x for x in gap.xids if still_running(x))
        if still == gap.xids or (full and ids and gap.hi > ids[-1]):
            gaps.append(gap)  # not read this pass, or not to its end
        elif still:
            gaps.append(Gap(gap.lo, gap.hi, still))
    missing = _missing(start, seen)
    unlisted = range(xmax, newest) if xmax is not None and newest is not None else range(0)
    if missing and len(unlisted) > UNLISTED_LIMIT:
        return Window(missing[0][0] - 1, tuple(sorted(gaps, key=lambda g: g.lo)))
    owners = tuple(sorted(active | set(unlisted)))
    if owners:
        gaps.extend(Gap(lo, hi, owners) for lo, hi in missing)
    return Window(scanned_to, tuple(sorted(gaps, key=lambda g: g.lo)))


def _missing(start: int, seen: Sequence[int]) -> list[tuple[int, int]]:
    """The runs of ids (first, last) that ``seen`` (ascending, after ``start``) skips."""
    return [(i + 1, j - 1) for i, j in zip([start, *seen], seen, strict=False) if j > i + 1]


def opens_gaps(batch: FanOutBatch) -> bool:
    """Whether the look found ids missing after where it started: the window then needs the
    newest transaction id (see :func:`advance`)."""
    start = batch.scanned_to
    return bool(_missing(start, [row["id"] for row in batch.rows if row["id"] > start]))


def moved(batch: FanOutBatch, newest: int | None = None) -> tuple[Window, Window]:
    """The window before and after a look at the outbox; ``newest`` is a transaction id taken
    after the look's snapshot, needed when it :func:`opens_gaps`."""
    before = Window(
        batch.stored_to, tuple(Gap(g["lo"], g["hi"], tuple(g["xids"])) for g in batch.gaps)
    )
    ids = [row["id"] for row in batch.rows]
    after = advance(
        before, batch.scanned_to, ids, batch.running, batch.full, xmax=batch.xmax, newest=newest
    )
    return before, after

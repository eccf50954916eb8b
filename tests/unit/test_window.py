"""Fan-out's window alone (relay/delivery/window.py): which ids wait for the transactions still
running, and when a gap is read again or forgotten; no database."""

from __future__ import annotations

from relay.delivery.window import Gap, Window, advance


def test_ids_missing_below_a_seen_one_wait_for_the_transactions_running() -> None:
    moved = advance(Window(10), 10, [11, 14, 15, 18], running=[7, 9], full=False)
    assert moved == Window(18, (Gap(12, 13, (7, 9)), Gap(16, 17, (7, 9))))
    # With nothing running, a missing id belongs to a transaction that rolled back.
    assert advance(Window(10), 10, [11, 14], running=[], full=False) == Window(14)
    # Nothing new: the window stays where it was.
    assert advance(Window(10), 10, [], running=[5], full=False) == Window(10)


def test_a_gap_is_read_again_when_one_of_its_transactions_ends_and_forgotten_when_all_have() -> (
    None
):
    window = Window(20, (Gap(12, 13, (7, 9)),))
    assert advance(window, 20, [], running=[7, 9], full=False) == window
    assert advance(window, 20, [12], running=[9], full=False) == Window(20, (Gap(12, 13, (9,)),))
    assert advance(window, 20, [12, 13, 21], running=[], full=False) == Window(21)


def test_a_full_batch_keeps_the_gaps_it_did_not_read_to_their_end() -> None:
    window = Window(20, (Gap(5, 9, (7,)), Gap(12, 13, (7,))))
    assert advance(window, 20, [5, 6], running=[], full=True) == window
    assert advance(window, 20, [7, 9, 12], running=[], full=False) == Window(20)


def test_a_gap_also_waits_for_transactions_newer_than_its_snapshot_lists() -> None:
    # The snapshot listed 7 and ended at xmax 20; transactions 20 to 22 began before fan-out
    # took 23 after it: any of them may hold id 12.
    moved = advance(Window(10), 10, [11, 13], running=[7], full=False, xmax=20, newest=23)
    assert moved == Window(13, (Gap(12, 12, (7, 20, 21, 22)),))
    # Nothing listed, but one unlisted transaction: the gap is kept (it used to be dropped).
    lone = advance(Window(10), 10, [11, 13], running=[], full=False, xmax=30, newest=31)
    assert lone == Window(13, (Gap(12, 12, (30,)),))
    # A later look whose xmax has not passed 30 counts it as running still.
    assert advance(lone, 13, [12], running=[], full=False, xmax=30) == lone
    assert advance(lone, 13, [12], running=[], full=False, xmax=31) == Window(13)


def test_too_many_unlisted_transactions_stop_the_window_before_the_gap() -> None:
    moved = advance(Window(10), 10, [11, 13, 14], running=[], full=False, xmax=1, newest=20_002)
    assert moved == Window(11)


def test_ids_that_start_again_are_read_from_the_start() -> None:
    window = Window(500, (Gap(300, 301, (7,)),))
    assert advance(window, 0, [1, 2], running=[7], full=False) == Window(2)

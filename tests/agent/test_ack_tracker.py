"""``LeaseAcks``/``AckTracker``: out-of-order acks become a contiguous, reportable cursor."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mx8_agent.work.ack_tracker import AckTracker, LeaseAcks, LeaseRef


def test_lease_acks_in_order_advances_cursor() -> None:
    acks = LeaseAcks(100, 200)
    assert acks.ack(100, 132) == 132
    assert acks.ack(132, 200) == 200
    assert acks.done


def test_lease_acks_gap_holds_cursor_back_until_filled() -> None:
    acks = LeaseAcks(0, 100)
    assert acks.ack(32, 64) == 0
    assert acks.ack(64, 96) == 0
    assert acks.acked == 64
    assert acks.ack(0, 32) == 96
    assert not acks.done
    assert acks.ack(96, 100) == 100


def test_lease_acks_repeated_and_overlapping_acks_are_harmless() -> None:
    acks = LeaseAcks(0, 10)
    acks.ack(0, 4)
    assert acks.ack(0, 4) == 4
    assert acks.ack(2, 6) == 6
    assert acks.acked == 6


def test_lease_acks_resumed_lease_starts_at_its_cursor() -> None:
    acks = LeaseAcks(0, 50, cursor=20)
    assert acks.ack(20, 30) == 30


def test_lease_acks_outside_range_raises() -> None:
    acks = LeaseAcks(10, 20)
    with pytest.raises(ValueError, match="outside lease"):
        acks.ack(5, 12)
    with pytest.raises(ValueError, match="outside lease"):
        acks.ack(15, 21)


@given(
    cuts=st.lists(st.integers(1, 199), unique=True, max_size=30),
    data=st.data(),
)
def test_lease_acks_any_order_equals_contiguous_prefix(
    cuts: list[int], data: st.DataObject
) -> None:
    bounds = [0, *sorted(cuts), 200]
    pieces = list(itertools.pairwise(bounds))
    order = data.draw(st.permutations(pieces))
    k = data.draw(st.integers(0, len(order)))
    acks = LeaseAcks(0, 200)
    for lo, hi in order[:k]:
        acks.ack(lo, hi)
    acked = set()
    for lo, hi in order[:k]:
        acked.update(range(lo, hi))
    expected = 0
    while expected in acked:
        expected += 1
    assert acks.cursor == expected
    assert acks.acked == len(acked)
    assert acks.done == (k == len(order))


def test_ack_tracker_reports_only_moved_cursors() -> None:
    tracker = AckTracker()
    tracker.add(LeaseRef("L1", 0, 0, 64, 0))
    tracker.add(LeaseRef("L2", 0, 64, 128, 80))
    assert tracker.unreported() == {}
    assert tracker.cursors() == {"L1": 0, "L2": 80}
    assert tracker.ack("L1", 0, 16)
    assert tracker.unreported() == {"L1": 16}
    tracker.mark_reported("L1", 16)
    assert tracker.unreported() == {}
    tracker.ack("L2", 80, 128)
    assert tracker.is_done("L2")
    tracker.remove("L2")
    assert "L2" not in tracker
    assert not tracker.ack("L2", 80, 90)
    assert len(tracker) == 1

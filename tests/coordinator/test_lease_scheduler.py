"""LeaseScheduler as plain logic: dealing, order of work, progress, expiry, epochs, restore."""

from __future__ import annotations

import pytest
from support.clock import FakeClock

from mx8_common.errors import LeaseNotFoundError, LeaseRangeError, LeaseStateError
from mx8_common.sample_order import EpochOrder
from mx8_coordinator.state.lease_scheduler import LeaseScheduler, RestoredLease, Span


def make(
    total: int = 100, block: int = 10, epochs: int = 1, ttl: int = 1000, shuffle: bool = False
):
    clock = FakeClock(1_000)
    sched = LeaseScheduler(
        total=total,
        epochs=epochs,
        lease_ttl_ms=ttl,
        blocks_for_epoch=lambda e: EpochOrder(
            total, block, shuffle, 7, e, "ab" * 32
        ).block_ranges(),
        clock=clock,
        max_wait_ms=500,
    )
    return sched, clock


def spans(leases) -> list[tuple[int, int, int]]:
    return [(le.epoch, le.start, le.end) for le in leases]


def test_lease_scheduler_deals_blocks_round_robin_by_rank() -> None:
    sched, _ = make()
    got0 = sched.acquire("a", 0, world_size=3, want=4).leases
    got1 = sched.acquire("b", 1, world_size=3, want=4).leases
    got2 = sched.acquire("c", 2, world_size=3, want=4).leases
    assert spans(got0) == [(0, 0, 10), (0, 30, 40), (0, 60, 70), (0, 90, 100)]
    assert spans(got1) == [(0, 10, 20), (0, 40, 50), (0, 70, 80)]
    assert spans(got2) == [(0, 20, 30), (0, 50, 60), (0, 80, 90)]


def test_lease_scheduler_idle_rank_waits_while_live_rank_has_queue() -> None:
    sched, _ = make()
    assert len(sched.acquire("a", 0, world_size=2, want=10).leases) == 5
    grant = sched.acquire("a", 0, world_size=2, want=1)
    # Rank 1 is alive and still holds blocks: rank 0 must not take them.
    assert grant.leases == () and not grant.drained
    assert 10 <= grant.wait_ms <= 500


def test_lease_scheduler_departed_rank_queue_goes_to_others() -> None:
    sched, _ = make()
    sched.acquire("a", 0, world_size=2, want=10)
    grant = sched.acquire("a", 0, world_size=2, departed_ranks=[1], want=10)
    assert spans(grant.leases) == [(0, s, s + 10) for s in (10, 30, 50, 70, 90)]


def test_lease_scheduler_report_commits_and_completes() -> None:
    sched, _ = make()
    (lease,) = sched.acquire("a", 0, world_size=1).leases
    p = sched.report("a", lease.lease_id, 4)
    assert (p.committed_from, p.committed_to, p.completed) == (0, 4, False)
    p = sched.report("a", lease.lease_id, 10)
    assert (p.committed_from, p.committed_to, p.completed) == (4, 10, True)
    assert sched.committed(0) == 10
    # A retried final report gets the same answer and commits nothing.
    again = sched.report("a", lease.lease_id, 10)
    assert again.completed and again.committed_to == again.committed_from


def test_lease_scheduler_report_extends_lease_by_ttl() -> None:
    sched, clock = make(ttl=1000)
    (lease,) = sched.acquire("a", 0, world_size=1).leases
    clock.now += 900
    sched.report("a", lease.lease_id, 1)
    clock.now += 900
    assert sched.expire_due() == []
    clock.now += 100
    assert [e.lease.lease_id for e in sched.expire_due()] == [lease.lease_id]


def test_lease_scheduler_rejects_bad_reports() -> None:
    sched, _ = make()
    (lease,) = sched.acquire("a", 0, world_size=1).leases
    with pytest.raises(LeaseRangeError, match="outside lease"):
        sched.report("a", lease.lease_id, 11)
    sched.report("a", lease.lease_id, 5)
    with pytest.raises(LeaseStateError, match="goes back"):
        sched.report("a", lease.lease_id, 4)
    with pytest.raises(LeaseStateError, match="held by node 'a'"):
        sched.report("b", lease.lease_id, 6)
    with pytest.raises(LeaseNotFoundError, match="unknown"):
        sched.report("a", "L999", 1)


def test_lease_scheduler_expiry_requeues_remainder_first() -> None:
    sched, clock = make(ttl=1000)
    (lease,) = sched.acquire("a", 0, world_size=2).leases
    sched.report("a", lease.lease_id, 3)
    clock.now += 1000
    (expiry,) = sched.expire_due()
    assert expiry.requeued == Span(0, 3, 10)
    with pytest.raises(LeaseNotFoundError, match="expired at cursor 3"):
        sched.report("a", lease.lease_id, 4)
    # The remainder goes before rank 1's own queue.
    grant = sched.acquire("b", 1, world_size=2, want=2)
    assert spans(grant.leases) == [(0, 3, 10), (0, 10, 20)]


def test_lease_scheduler_expire_node_drops_only_its_leases() -> None:
    sched, _ = make()
    a = sched.acquire("a", 0, world_size=2, want=2).leases
    b = sched.acquire("b", 1, world_size=2, want=1).leases
    gone = sched.expire_node("a")
    assert {e.lease.lease_id for e in gone} == {le.lease_id for le in a}
    assert [le.lease_id for le in sched.live_leases()] == [b[0].lease_id]


def test_lease_scheduler_next_epoch_dealt_when_all_blocks_issued() -> None:
    sched, _ = make(total=40, epochs=2)
    first = sched.acquire("a", 0, world_size=2, want=2)
    assert [d.epoch for d in first.dealt] == [0]
    assert len(sched.acquire("b", 1, world_size=2, want=2).leases) == 2
    # Nothing of epoch 0 is committed, yet epoch 1 is dealt: nodes must not stall.
    nxt = sched.acquire("a", 0, world_size=2, want=1)
    assert [d.epoch for d in nxt.dealt] == [1]
    assert spans(nxt.leases) == [(1, 0, 10)]


def test_lease_scheduler_drains_after_last_epoch_committed() -> None:
    sched, _ = make(total=25, epochs=2)
    seen_epochs_completed = []
    while True:
        grant = sched.acquire("a", 0, world_size=1, want=3)
        if grant.drained:
            break
        assert grant.leases
        for le in grant.leases:
            p = sched.report("a", le.lease_id, le.end)
            if p.epoch_completed:
                seen_epochs_completed.append(le.epoch)
    assert seen_epochs_completed == [0, 1]
    assert sched.committed(0) == sched.committed(1) == 25


def test_lease_scheduler_restore_resumes_cursor_and_queues() -> None:
    sched, clock = make(total=60)
    restored = [
        RestoredLease("L1", "a", 0, 0, 10, 10, "done"),
        RestoredLease("L2", "b", 0, 10, 20, 14, "live"),
        RestoredLease("L3", "a", 0, 20, 30, 25, "expired"),
    ]
    sched.restore(dealt={0: 2}, leases=restored, next_seq=3)
    assert sched.committed(0) == 10 + 4 + 5
    (live,) = sched.live_leases()
    assert (live.lease_id, live.cursor, live.expires_ms) == ("L2", 14, clock.now + 1000)
    # [25, 30) was an expired remainder: shared re-queue; untouched blocks back to their ranks.
    assert sched.pending() == [Span(0, 25, 30), Span(0, 40, 50), Span(0, 30, 40), Span(0, 50, 60)]
    grant = sched.acquire("b", 1, world_size=2, want=1)
    assert spans(grant.leases) == [(0, 25, 30)] and grant.leases[0].lease_id == "L4"
    sched.report("b", "L2", 20)
    assert sched.committed(0) == 25


def test_lease_scheduler_fast_rank_goes_on_to_next_epoch_without_waiting() -> None:
    sched, _ = make(epochs=2)
    assert len(sched.acquire("a", 0, world_size=2, want=5).leases) == 5
    # Rank 1 has not started epoch 0, yet rank 0 takes its share of epoch 1 at once.
    grant = sched.acquire("a", 0, world_size=2, want=10)
    assert [le.epoch for le in grant.leases] == [1] * 5
    assert [d.epoch for d in grant.dealt] == [1]
    # Rank 1's queue is still FIFO: its epoch-0 share first, then its epoch-1 share.
    later = sched.acquire("b", 1, world_size=2, want=10).leases
    assert [le.epoch for le in later] == [0] * 5 + [1] * 5
    assert sched.acquire("a", 0, world_size=2, want=1).leases == ()

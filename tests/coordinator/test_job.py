"""``Job`` driven directly: a fake clock, a lease log in tmp_path, no sockets, no server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from support.clock import FakeClock
from support.logs import Events

from mx8_common.errors import (
    JobNotReadyError,
    JobStateError,
    LeaseNotFoundError,
    NodeNotRegisteredError,
    RequestError,
)
from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.lease_log import LeaseLog
from mx8_coordinator.state.ranks import RankReport

JOB = "job-1"
TTL_MS = 1_000


def spec(*, total: int = 100, block: int = 25, epochs: int = 1, freeze: int = 1) -> JobSpec:
    return JobSpec(
        job_id=JOB,
        dataset_link="s3://bucket/ds/",
        manifest_hash="ab" * 32,
        total_samples=total,
        block_size=block,
        shuffle=True,
        seed=5,
        epochs=epochs,
        lease_ttl_ms=TTL_MS,
        heartbeat_interval_ms=200,
        freeze_size=freeze,
        mode="dynamic",  # these are the leases' tests; rank-exact jobs take none
    )


async def drain(job: Job, committed: dict[int, list[int]], *nodes: str) -> None:
    """``nodes`` take turns leasing and reporting each lease to its end until the job is
    drained; the ids they commit are added to ``committed`` per epoch."""
    while not job.drained:
        granted = 0
        for node_id in nodes:
            grant = await job.request_lease(JOB, node_id, 2)
            granted += len(grant.leases)
            for le in grant.leases:
                await job.report_progress(JOB, node_id, le.lease_id, le.end)
                ids = job.spec.order(le.epoch).ids(le.start, le.end).tolist()
                committed.setdefault(le.epoch, []).extend(ids)
        assert granted or job.drained, "every node was told to wait on an undrained job"


async def test_job_freezes_the_world_in_node_id_order() -> None:
    job = Job(spec(freeze=2), clock=FakeClock())
    first = await job.register(JOB, "node-b", "host-b")
    assert first.rank is None and not first.ready
    with pytest.raises(JobNotReadyError, match="1 of 2 nodes registered"):
        await job.request_lease(JOB, "node-b", 1)
    frozen = await job.register(JOB, "node-a", "host-a")
    # Ranks follow sorted ids, not arrival order.
    assert frozen.ready and dict(frozen.assigned) == {"node-a": 0, "node-b": 1}
    late = await job.register(JOB, "node-c")
    assert late.rank == 2 and late.world_size == 3
    again = await job.register(JOB, "node-b")
    assert again.rank == 1 and again.assigned == ()


async def test_job_refuses_bad_requests_with_typed_errors() -> None:
    job = Job(spec(), clock=FakeClock())
    with pytest.raises(JobStateError, match="serves job 'job-1', not 'other'"):
        await job.register("other", "node-a")
    with pytest.raises(RequestError, match="node_id is empty"):
        await job.register(JOB, "")
    with pytest.raises(NodeNotRegisteredError):
        await job.request_lease(JOB, "stranger", 1)
    await job.register(JOB, "node-a")
    with pytest.raises(RequestError, match="want must be > 0"):
        await job.request_lease(JOB, "node-a", 0)


async def test_job_grants_leases_commits_progress_and_drains(logs: Events) -> None:
    clock = FakeClock()
    job = Job(spec(epochs=2), clock=clock)
    await job.register(JOB, "node-a")
    grant = await job.request_lease(JOB, "node-a", 2)
    assert [d.epoch for d in grant.dealt] == [0]
    assert [(le.epoch, le.end - le.start) for le in grant.leases] == [(0, 25), (0, 25)]
    # Half a lease, then the rest: each report commits only what is new.
    le = grant.leases[0]
    half = await job.report_progress(JOB, "node-a", le.lease_id, le.start + 10)
    assert (half.committed_from, half.committed_to, half.completed) == (
        le.start,
        le.start + 10,
        False,
    )
    done = await job.report_progress(JOB, "node-a", le.lease_id, le.end)
    assert done.completed and done.committed_to - done.committed_from == 15
    await job.report_progress(JOB, "node-a", grant.leases[1].lease_id, grant.leases[1].end)

    committed: dict[int, list[int]] = {0: job.spec.order(0).ids(0, 50).tolist()}
    await drain(job, committed, "node-a")
    assert job.drained
    for epoch in (0, 1):
        assert sorted(committed[epoch]) == list(range(100)), f"epoch {epoch}"
    status = job.status()
    assert status.job_drained and status.state == "drained"
    assert status.committed_by_epoch == (100, 100) and status.live_leases == ()
    assert status.counters.samples_committed == 200 and status.counters.leases_completed == 8
    assert [(n.node_id, n.samples_committed) for n in status.nodes] == [("node-a", 200)]
    assert logs.names().count("epoch_completed") == 2 and logs.names().count("job_drained") == 1


async def test_job_expired_lease_remainder_goes_to_another_node(logs: Events) -> None:
    clock = FakeClock()
    job = Job(spec(freeze=2), clock=clock)
    await job.register(JOB, "node-a")
    await job.register(JOB, "node-b")
    (lease_a,) = (await job.request_lease(JOB, "node-a", 1)).leases
    (lease_b,) = (await job.request_lease(JOB, "node-b", 1)).leases
    await job.report_progress(JOB, "node-a", lease_a.lease_id, lease_a.start + 7)
    # node-b keeps reporting; node-a goes silent for longer than the TTL.
    clock.advance(TTL_MS - 100)
    await job.report_progress(JOB, "node-b", lease_b.lease_id, lease_b.start + 1)
    clock.advance(200)
    await job.tick()
    assert logs.names().count("node_departed") == 1
    (expired,) = logs.named("lease_expired")
    assert expired["lease_id"] == lease_a.lease_id and expired["cursor"] == lease_a.start + 7
    # The remainder [cursor, end) is the next work of whoever asks first.
    grant = await job.request_lease(JOB, "node-b", 1)
    assert [(le.start, le.end) for le in grant.leases] == [(lease_a.start + 7, lease_a.end)]
    with pytest.raises(LeaseNotFoundError, match=f"expired at cursor {lease_a.start + 7}"):
        await job.report_progress(JOB, "node-a", lease_a.lease_id, lease_a.end)
    counters = job.status().counters
    assert counters.leases_expired == 1 and counters.leases_requeued == 1
    assert counters.samples_committed == 7 + 1


async def test_job_silent_lease_expires_on_its_own_ttl() -> None:
    clock = FakeClock()
    job = Job(spec(), clock=clock)
    await job.register(JOB, "node-a")
    (lease,) = (await job.request_lease(JOB, "node-a", 1)).leases
    clock.advance(TTL_MS - 1)
    await job.heartbeat(JOB, "node-a")  # the node lives, but this lease is not reported
    await job.tick()
    assert job.status().live_leases[0].lease_id == lease.lease_id
    clock.advance(1)
    await job.tick()
    status = job.status()
    assert status.live_leases == () and status.counters.leases_expired == 1


async def test_job_drain_stops_new_leases_but_takes_reports() -> None:
    job = Job(spec(), clock=FakeClock())
    await job.register(JOB, "node-a")
    (lease,) = (await job.request_lease(JOB, "node-a", 1)).leases
    job.begin_drain()
    grant = await job.request_lease(JOB, "node-a", 1)
    assert grant.leases == () and grant.wait_ms == 200 and not grant.drained
    progress = await job.report_progress(JOB, "node-a", lease.lease_id, lease.end)
    assert progress.completed and job.status().counters.samples_committed == 25


async def test_job_replays_its_lease_log_and_finishes_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "job.lease-log.jsonl"
    job_spec = spec(epochs=2, freeze=2)
    clock = FakeClock()
    log, state = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    assert state.empty
    job = Job(job_spec, log=log, clock=clock)
    await job.register(JOB, "node-a")
    await job.register(JOB, "node-b")
    committed: dict[int, list[int]] = {}
    grant = await job.request_lease(JOB, "node-a", 2)
    finished, halfway = grant.leases
    await job.report_progress(JOB, "node-a", finished.lease_id, finished.end)
    await job.report_progress(JOB, "node-a", halfway.lease_id, halfway.start + 10)
    committed[0] = job_spec.order(0).ids(finished.start, finished.end).tolist()
    committed[0] += job_spec.order(0).ids(halfway.start, halfway.start + 10).tolist()
    await log.close()

    # A restarted coordinator: same spec, the log replayed, nothing else carried over.
    log, state = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    restarted = Job(job_spec, log=log, clock=FakeClock(clock.now))
    restarted.restore(state)
    status = restarted.status()
    assert status.job_ready and status.world_size == 2
    assert [(le.lease_id, le.cursor) for le in status.live_leases] == [
        (halfway.lease_id, halfway.start + 10)
    ]
    assert status.counters.samples_committed == 35
    # node-a resumes its live lease from the logged cursor; node-b's rank is remembered.
    await restarted.report_progress(JOB, "node-a", halfway.lease_id, halfway.end)
    committed[0] += job_spec.order(0).ids(halfway.start + 10, halfway.end).tolist()
    await restarted.register(JOB, "node-b")
    await drain(restarted, committed, "node-b", "node-a")
    await log.close()
    assert restarted.drained
    for epoch in (0, 1):
        assert sorted(committed[epoch]) == list(range(100)), f"epoch {epoch}"


async def test_job_in_rank_exact_mode_refuses_leases_and_drains_from_rank_reports() -> None:
    job = Job(replace(spec(), mode="rank-exact"))
    await job.register(JOB, "a")
    with pytest.raises(JobStateError, match="rank-exact mode"):
        await job.request_lease(JOB, "a", 1)
    assert not job.drained
    report = RankReport(
        rank=0, instance_id="i0", world_id="w", world_size=1, epoch=0, step=3, finished=True
    )
    assert job.ranks.report([report])
    status = job.status()
    assert job.drained and status.job_drained and status.mode == "rank-exact"
    assert [(r.rank, r.step, r.finished) for r in status.ranks] == [(0, 3, True)]


async def test_job_restarted_with_its_lease_log_keeps_its_incarnation_and_lease_ids(
    tmp_path: Path,
) -> None:
    path, job_spec = tmp_path / "job.lease-log.jsonl", spec()
    log, state = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    job = Job(job_spec, log=log, incarnation=state.incarnation, clock=FakeClock())
    await job.register(JOB, "a")
    (first,) = (await job.request_lease(JOB, "a", 1)).leases
    await log.close()
    assert job.incarnation == state.incarnation and first.lease_id == f"{job.incarnation}-L1"

    log, state = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    resumed = Job(job_spec, log=log, clock=FakeClock())
    resumed.restore(state)
    await resumed.register(JOB, "a")
    (second,) = (await resumed.request_lease(JOB, "a", 1)).leases
    await log.close()
    # With its log: the same incarnation (agents carry on), ids keep counting.
    assert resumed.incarnation == job.incarnation
    assert second.lease_id == f"{job.incarnation}-L2"

    # Without it (no --state-dir): another incarnation, and no lease id repeats.
    fresh = Job(job_spec, clock=FakeClock())
    await fresh.register(JOB, "a")
    (again,) = (await fresh.request_lease(JOB, "a", 1)).leases
    assert fresh.incarnation != job.incarnation
    assert again.lease_id == f"{fresh.incarnation}-L1" != first.lease_id


async def test_job_own_stall_postpones_leases_instead_of_expiring_them(logs: Events) -> None:
    clock = FakeClock()
    job = Job(spec(freeze=1), clock=clock, stall_ms=TTL_MS // 2)
    await job.register(JOB, "node-a")
    (lease,) = (await job.request_lease(JOB, "node-a", 1)).leases
    # The coordinator did not run for 3 TTLs (SIGSTOP): nobody could be heard meanwhile.
    clock.advance(3 * TTL_MS)
    await job.tick()
    assert logs.named("coordinator_stalled")[0]["gap_ms"] == 3 * TTL_MS
    assert "lease_expired" not in logs.names() and "node_departed" not in logs.names()
    progress = await job.report_progress(JOB, "node-a", lease.lease_id, lease.end)
    assert progress.completed
    # Silence while the coordinator runs still expires leases as before.
    (other,) = (await job.request_lease(JOB, "node-a", 1)).leases
    for _ in range(6):
        clock.advance(TTL_MS // 4)
        await job.tick()
    assert [e["lease_id"] for e in logs.named("lease_expired")] == [other.lease_id]


async def test_job_released_lease_remainder_goes_to_others_at_once(logs: Events) -> None:
    job = Job(spec(freeze=2), clock=FakeClock())
    await job.register(JOB, "node-a")
    await job.register(JOB, "node-b")
    (lease,) = (await job.request_lease(JOB, "node-a", 1)).leases
    progress = await job.report_progress(
        JOB, "node-a", lease.lease_id, lease.start + 5, release=True
    )
    assert progress.committed_to == lease.start + 5 and not progress.completed
    (released,) = logs.named("lease_released")
    assert released["cursor"] == lease.start + 5
    # No TTL to wait out: the next request takes the remainder.
    grant = await job.request_lease(JOB, "node-b", 1)
    assert [(le.start, le.end) for le in grant.leases] == [(lease.start + 5, lease.end)]
    with pytest.raises(LeaseNotFoundError):
        await job.report_progress(JOB, "node-a", lease.lease_id, lease.end)


async def test_job_idle_node_rank_share_goes_to_the_busy_node() -> None:
    clock = FakeClock()
    job = Job(spec(freeze=2, total=100, block=25), clock=clock)
    await job.register(JOB, "node-a")
    await job.register(JOB, "node-b")  # never asks for work (no trainer)
    clock.advance(1001)  # three heartbeats (200 ms), at least 1 s
    committed: dict[int, list[int]] = {}
    await drain(job, committed, "node-a")
    assert sorted(committed[0]) == list(range(100))

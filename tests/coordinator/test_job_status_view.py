"""``Job.status()`` as operators read it: liveness decided when read, finished vs lost
nodes, a windowed rate that freezes when the job drains. Fake clock, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.clock import FakeClock

from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.lease_log import LeaseLog
from mx8_coordinator.web.metrics import CoordinatorMetrics

JOB = "job-1"
TTL_MS = 1_000


def spec(*, total: int = 100, block: int = 25, freeze: int = 2) -> JobSpec:
    return JobSpec(
        job_id=JOB,
        dataset_link="s3://bucket/ds/",
        manifest_hash="ab" * 32,
        total_samples=total,
        block_size=block,
        lease_ttl_ms=TTL_MS,
        heartbeat_interval_ms=200,
        freeze_size=freeze,
        mode="dynamic",  # the status of leased work; rank-exact jobs take no leases
    )


def scrape(job: Job) -> dict[str, float]:
    body = generate_latest(CoordinatorMetrics(job.status).registry).decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def finish(job: Job, *nodes: str) -> None:
    while not job.drained:
        for node_id in nodes:
            for le in (await job.request_lease(JOB, node_id, 1)).leases:
                await job.report_progress(JOB, node_id, le.lease_id, le.end)


async def test_job_status_liveness_is_decided_when_read_so_gauge_and_json_agree() -> None:
    clock = FakeClock()
    job = Job(spec(), clock=clock)
    await job.register(JOB, "a")
    await job.register(JOB, "b")
    await finish(job, "a", "b")
    assert scrape(job)["mx8_coordinator_nodes_live"] == 2
    clock.advance(TTL_MS)  # both agents exited; no tick has run yet
    status = job.status()
    assert [n["alive"] for n in status.to_dict()["nodes"]] == [False, False]
    assert status.nodes_live == 0 and job.registry.live_count() == 0
    assert scrape(job)["mx8_coordinator_nodes_live"] == 0


async def test_job_status_nodes_told_drained_finish_and_silent_ones_are_lost() -> None:
    clock = FakeClock()
    job = Job(spec(), clock=clock)
    await job.register(JOB, "a")
    await job.register(JOB, "b")
    (lease_b,) = (await job.request_lease(JOB, "b", 1)).leases  # b crashes holding it
    clock.advance(TTL_MS)
    await job.heartbeat(JOB, "a")
    await job.tick()  # b departs, its lease goes back to the queue
    await finish(job, "a")
    assert lease_b.lease_id and job.drained
    states = {n.node_id: n.state for n in job.status().nodes}
    assert states == {"a": "alive", "b": "lost"}
    clock.advance(TTL_MS)
    await job.tick()
    status = job.status()
    assert {n.node_id: n.state for n in status.nodes} == {"a": "finished", "b": "lost"}
    assert status.to_dict()["nodes_by_state"] == {"alive": 0, "finished": 1, "lost": 1}
    scraped = scrape(job)
    assert scraped["mx8_coordinator_nodes{state=finished}"] == 1
    assert scraped["mx8_coordinator_nodes{state=lost}"] == 1


async def test_job_status_rate_is_recent_while_running_and_frozen_once_drained() -> None:
    clock = FakeClock()
    job = Job(spec(total=400, block=50, freeze=1), clock=clock)
    await job.register(JOB, "a")
    for _ in range(4):  # 200 samples in 4 s: 50/s
        (le,) = (await job.request_lease(JOB, "a", 1)).leases
        clock.advance(1_000)
        await job.heartbeat(JOB, "a")
        await job.report_progress(JOB, "a", le.lease_id, le.end)
        await job.tick()
    running = job.status()
    assert running.rate_basis == "window" and running.samples_per_second == 50
    assert running.nodes[0].samples_per_second == 50
    assert running.epoch_eta_seconds() == [4.0]  # 200 left at 50/s
    for _ in range(30):  # stalled for 30 s: the recent rate says so, not 200/34
        clock.advance(1_000)
        await job.heartbeat(JOB, "a")
        await job.tick()
    stalled = job.status()
    assert stalled.samples_per_second == 0 and stalled.epoch_eta_seconds() == [None]
    assert len(stalled.throughput_history) >= 30
    assert stalled.throughput_history[0][1] == 50
    await finish(job, "a")
    final = job.status()
    assert final.rate_basis == "final"
    assert final.samples_per_second == 400 / 34
    clock.advance(600_000)
    await job.tick()
    assert job.status().samples_per_second == final.samples_per_second
    assert job.status().epoch_eta_seconds() == [0.0]


async def test_job_status_after_a_restart_of_a_drained_job_nodes_that_stay_away_finished(
    tmp_path: Path,
) -> None:
    path, job_spec = tmp_path / "job.lease-log.jsonl", spec()
    log, _ = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    job = Job(job_spec, log=log, clock=FakeClock())
    await job.register(JOB, "a")
    await job.register(JOB, "b")
    await finish(job, "a", "b")
    await log.close()
    clock = FakeClock()
    log, state = await asyncio.to_thread(LeaseLog.open, path, job_spec.log_header())
    restarted = Job(job_spec, log=log, clock=clock)
    restarted.restore(state)
    clock.advance(TTL_MS)
    await restarted.tick()
    status = restarted.status()
    await log.close()
    assert [n.state for n in status.nodes] == ["finished", "finished"]
    assert status.rate_basis == "final" and status.samples_per_second == 0

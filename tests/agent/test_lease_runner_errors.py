"""The lease runner tells coordinator refusals apart by type, never by message text: a lease
the coordinator took back is dropped and the rest go on; a changed manifest (or any other
refusal) stops the runner; a coordinator that did not answer is tried again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.logs import Events
from support.manifests import write_local_dataset

from mx8_agent.serve.trainer_hub import TrainerHub
from mx8_agent.work.ack_tracker import LeaseRef
from mx8_agent.work.lease_runner import LeaseRunner
from mx8_common.errors import (
    CoordinatorError,
    JobNotReadyError,
    JobStateError,
    LeaseLogError,
    LeaseNotFoundError,
    LeaseRangeError,
    LeaseStateError,
    ManifestChangedError,
    Mx8Error,
    NodeNotRegisteredError,
)
from mx8_common.manifest.table import ManifestTable
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.sample_order import JobOrder
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReader

SAMPLES = 20


class ScriptedCoordinator:
    """A coordinator client stand-in: RequestLease raises ``lease_error`` once, then says
    the job is drained; ReportProgress raises ``report_errors[lease_id]`` for that lease."""

    def __init__(
        self,
        *,
        lease_error: Mx8Error | None = None,
        report_errors: dict[str, Mx8Error] | None = None,
    ) -> None:
        self.lease_error = lease_error
        self.report_errors = report_errors or {}
        self.lease_calls = 0
        self.reports: list[tuple[str, int]] = []

    async def request_lease(self, job_id: str, node_id: str, want: int) -> Any:
        self.lease_calls += 1
        if self.lease_error is not None:
            error, self.lease_error = self.lease_error, None
            raise error
        return pb.RequestLeaseResponse(job_drained=True)

    async def report_progress(self, job_id: str, node_id: str, lease_id: str, cursor: int) -> Any:
        if lease_id in self.report_errors:
            raise self.report_errors[lease_id]
        self.reports.append((lease_id, cursor))
        return pb.ReportProgressResponse(lease=pb.Lease(lease_id=lease_id, cursor=cursor))


@pytest.fixture
async def make_runner(tmp_path: Path) -> AsyncIterator[Any]:
    table = ManifestTable.from_bytes(write_local_dataset(tmp_path, SAMPLES).read_bytes())
    reader = ObjectReader()

    def make(client: ScriptedCoordinator) -> LeaseRunner:
        hub = TrainerHub(max_bytes=1 << 20, on_acked=lambda batch: None)
        hub.set_batch_size(4)  # "a trainer connected": the lease loop may ask for work
        return LeaseRunner(
            client=client,
            job_id="default",
            node_id="a",
            table=table,
            job_order=JobOrder(manifest_hash=table.manifest_hash, total_samples=SAMPLES),
            reader=reader,
            fetch_config=FetchConfig(),
            hub=hub,
            leases_ahead=2,
            progress_interval_s=0.05,
            lease_ttl_s=10.0,
            stall_s=5.0,
            retry_wait_s=0.01,
        )

    yield make
    await reader.aclose()


def hold_two_leases(runner: LeaseRunner) -> None:
    """L1 = [0, 10) with 4 positions acknowledged, L2 = [10, 20) with none."""
    runner.tracker.add(LeaseRef(lease_id="L1", epoch=0, start=0, end=10, cursor=0))
    runner.tracker.add(LeaseRef(lease_id="L2", epoch=0, start=10, end=20, cursor=10))
    runner.tracker.ack("L1", 0, 4)


@pytest.mark.parametrize(
    "error",
    [
        LeaseNotFoundError("lease L1 expired at cursor 4", lease_id="L1"),
        LeaseStateError("lease L1 is held by node 'b'", lease_id="L1"),
        NodeNotRegisteredError("node 'a' is not registered", node_id="a"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_lease_runner_drops_a_lease_the_coordinator_took_back(
    make_runner: Any, error: Mx8Error, logs: Events
) -> None:
    client = ScriptedCoordinator(report_errors={"L1": error})
    runner = make_runner(client)
    hold_two_leases(runner)
    await runner.report_now()
    assert "L1" not in runner.tracker and runner.stats.dropped == {"L1"}
    assert runner.stats.leases_dropped == 1
    # The other lease is still held and was reported as usual.
    assert "L2" in runner.tracker and client.reports == [("L2", 10)]
    (lost,) = logs.named("lease_lost")
    assert lost["lease_id"] == "L1" and lost["reason"] == error.event


@pytest.mark.parametrize(
    "error",
    [
        ManifestChangedError("the coordinator serves another manifest", expected="a", got="b"),
        LeaseRangeError("cursor 11 is outside lease L1's range", lease_id="L1"),
        CoordinatorError("token refused", address="x", code="UNAUTHENTICATED"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_lease_runner_stops_on_other_refusals_without_dropping(
    make_runner: Any, error: Mx8Error, logs: Events
) -> None:
    runner = make_runner(ScriptedCoordinator(report_errors={"L1": error}))
    hold_two_leases(runner)
    with pytest.raises(type(error)) as info:
        await runner.report_now()
    assert info.value is error
    assert "L1" in runner.tracker and runner.stats.leases_dropped == 0
    assert not logs.named("lease_lost")


@pytest.mark.parametrize(
    "unreachable",
    [
        CoordinatorError("coordinator unreachable", address="x", code="UNAVAILABLE"),
        LeaseLogError("could not renew its leader record in time; hands out no lease"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_lease_runner_keeps_leases_when_the_coordinator_is_unreachable(
    make_runner: Any, logs: Events, unreachable: Mx8Error
) -> None:
    runner = make_runner(ScriptedCoordinator(report_errors={"L1": unreachable}))
    hold_two_leases(runner)
    await runner.report_now()  # returns: the next interval tries again
    assert "L1" in runner.tracker and "L2" in runner.tracker
    assert runner.stats.leases_dropped == 0
    assert [e["lease_id"] for e in logs.named("progress_report_failed")] == ["L1"]


@pytest.mark.parametrize(
    "error",
    [
        JobNotReadyError("job is not ready: 1 of 2 nodes registered", node_id="a"),
        NodeNotRegisteredError("node 'a' is not registered", node_id="a"),
        LeaseLogError("could not renew its leader record in time; hands out no lease"),
        CoordinatorError("coordinator unreachable", address="x", code="UNAVAILABLE"),
        CoordinatorError("no answer in time", address="x", code="DEADLINE_EXCEEDED"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'code', '')}",
)
async def test_lease_runner_waits_out_a_lease_refusal_worth_retrying(
    make_runner: Any, error: Mx8Error, logs: Events
) -> None:
    client = ScriptedCoordinator(lease_error=error)
    runner = make_runner(client)
    await runner.run()  # retried, then told the job is drained
    assert client.lease_calls == 2
    (retry,) = logs.named("lease_request_retry")
    assert retry["reason"] == error.event


@pytest.mark.parametrize(
    "error",
    [
        JobStateError("this coordinator serves job 'other', not 'default'"),
        ManifestChangedError("the coordinator serves another manifest", expected="a", got="b"),
        CoordinatorError("token refused", address="x", code="UNAUTHENTICATED"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_lease_runner_fails_on_a_lease_refusal_not_worth_retrying(
    make_runner: Any, error: Mx8Error
) -> None:
    client = ScriptedCoordinator(lease_error=error)
    runner = make_runner(client)
    with pytest.raises(type(error)) as info:
        await runner.run()
    assert info.value is error and client.lease_calls == 1

"""``LeaseRunner`` driven in-process from lease to acknowledged progress: a fake coordinator
client object, a real hub and a real reader over local files, a trainer that is a task of the
test's loop. No sockets. (How each coordinator refusal is handled: test_lease_runner_errors.)"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path

from support.logs import Events
from support.manifests import sample_bytes, write_local_dataset

from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub
from mx8_agent.work.lease_runner import LeaseClient, LeaseRunner
from mx8_common.errors import LeaseNotFoundError
from mx8_common.manifest.format import manifest_hash
from mx8_common.manifest.table import ManifestTable
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.sample_order import JobOrder
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReader

JOB, NODE = "job", "node-a"


class FakeLeaseClient:
    """The two coordinator calls a runner makes, answered from a queue of spans in memory.

    Commits what each report moves a lease's cursor over, exactly like the coordinator;
    a lease named in ``expire`` is refused (``LeaseNotFoundError``) on its first report and
    its uncommitted remainder is handed out again as a new lease.
    """

    def __init__(self, total: int, block: int, *, expire: frozenset[str] = frozenset()) -> None:
        self.total = total
        self.queue: deque[tuple[int, int]] = deque(
            (start, min(start + block, total)) for start in range(0, total, block)
        )
        self.expire = set(expire)
        self.live: dict[str, list[int]] = {}  # lease id -> [start, cursor, end]
        self.committed: list[int] = []
        self.reports: list[tuple[str, int]] = []
        self.lease_requests = 0
        self._seq = 0

    async def request_lease(self, job_id: str, node_id: str, want: int) -> cpb.RequestLeaseResponse:
        assert (job_id, node_id) == (JOB, NODE)
        self.lease_requests += 1
        leases = []
        while self.queue and len(leases) < want:
            start, end = self.queue.popleft()
            self._seq += 1
            lease_id = f"L{self._seq}"
            self.live[lease_id] = [start, start, end]
            work = cpb.WorkRange(start_id=start, end_id=end, epoch=0)
            leases.append(cpb.Lease(lease_id=lease_id, node_id=node_id, range=work, cursor=start))
        drained = not self.queue and not self.live
        return cpb.RequestLeaseResponse(
            leases=leases, wait_ms=0 if leases else 10, job_drained=drained
        )

    async def report_progress(
        self, job_id: str, node_id: str, lease_id: str, cursor: int
    ) -> cpb.ReportProgressResponse:
        self.reports.append((lease_id, cursor))
        span = self.live.get(lease_id)
        if span is None or lease_id in self.expire:
            if span is not None:
                self.expire.discard(lease_id)
                del self.live[lease_id]
                self.queue.appendleft((span[1], span[2]))  # the remainder, first in line
            raise LeaseNotFoundError(
                f"lease {lease_id} expired; drop it and request a new lease", lease_id=lease_id
            )
        _start, before, end = span
        assert before <= cursor <= end, (lease_id, before, cursor, end)
        self.committed.extend(range(before, cursor))
        span[1] = cursor
        if cursor == end:
            del self.live[lease_id]
        return cpb.ReportProgressResponse(completed=cursor == end)


def _runner(
    tmp_path: Path,
    client: LeaseClient,
    reader: ObjectReader,
    samples: int,
    *,
    lease_ttl_s: float = 10.0,
    stall_s: float = 5.0,
    max_unreported_batches: int = 0,
    progress_interval_s: float = 0.02,
) -> tuple[LeaseRunner, TrainerHub]:
    """A runner over ``samples`` local files, its hub already told the batch size (8)."""
    data = write_local_dataset(tmp_path, samples).read_bytes()
    table = ManifestTable.from_bytes(data)
    hub = TrainerHub(max_bytes=1 << 20, on_acked=lambda batch: runner.on_acked(batch))
    hub.set_batch_size(8)
    runner = LeaseRunner(
        client=client,
        job_id=JOB,
        node_id=NODE,
        table=table,
        job_order=JobOrder(
            manifest_hash=manifest_hash(data),
            total_samples=samples,
            block_size=40,
            shuffle=True,
            seed=2,
        ),
        reader=reader,
        fetch_config=FetchConfig(concurrency=8, max_inflight_bytes=1 << 20),
        hub=hub,
        leases_ahead=2,
        progress_interval_s=progress_interval_s,
        lease_ttl_s=lease_ttl_s,
        stall_s=stall_s,
        retry_wait_s=0.01,
        max_unreported_batches=max_unreported_batches,
    )
    return runner, hub


async def _trainer(hub: TrainerHub) -> list[ReadyBatch]:
    """Consume and acknowledge every batch until the end of the job."""
    session = hub.attach("trainer-0", window=4)
    got: list[ReadyBatch] = []
    while (item := await hub.next_for(session)) is not None:
        seq, batch = item
        got.append(batch)
        hub.ack(session, seq)
    hub.detach(session)
    return got


async def _run_to_end(
    tmp_path: Path, client: LeaseClient, samples: int
) -> tuple[LeaseRunner, list[ReadyBatch], ObjectReader]:
    """Run a runner and one trainer until the job ends; the reader is returned closed."""
    async with ObjectReader() as reader:
        runner, hub = _runner(tmp_path, client, reader, samples)
        trainer = asyncio.create_task(_trainer(hub))
        async with asyncio.timeout(30):
            await runner.run()
            batches = await trainer
    return runner, batches, reader


async def test_lease_runner_takes_leases_delivers_batches_and_reports_progress(
    tmp_path: Path, logs: Events
) -> None:
    client = FakeLeaseClient(total=120, block=40)
    runner, batches, reader = await _run_to_end(tmp_path, client, 120)
    ids = [int(i) for b in batches for i in b.sample_ids]
    assert sorted(ids) == list(range(120))
    for batch in batches:
        # Batches never cross a lease, and carry the bytes of their own samples.
        assert len(batch) <= 8 and len({batch.lease_id}) == 1
        assert batch.parts == [sample_bytes(int(i)) for i in batch.sample_ids]
    # Each lease's positions map through the job's order, and each is committed once.
    assert sorted(client.committed) == list(range(120))
    assert {lease for lease, _cursor in client.reports} == {"L1", "L2", "L3"}
    assert runner.stats.leases_started == runner.stats.leases_completed == 3
    assert runner.stats.samples_acked == 120 and runner.stats.leases_dropped == 0
    assert [e["lease_id"] for e in logs.named("lease_done")] == ["L1", "L2", "L3"]
    # Local files were read several per thread-pool job.
    assert 0 < reader.stats.local_batches < reader.stats.reads == 120


async def test_lease_runner_drops_an_expired_lease_and_goes_on(
    tmp_path: Path, logs: Events
) -> None:
    client = FakeLeaseClient(total=120, block=40, expire=frozenset({"L1"}))
    runner, batches, _reader = await _run_to_end(tmp_path, client, 120)
    (lost,) = logs.named("lease_lost")
    assert lost["lease_id"] == "L1" and lost["reason"] == LeaseNotFoundError.event
    assert "expired" in lost["error"]
    assert runner.stats.leases_dropped == 1 and "L1" in runner.stats.dropped
    # L1's remainder came back as a new lease: every position is still committed once.
    assert sorted(client.committed) == list(range(120))
    assert runner.stats.leases_started == 4 and runner.stats.leases_completed == 3
    # Nothing of L1 is reported after it was lost.
    first_refusal = client.reports.index(next(r for r in client.reports if r[0] == "L1"))
    assert all(lease != "L1" for lease, _ in client.reports[first_refusal + 1 :])
    delivered = {int(i) for b in batches for i in b.sample_ids}
    assert delivered == set(range(120))


class FreezingLeaseClient(FakeLeaseClient):
    """Once ``frozen`` is set, progress reports never get an answer (a frozen coordinator)."""

    def __init__(self, total: int, block: int) -> None:
        super().__init__(total, block)
        self.frozen = asyncio.Event()
        #: Send time of the last report that got an answer.
        self.last_answered_sent = 0.0

    async def report_progress(
        self, job_id: str, node_id: str, lease_id: str, cursor: int, *, release: bool = False
    ) -> cpb.ReportProgressResponse:
        sent = time.monotonic()
        if self.frozen.is_set():
            await asyncio.Event().wait()
        answer = await super().report_progress(job_id, node_id, lease_id, cursor)
        self.last_answered_sent = max(self.last_answered_sent, sent)
        return answer


async def test_lease_runner_fence_hands_no_batch_out_after_the_renewal_deadline(
    tmp_path: Path, logs: Events
) -> None:
    client = FreezingLeaseClient(total=400, block=200)
    async with ObjectReader() as reader:
        runner, hub = _runner(tmp_path, client, reader, 400, lease_ttl_s=0.6, stall_s=10.0)
        run = asyncio.create_task(runner.run())
        session = hub.attach("trainer-0", window=1)
        got: list[float] = []
        try:
            while True:
                try:
                    async with asyncio.timeout(1.5):
                        item = await hub.next_for(session)
                except TimeoutError:
                    break  # held back: nothing more reaches the trainer
                assert item is not None
                got.append(time.monotonic())
                hub.ack(session, item[0])
                if len(got) == 3:
                    client.frozen.set()
                await asyncio.sleep(0.02)  # a trainer's step
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    ttl_left = 0.6 - runner.fence.margin_s
    assert len(got) > 3  # it went on delivering while the lease was surely still valid
    assert max(got) < client.last_answered_sent + ttl_left
    assert logs.named("lease_fenced")[0]["reason"] == "renewal_overdue"


async def test_lease_runner_hands_out_at_most_max_unreported_batches_of_a_lease_ahead(
    tmp_path: Path,
) -> None:
    """A trainer that holds its batches unacknowledged gets 2 (over both held leases), no
    more; each acknowledgement is reported at once (well before the 10 s interval) and
    frees room."""
    client = FakeLeaseClient(total=160, block=40)
    async with ObjectReader() as reader:
        runner, hub = _runner(
            tmp_path, client, reader, 160, max_unreported_batches=2, progress_interval_s=10.0
        )
        run = asyncio.create_task(runner.run())
        session = hub.attach("trainer-0", window=8)
        held = []
        async with asyncio.timeout(30):
            for _ in range(2):
                held.append(await hub.next_for(session))
            waiting = asyncio.create_task(hub.next_for(session))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # a 3rd batch waits for confirmed progress
            assert {b.lease_id for _s, b in held} == {"L1"}
            hub.ack(session, held[0][0])
            item = await waiting  # the eager report confirmed the acked batch: room again
            got = [b for _s, b in held] + [item[1]]
            hub.ack(session, item[0])
            for seq, _b in held[1:]:
                hub.ack(session, seq)
            while (item := await hub.next_for(session)) is not None:
                got.append(item[1])
                hub.ack(session, item[0])
            hub.detach(session)
            await run
    ids = sorted(i for b in got for i in b.sample_ids.tolist())
    assert ids == list(range(160))
    assert sorted(client.committed) == list(range(160))

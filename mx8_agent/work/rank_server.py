"""Rank-exact mode: each local trainer rank's batches, cut here in order, prefetched.

A trainer rank's batches are a pure function of the job's order and its rank contract
(``Shard`` in ``mx8_common.sample_order``, the function embedded loaders use), so the
agent needs no leases: a ``RankStream`` walks its rank's batches from the step the
trainer presented, epoch after epoch, to the end of the job.

* **Joining.** ``join`` registers the rank with the coordinator (``RegisterRank``) and
  polls until its world is complete, yielding what it waits for so the trainer can say
  so; a refusal is the coordinator's ``ContractError``, which reaches the trainer typed.
  The rank that completes the world hears so in its own answer and wakes this host's
  other waiting ranks, which ask again at once (a poll interval later they took up to
  25 ms more to start).
* **Fetching.** One ``FetchPipeline`` over one reader serves every stream: its request
  feed takes the streams in turn, one batch each, while a stream has fewer than its
  ``window`` batches requested or unacknowledged and the batch fits the byte budget
  (``--max-inflight-bytes``: every batch is charged from its request until the trainer
  acknowledges it; a stream holding nothing may always take one, so no rank starves).
  The pipeline's results are only sorted into their batches, never waited on, so a
  rank whose trainer is slow cannot hold back another's. A stream that takes its batches
  through shared memory (``ShmRing``) gets a batch of local files read straight into
  its ring slot instead: one job per batch for the agent's read worker processes
  (``mx8_common.storage.read_worker``, ``--local-read-workers``; each has its own GIL, so
  the reads do not stall the event loop serving the trainers), no per-sample ``bytes``,
  no copy when it is sent. A trainer on this host that reads local files itself
  (``trainer_reads``) gets only the paths of a batch of whole local files: each rank then
  reads its own batches, in parallel, as embedded mode does, and the agent's single read
  worker is no longer every rank's serial step.
* **Progress.** Acknowledged batches move each rank's (epoch, step); ``run`` reports
  them to the coordinator every interval (``ReportRanks``, which also answers whether the
  job is drained) and returns once it is. Each report carries the rank's world contract,
  and ``rank_reports`` goes with every re-registration: a coordinator that lost its state
  rebuilds the worlds from them, and a rejoining trainer's ``RegisterRank`` names the
  world it was served in. While the coordinator is away the streams go on untouched.

A stream that breaks just ends: the trainer reopens at its own position (it knows what
it consumed), so nothing is kept for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mx8_agent.serve.rank_stream import RankSpec, WorldReady, WorldWait
from mx8_agent.serve.shm_ring import ShmRing, ShmSlot
from mx8_agent.serve.trainer_hub import ReadyBatch
from mx8_common.errors import (
    CoordinatorError,
    LeaseLogError,
    NodeNotRegisteredError,
    RegistrationTokenError,
    RequestError,
)
from mx8_common.manifest.table import ManifestTable
from mx8_common.obs.events import Throttled, emit
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.sample_order import EpochOrder, JobOrder, Shard
from mx8_common.storage.fetch_pipeline import FetchConfig, FetchPipeline, FetchRequest
from mx8_common.storage.local_read import is_local
from mx8_common.storage.read_worker import ReadWorkers

__all__ = ["RankServer", "RankStream"]

_COMPONENT = "agent"
#: How often a rank whose world is incomplete asks the coordinator again: soon at first
#: (ranks started together join within milliseconds), then every quarter second.
_JOIN_POLL_FIRST_S = 0.01
_JOIN_POLL_S = 0.25
_MAX_REPORTS = 4096
#: Status codes of a coordinator away for now (restarting, or a Service between leaders).
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@dataclass(eq=False)
class _Slot:
    """One batch of one stream: requested, then filled, then sent, then acknowledged."""

    epoch: int
    step: int
    ids: np.ndarray
    last: bool
    charge: int
    parts: list[bytes] = field(default_factory=list)
    seq: int = 0
    #: Read straight into the stream's shared memory: where, and whether it is filled.
    shared: ShmSlot | None = None
    filled: bool = False
    #: Read by the trainer itself: the paths of its whole local files.
    local_files: list[str] | None = None

    @property
    def done(self) -> bool:
        if self.local_files is not None:
            return True
        if self.shared is not None:
            return self.filled
        return len(self.parts) == len(self.ids)


class RankStream:
    """One trainer rank's stream: its plan of batches and the ones in flight."""

    def __init__(
        self,
        spec: RankSpec,
        plan: Iterator[tuple[int, int, Any]],
        ring: ShmRing | None = None,
    ):
        self.spec = spec
        self.ring = ring
        #: Empty until the rank's world is complete (its batches are read meanwhile).
        self.world_id = ""
        self._plan = _lookahead(plan)
        self.pending: tuple[int, int, np.ndarray, bool] | None = None
        self.requested: collections.deque[_Slot] = collections.deque()
        self.sent: collections.deque[_Slot] = collections.deque()
        self.plan_done = False
        self.next_seq = 1
        self.reserved = 0
        self.closed = False
        self.ready = asyncio.Event()
        #: The position after the last acknowledged batch, and whether it ended the job.
        self.acked = (spec.epoch, spec.step)
        self.finished = False
        self.batches_sent = 0
        self.samples_acked = 0

    @property
    def has_room(self) -> bool:
        return len(self.requested) + len(self.sent) < max(1, self.spec.window)

    def next_plan(self) -> tuple[int, int, np.ndarray, bool] | None:
        if self.pending is None:
            self.pending = next(self._plan, None)
            if self.pending is None:
                self.plan_done = True
                self.ready.set()
        return self.pending


def _lookahead(plan: Iterator[tuple[int, int, Any]]) -> Iterator[tuple[int, int, Any, bool]]:
    """``(epoch, step, ids, last)``: ``last`` marks the job's final batch."""
    prev = next(plan, None)
    for item in plan:
        assert prev is not None
        yield (*prev, False)
        prev = item
    if prev is not None:
        yield (*prev, True)


class RankServer:
    """Serves the local trainer ranks of a rank-exact job (see the module docstring)."""

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        job_id: str,
        node_id: str,
        table: ManifestTable,
        job_order: JobOrder,
        epochs: int,
        reader: Any,
        fetch_config: FetchConfig,
        report_interval_s: float,
        read_workers: int = 1,
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._node_id = node_id
        self._table = table
        self._job_order = job_order
        self._epochs = epochs
        self._reader = reader
        self._fetch_config = fetch_config
        self.max_bytes = fetch_config.max_inflight_bytes
        self._interval_s = report_interval_s
        self._estimate = fetch_config.unknown_size_estimate
        self._orders: dict[int, EpochOrder] = {}
        self._streams: dict[str, RankStream] = {}
        self._turn = 0
        self._feed = asyncio.Event()
        #: Set (and replaced) when a local rank's world forms: the host's other ranks
        #: waiting to join ask again at once instead of at their next poll.
        self._world_formed = asyncio.Event()
        self._error: BaseException | None = None
        self._reports: dict[str, cpb.RankProgress] = {}
        self.reserved_bytes = 0
        self.peak_reserved_bytes = 0
        self.pipeline: FetchPipeline | None = None
        self.drained = asyncio.Event()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self.samples_acked = 0
        self.batches_sent = 0
        self.first_batch_at: float | None = None
        #: Batches whose local files their trainer read itself (``trainer_reads``).
        self.batches_trainer_read = 0
        self._retry_log = Throttled()  # the coordinator away: one line every few seconds
        self._read_workers = ReadWorkers(read_workers)
        self._direct_jobs: set[asyncio.Future[float]] = set()
        self._direct_error: BaseException | None = None

    # -- views --------------------------------------------------------------------------

    @property
    def streams(self) -> list[RankStream]:
        return list(self._streams.values())

    def _order(self, epoch: int) -> EpochOrder:
        order = self._orders.get(epoch)
        if order is None:
            order = self._orders[epoch] = self._job_order.order(epoch)
            if len(self._orders) > 4:
                del self._orders[min(self._orders)]
        return order

    def shard(self, spec: RankSpec, epoch: int, offset: int = 0) -> Shard:
        return Shard(
            self._order(epoch), spec.rank, spec.world_size, spec.drop_last, spec.batch_size, offset
        )

    def _plan(self, spec: RankSpec) -> Iterator[tuple[int, int, np.ndarray]]:
        """The rank's batches from its start to the end of the job: (epoch, step, ids)."""
        epoch, offset, base = spec.epoch, spec.offset, spec.base_step
        local = spec.step - base
        while epoch < self._epochs:
            shard = self.shard(spec, epoch, offset)
            for b in range(max(0, local), shard.batches):
                yield epoch, base + b, shard.batch_ids(b)
            epoch, offset, base, local = epoch + 1, 0, 0, 0

    def first_batch_bytes(self, spec: RankSpec) -> int:
        """Bytes of the batch ``spec`` starts at; 0 past the job's end or when the
        manifest has no sizes (what its shared memory is first sized for)."""
        if spec.epoch >= self._epochs:
            return 0
        shard = self.shard(spec, spec.epoch, spec.offset)
        local = spec.step - spec.base_step
        if not 0 <= local < shard.batches:
            return 0
        lengths = self._table.byte_length[shard.batch_ids(local).astype(np.int64)]
        return 0 if len(lengths) == 0 or int(lengths.min()) < 0 else int(lengths.sum())

    # -- joining ------------------------------------------------------------------------

    async def join(self, spec: RankSpec) -> AsyncIterator[WorldWait | WorldReady]:
        """Register the rank until its world is complete: ``WorldWait``s, then one
        ``WorldReady``. The coordinator's ``ContractError`` comes through as it is."""
        request = cpb.RegisterRankRequest(
            job_id=self._job_id,
            node_id=self._node_id,
            instance_id=spec.instance_id,
            rank=spec.rank,
            world_size=spec.world_size,
            batch_size=spec.batch_size,
            drop_last=spec.drop_last,
            epoch=spec.epoch,
            step=spec.step,
            consumed=spec.consumed,
            resumed=spec.resumed,
        )
        if spec.seed is not None:
            request.seed = spec.seed
        if spec.shuffle is not None:
            request.shuffle = spec.shuffle
        before = self._reports.get(spec.instance_id)
        if before is not None:
            request.world_id = before.world_id  # a rejoin: say which world
        poll = _JOIN_POLL_FIRST_S
        while True:
            if self._error is not None:
                raise self._error
            # Taken before asking: a world formed while the question is on its way wakes
            # this rank too.
            news = self._world_formed
            try:
                answer = await self._client.register_rank(request)
            except (CoordinatorError, LeaseLogError) as exc:
                if isinstance(exc, CoordinatorError) and exc.code not in _TRANSIENT:
                    raise
                self._retry_log.emit(_COMPONENT, "rank_join_retry", rank=spec.rank, error=exc)
                yield WorldWait(spec.world_size, (), ())
            else:
                if answer.ready:
                    self._world_formed.set()
                    self._world_formed = asyncio.Event()
                    yield WorldReady(answer.world_id)
                    return
                yield WorldWait(
                    answer.world_size,
                    tuple(answer.registered_ranks),
                    tuple(answer.missing_ranks),
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await news.wait()
            poll = min(_JOIN_POLL_S, poll * 1.5)

    # -- streams ------------------------------------------------------------------------

    def open(self, spec: RankSpec, ring: ShmRing | None = None) -> RankStream:
        """Start reading ``spec``'s rank's batches (a newer stream of the same trainer
        replaces one); with ``ring``, batches of local files are read straight into it.
        Its progress is reported once ``joined`` names its world."""
        old = self._streams.get(spec.instance_id)
        if old is not None:
            self.close(old)
        stream = RankStream(spec, self._plan(spec), ring)
        self._streams[spec.instance_id] = stream
        self._no_streams.clear()
        self._feed.set()
        return stream

    def joined(self, stream: RankStream, world_id: str) -> None:
        """``stream``'s world is complete: report its rank's progress in that world."""
        stream.world_id = world_id
        self._note_progress(stream)

    def close(self, stream: RankStream) -> None:
        """The trainer left: drop what was fetched for it (it reopens where it is)."""
        if stream.closed:
            return
        stream.closed = True
        stream.ready.set()
        for slot in (*stream.requested, *stream.sent):
            self._release(stream, slot)
        stream.requested.clear()
        stream.sent.clear()
        if self._streams.get(stream.spec.instance_id) is stream:
            del self._streams[stream.spec.instance_id]
        if not self._streams:
            self._no_streams.set()
        self._feed.set()

    async def wait_no_streams(self) -> None:
        await self._no_streams.wait()

    async def next_batch(self, stream: RankStream) -> tuple[int, ReadyBatch] | None:
        """The stream's next ``(batch_seq, batch)`` in order; None at the end of the job."""
        while True:
            if self._error is not None:
                raise self._error
            if stream.closed:
                raise RequestError(
                    f"a newer stream of trainer {stream.spec.instance_id} replaced this one",
                    field="trainer_id",
                )
            if stream.requested and stream.requested[0].done:
                slot = stream.requested.popleft()
                slot.seq = stream.next_seq
                stream.next_seq += 1
                stream.sent.append(slot)
                stream.batches_sent += 1
                self.batches_sent += 1
                if self.first_batch_at is None:
                    self.first_batch_at = time.monotonic()
                return slot.seq, self._batch(slot, self._ack_slack(stream, slot))
            if stream.plan_done and not stream.requested:
                return None
            stream.ready.clear()
            await stream.ready.wait()

    def ack(self, stream: RankStream, batch_seq: int) -> int:
        """Every batch up to ``batch_seq`` is consumed: free its budget, move progress."""
        n = 0
        while stream.sent and stream.sent[0].seq <= batch_seq:
            slot = stream.sent.popleft()
            self._release(stream, slot)
            stream.acked = (slot.epoch, slot.step + 1)
            stream.finished = slot.last
            stream.samples_acked += len(slot.ids)
            self.samples_acked += len(slot.ids)
            n += 1
        if n:
            self._note_progress(stream)
            self._feed.set()
        return n

    def fail(self, error: BaseException) -> None:
        """Every stream raises ``error`` from now on."""
        self._error = error
        for stream in self._streams.values():
            stream.ready.set()

    @staticmethod
    def _ack_slack(stream: RankStream, slot: _Slot) -> int:
        """How many batches after ``slot`` its trainer may take before acknowledging:
        at most the ones already being read for it (they come without an acknowledgement,
        so a trainer waiting for its next batch has always been told to acknowledge), and
        at most half its window less one (acknowledgements free the window while the
        rest is read ahead)."""
        if slot.last:
            return 0
        return max(0, min(len(stream.requested), stream.spec.window // 2 - 1))

    def _batch(self, slot: _Slot, ack_slack: int) -> ReadyBatch:
        offsets = np.zeros(len(slot.ids) + 1, dtype=np.uint64)
        if slot.shared is not None or slot.local_files is not None:
            np.cumsum(self._table.byte_length[slot.ids.astype(np.int64)], out=offsets[1:])
        else:
            np.cumsum([len(p) for p in slot.parts], out=offsets[1:])
        labels = None
        if self._table.has_labels:
            labels = self._table.label_id[slot.ids.astype(np.int64)].astype(np.int64)
        return ReadyBatch(
            lease_id="",
            epoch=slot.epoch,
            first_pos=0,
            sample_ids=slot.ids,
            parts=slot.parts,
            offsets=offsets,
            labels=labels,
            step=slot.step,
            shared=slot.shared,
            ack_slack=ack_slack,
            local_files=slot.local_files,
            listed_at=self._listed_at() if slot.local_files is not None else None,
        )

    # -- budget -------------------------------------------------------------------------

    def _charge(self, ids: np.ndarray) -> int:
        lengths = self._table.byte_length[ids.astype(np.int64)]
        unknown = int((lengths < 0).sum())
        return int(lengths[lengths >= 0].sum()) + unknown * self._estimate

    def _release(self, stream: RankStream, slot: _Slot) -> None:
        if slot.charge:
            self.reserved_bytes -= slot.charge
            stream.reserved -= slot.charge
            slot.charge = 0

    def _fits(self, stream: RankStream, charge: int) -> bool:
        # A stream holding nothing may always take one batch: no rank starves.
        return stream.reserved == 0 or self.reserved_bytes + charge <= self.max_bytes

    def _pick(self) -> tuple[RankStream, tuple[int, int, np.ndarray, bool]] | None:
        """The next stream (in turn) with room for its next batch, and that batch."""
        streams = [s for s in self._streams.values() if not s.closed]
        for k in range(len(streams)):
            stream = streams[(self._turn + k) % len(streams)]
            if stream.plan_done or not stream.has_room:
                continue
            item = stream.next_plan()
            if item is None:
                continue
            if self._fits(stream, self._charge(item[2])):
                self._turn = (self._turn + k + 1) % len(streams)
                return stream, item
        return None

    # -- fetching -----------------------------------------------------------------------

    async def _requests(self) -> AsyncIterator[FetchRequest]:
        table = self._table
        while True:
            if self._direct_error is not None:
                raise self._direct_error
            picked = self._pick()
            if picked is None:
                self._feed.clear()
                await self._feed.wait()
                continue
            stream, (epoch, step, ids, last) = picked
            stream.pending = None
            charge = self._charge(ids)
            slot = _Slot(epoch, step, ids, last, charge)
            stream.reserved += charge
            self.reserved_bytes += charge
            self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
            stream.requested.append(slot)
            rows = ids.astype(np.int64)
            if self._trainer_reads(stream, slot, rows):
                stream.ready.set()
                continue
            if self._read_direct(stream, slot, rows):
                continue
            offsets = table.byte_offset[rows].tolist()
            lengths = table.byte_length[rows].tolist()
            for sid, off, length in zip(rows.tolist(), offsets, lengths, strict=True):
                yield FetchRequest(
                    sid,
                    table.location(sid),
                    None if off < 0 else off,
                    None if length < 0 else length,
                    (stream, slot),
                )

    def _local_sized(self, rows: np.ndarray) -> list[str] | None:
        """The batch's locations when every sample is local and of known size (what a
        reader on this host can read in place with the snapshot's checks); else None."""
        table = self._table
        if len(rows) == 0 or int(table.byte_length[rows].min()) < 0:
            return None
        locations = [table.location(r) for r in rows.tolist()]
        return locations if all(map(is_local, locations)) else None

    def _trainer_reads(self, stream: RankStream, slot: _Slot, rows: np.ndarray) -> bool:
        """Hand the batch to a trainer that reads local files itself: only their paths
        go (each rank reads its own batches, in parallel, like embedded mode); False: the
        trainer did not ask, is not on this host (no ring), or the batch is not whole
        local files."""
        if not stream.spec.trainer_reads or stream.ring is None:
            return False
        if int(self._table.byte_offset[rows].max(initial=-1)) >= 0:
            return False  # ranges of shared objects: read here
        slot.local_files = self._local_sized(rows)
        if slot.local_files is None:
            return False
        self.batches_trainer_read += 1
        return True

    def _read_direct(self, stream: RankStream, slot: _Slot, rows: np.ndarray) -> bool:
        """Start reading the batch straight into the stream's ring; False: it cannot be
        (no ring, not local, sizes unknown, no room), fetch it the usual way."""
        ring, table = stream.ring, self._table
        if ring is None:
            return False
        locations = self._local_sized(rows)
        if locations is None:
            return False
        lengths = table.byte_length[rows]
        shared = ring.reserve(int(lengths.sum()))
        if shared is None:
            return False
        slot.shared = shared
        offsets = table.byte_offset[rows].tolist()
        items = [
            (loc, None if off < 0 else off, n)
            for loc, off, n in zip(locations, offsets, lengths.tolist(), strict=True)
        ]
        assert shared.owner is not None
        job = self._read_workers.read(items, shared.owner, shared.offset, self._listed_at())
        job.add_done_callback(lambda fut: self._direct_done(stream, slot, len(items), fut))
        self._direct_jobs.add(job)
        return True

    def _listed_at(self) -> float | None:
        return getattr(self._reader, "listed_at", None)

    def _direct_done(
        self, stream: RankStream, slot: _Slot, n: int, fut: asyncio.Future[float]
    ) -> None:
        self._direct_jobs.discard(fut)
        if fut.cancelled():
            return
        error = fut.exception()
        if stream.closed or (stream.ring is not None and stream.ring.closed):
            return  # its ring is gone; the trainer reopens where it is
        if error is not None:
            # Every stream hears it now; the request feed raises it, which ends ``run``
            # like a failed pipeline read (the agent stops on it).
            self._direct_error = error
            self.fail(error)
            self._feed.set()
            return
        assert slot.shared is not None
        stats = getattr(self._reader, "stats", None)
        if stats is not None:  # counted like the reader's own reads
            stats.reads += n
            stats.bytes += slot.shared.length
            stats.local_batches += 1
        slot.filled = True
        stream.ready.set()

    async def _fetch(self) -> None:
        async with FetchPipeline(self._reader, self._requests(), self._fetch_config) as pipe:
            self.pipeline = pipe
            async for result in pipe:
                stream, slot = result.tag
                slot.parts.append(result.data)
                if slot.done and not stream.closed:
                    actual = sum(map(len, slot.parts))
                    # An estimated charge (no byte_length) becomes what arrived.
                    self.reserved_bytes += actual - slot.charge
                    stream.reserved += actual - slot.charge
                    slot.charge = actual
                    stream.ready.set()

    # -- progress -----------------------------------------------------------------------

    def _note_progress(self, stream: RankStream) -> None:
        epoch, step = stream.acked
        if epoch > self._epochs:  # a trainer that set an epoch past the job: it is done
            epoch, step = self._epochs, 0
        spec = stream.spec
        self._reports[spec.instance_id] = cpb.RankProgress(
            rank=spec.rank,
            instance_id=spec.instance_id,
            world_id=stream.world_id,
            world_size=spec.world_size,
            epoch=epoch,
            step=step,
            finished=stream.finished,
            batch_size=spec.batch_size,
            drop_last=spec.drop_last,
        )
        while len(self._reports) > _MAX_REPORTS:
            del self._reports[next(iter(self._reports))]

    def rank_reports(self) -> list[cpb.RankProgress]:
        """Every rank's latest progress, with its contract (sent on re-registration)."""
        return list(self._reports.values())

    async def report_now(self) -> bool:
        """Report every rank's progress; True when the coordinator says the job is drained."""
        try:
            resp = await self._client.report_ranks(
                self._job_id, self._node_id, list(self._reports.values())
            )
        except (NodeNotRegisteredError, RegistrationTokenError) as exc:
            # A restarted coordinator knows this node (with the token it holds) once the
            # heartbeat registers it again.
            self._retry_log.emit(_COMPONENT, "progress_report_failed", error=exc)
            return False
        except CoordinatorError as exc:
            if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION"):
                raise
            self._retry_log.emit(_COMPONENT, "progress_report_failed", error=exc)
            return False
        except LeaseLogError as exc:
            # A leader that cannot reach its state store, or a deposed one: report again.
            self._retry_log.emit(_COMPONENT, "progress_report_failed", error=exc)
            return False
        if resp.job_drained and not self.drained.is_set():
            self.drained.set()
            emit(_COMPONENT, "job_drained", node_id=self._node_id)
        return resp.job_drained

    async def _report_loop(self) -> None:
        while not await self.report_now():
            await asyncio.sleep(self._interval_s)

    async def run(self) -> None:
        """Fetch for the streams and report progress until the job is drained."""
        if len(self._table) and is_local(self._table.location(0)):
            self._read_workers.start()  # a local folder: its batches go through them
        fetch = asyncio.create_task(self._fetch(), name="mx8-agent-rank-fetch")
        report = asyncio.create_task(self._report_loop(), name="mx8-agent-rank-report")
        try:
            done, _ = await asyncio.wait({fetch, report}, return_when=asyncio.FIRST_COMPLETED)
            if fetch in done and fetch.exception() is not None:
                error = fetch.exception()
                assert error is not None
                self.fail(error)
                raise error
            if report in done and report.exception() is not None:
                raise report.exception()  # type: ignore[misc]
        finally:
            for task in (fetch, report):
                task.cancel()
            await asyncio.gather(fetch, report, return_exceptions=True)
            if self._direct_jobs:
                await asyncio.gather(*self._direct_jobs, return_exceptions=True)
            await self._read_workers.aclose()

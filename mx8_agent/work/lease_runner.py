"""Leases in, batches out, acknowledged progress back: the agent's work loop.

Only started after a full, valid manifest ingest. Three tasks share one ``AckTracker``:

* the **lease loop** holds up to ``leases_ahead`` leases: it asks the coordinator for
  more (only once a trainer has opened a stream, so an idle host takes no work), emits
  ``lease_started`` and queues each lease for fetching;
* the **deliverer** turns queued leases into ``FetchRequest``s in the epoch's order
  (``EpochOrder.ids(cursor, end)``), runs them through one ``FetchPipeline`` and cuts the
  results into batches of the trainers' batch size that never cross a lease boundary;
* the **reporter** sends acknowledged cursors eagerly: when an acknowledgement moves a
  cursor and no report is in flight it reports at once (at most one report every
  ``min_report_gap_s``), and acknowledgements that arrive meanwhile go in the next one,
  so what trainers consumed but the coordinator has not committed is at most one report
  round-trip of acknowledgements. Every progress interval it reports every held lease
  (which keeps unmoved leases alive), drops leases the coordinator took back, and frees a
  slot when a lease completes.

No trainer, no leases: once every trainer of the host has been gone for
``no_trainer_grace_s``, the runner reports each held lease's cursor with ``release`` (the
coordinator re-queues the rest for other hosts at once), drops its batches and asks for
no more until a trainer connects again.

Fencing: the hub asks the ``LeaseFence`` before each batch goes to a trainer, so a batch
of a lease whose renewal is overdue (its local deadline, strictly before the
coordinator's expiry, has passed) or while the coordinator link is in doubt stays held,
and is dropped once the coordinator says the lease is gone: a frozen or cut-off agent
never delivers positions the coordinator gave to another node (``lease_fence``).

Coordinator refusals arrive as typed errors and are told apart by class, never by text:
a lease the coordinator took back (``LeaseNotFoundError``: expired or unknown;
``LeaseStateError``: completed or held elsewhere) is dropped and the rest go on, while
anything else (a ``ManifestChangedError``, a refused request) stops the runner.

Memory: the pipeline holds at most its own budget; the batch being cut plus queued and
unacknowledged batches wait for room under the hub's budget; the two budgets add up to
``--max-inflight-bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub
from mx8_agent.work.ack_tracker import AckTracker, LeaseRef
from mx8_agent.work.lease_fence import LeaseFence
from mx8_common.errors import (
    CoordinatorError,
    JobNotReadyError,
    LeaseLogError,
    LeaseNotFoundError,
    LeaseStateError,
    Mx8Error,
    NodeNotRegisteredError,
    RegistrationTokenError,
)
from mx8_common.manifest.table import ManifestTable
from mx8_common.obs.events import Throttled, emit
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.rpc.reply_checks import check_lease
from mx8_common.sample_order import EpochOrder, JobOrder
from mx8_common.storage.fetch_pipeline import FetchConfig, FetchPipeline, FetchRequest
from mx8_common.storage.sample_reader import SampleReader

__all__ = ["LeaseClient", "LeaseRunner", "RunnerStats"]

_COMPONENT = "agent"
#: Status codes of a coordinator that did not answer (no typed refusal): try again later.
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
#: RequestLease refusals to wait out: the world is not frozen yet, a restarted
#: coordinator does not know this node until the heartbeat registers it again, or the
#: coordinator's lease log cannot take records now (its store is away, or it is being
#: replaced by a standby).
_WAIT_ERRORS = (JobNotReadyError, NodeNotRegisteredError, LeaseLogError)
#: ReportProgress refusals meaning the lease is gone (expired, unknown, completed or held
#: elsewhere, a coordinator that forgot this node, or another agent registered this node
#: id after this one went silent): drop it, keep the others.
_LOST_LEASE_ERRORS = (
    LeaseNotFoundError,
    LeaseStateError,
    NodeNotRegisteredError,
    RegistrationTokenError,
)
_REQUEST_CHUNK = 4096


class LeaseClient(Protocol):
    """The coordinator calls the runner makes (``CoordinatorClient`` is the real one)."""

    async def request_lease(
        self, job_id: str, node_id: str, want: int
    ) -> cpb.RequestLeaseResponse: ...

    async def report_progress(
        self, job_id: str, node_id: str, lease_id: str, cursor: int, *, release: bool = False
    ) -> cpb.ReportProgressResponse: ...


@dataclass
class RunnerStats:
    """Totals of the runner (read by metrics and heartbeats)."""

    leases_started: int = 0
    leases_completed: int = 0
    leases_dropped: int = 0
    samples_acked: int = 0
    progress_reports: int = 0
    batches_made: int = 0
    partial_bytes: int = 0
    peak_inflight_bytes: int = 0
    first_lease_at: float | None = None
    dropped: set[str] = field(default_factory=set)


class LeaseRunner:
    """Leases -> fetches -> batches for the hub -> acknowledged progress reports."""

    def __init__(
        self,
        *,
        client: LeaseClient,
        job_id: str,
        node_id: str,
        table: ManifestTable,
        job_order: JobOrder,
        reader: SampleReader,
        fetch_config: FetchConfig,
        hub: TrainerHub,
        leases_ahead: int,
        progress_interval_s: float,
        lease_ttl_s: float,
        stall_s: float,
        retry_wait_s: float = 1.0,
        no_trainer_grace_s: float = 5.0,
        max_unreported_batches: int = 0,
        min_report_gap_s: float = 0.0,
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._node_id = node_id
        self._table = table
        self._job_order = job_order
        self._reader = reader
        self._fetch_config = fetch_config
        self._hub = hub
        self._leases_ahead = leases_ahead
        # Several renewals per TTL, whatever --progress-interval-ms says.
        self._interval_s = min(progress_interval_s, lease_ttl_s / 4)
        self._min_gap_s = min(min_report_gap_s, self._interval_s)
        self.fence = LeaseFence(
            ttl_s=lease_ttl_s, stall_s=stall_s, max_ahead=max_unreported_batches
        )
        #: Set when a batch waited for confirmed progress: hand it out after a report.
        self._held_ahead = False
        #: Leases held back by the fence (one ``lease_fenced`` event each until renewed).
        self._fenced: set[str] = set()
        hub.deliverable = self._deliverable
        self._no_trainer_grace_s = no_trainer_grace_s
        #: Set while the host has had no trainer for the grace: take no leases.
        self._idle = False
        self._busy_again = asyncio.Event()
        self._job_drained = False
        self._retry_wait_s = retry_wait_s
        self._retry_log = Throttled()  # retry lines: one per event every few seconds
        self.tracker = AckTracker()
        self.stats = RunnerStats()
        self.pipeline: FetchPipeline | None = None
        self._queue: asyncio.Queue[LeaseRef | None] = asyncio.Queue()
        self._orders: dict[int, EpochOrder] = {}
        self._freed = asyncio.Event()
        self._report_soon = asyncio.Event()
        self._has_labels = table.has_labels

    # -- public -------------------------------------------------------------------------

    @property
    def inflight_bytes(self) -> int:
        """Bytes held by the pipeline, the batch being cut, and the hub."""
        pipeline = self.pipeline.stats.inflight_bytes if self.pipeline is not None else 0
        return pipeline + self.stats.partial_bytes + self._hub.held_bytes

    def note_drained(self) -> None:
        """A heartbeat said the job drained: an idle runner (no trainer) ends too."""
        self._job_drained = True
        self._busy_again.set()

    def on_acked(self, batch: ReadyBatch) -> None:
        """Hub callback: trainers consumed ``batch``; its positions may now be reported."""
        n = len(batch)
        if self.tracker.ack(batch.lease_id, batch.first_pos, batch.first_pos + n):
            self.stats.samples_acked += n
            # Report eagerly: the reporter coalesces acks that come while one is in flight.
            self._report_soon.set()

    async def run(self) -> None:
        """Lease, fetch and report until the coordinator says the job is drained."""
        reporter = asyncio.create_task(self._report_loop(), name="mx8-agent-reporter")
        leaser = asyncio.create_task(self._lease_loop(), name="mx8-agent-leaser")
        deliverer = asyncio.create_task(self._deliver(), name="mx8-agent-deliverer")
        idler = asyncio.create_task(self._idle_loop(), name="mx8-agent-idler")
        tasks = {reporter, leaser, deliverer, idler}
        try:
            pending = {leaser, deliverer}
            while pending:
                done, _ = await asyncio.wait(
                    pending | {reporter, idler}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                pending -= done
                if reporter in done or idler in done:
                    raise RuntimeError("the progress reporter stopped unexpectedly")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.report_now()

    # -- leases -------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        # No trainer, no batch size, no leases: idle hosts leave the work to others.
        await self._hub.wait_batch_size()
        while True:
            if self._idle and not self._job_drained:
                await self._busy_again.wait()
                continue
            free = self._leases_ahead - len(self.tracker)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            sent_at = self.fence.now()
            try:
                resp = await self._client.request_lease(self._job_id, self._node_id, free)
            except (*_WAIT_ERRORS, CoordinatorError) as exc:
                if isinstance(exc, CoordinatorError) and exc.code not in _TRANSIENT_CODES:
                    raise
                self._retry_log.emit(_COMPONENT, "lease_request_retry", reason=exc.event, error=exc)
                await asyncio.sleep(self._retry_wait_s)
                continue
            for le in resp.leases:
                self._start_lease(le, sent_at)
            if resp.job_drained:
                emit(_COMPONENT, "job_drained", node_id=self._node_id)
                break
            if not resp.leases:
                self._freed.clear()
                wait_s = max(0.01, resp.wait_ms / 1000)
                try:
                    async with asyncio.timeout(wait_s):
                        await self._freed.wait()
                except TimeoutError:
                    pass
        self._queue.put_nowait(None)

    def _start_lease(self, le: Any, sent_at: float) -> None:
        # A range past the manifest would index outside the table: fail closed, never crash.
        check_lease(le, total_samples=self._job_order.total_samples)
        self.fence.granted(le.lease_id, sent_at)
        ref = LeaseRef(
            lease_id=le.lease_id,
            epoch=int(le.range.epoch),
            start=int(le.range.start_id),
            end=int(le.range.end_id),
            cursor=int(le.cursor),
        )
        self.tracker.add(ref)
        self.stats.leases_started += 1
        if self.stats.first_lease_at is None:
            self.stats.first_lease_at = time.monotonic()
        emit(
            _COMPONENT,
            "lease_started",
            lease_id=ref.lease_id,
            node_id=self._node_id,
            epoch=ref.epoch,
            start=ref.start,
            end=ref.end,
            cursor=ref.cursor,
        )
        self._queue.put_nowait(ref)

    # -- fetching -----------------------------------------------------------------------

    def _order(self, epoch: int) -> EpochOrder:
        order = self._orders.get(epoch)
        if order is None:
            order = self._orders[epoch] = self._job_order.order(epoch)
        return order

    async def _requests(self) -> AsyncIterator[FetchRequest]:
        table = self._table
        while (lease := await self._queue.get()) is not None:
            order = self._order(lease.epoch)
            pos = lease.cursor
            while pos < lease.end and lease.lease_id not in self.stats.dropped:
                stop = min(lease.end, pos + _REQUEST_CHUNK)
                ids = order.ids(pos, stop).astype(np.int64)
                offsets = table.byte_offset[ids].tolist()
                lengths = table.byte_length[ids].tolist()
                for k, (sid, off, length) in enumerate(
                    zip(ids.tolist(), offsets, lengths, strict=True)
                ):
                    yield FetchRequest(
                        sid,
                        table.location(sid),
                        None if off < 0 else off,
                        None if length < 0 else length,
                        (lease, pos + k),
                    )
                pos = stop

    async def _deliver(self) -> None:
        batch_size = await self._hub.wait_batch_size()
        cut = _BatchCutter(self, self._hub)
        async with FetchPipeline(self._reader, self._requests(), self._fetch_config) as pipe:
            self.pipeline = pipe
            async for result in pipe:
                lease, pos = result.tag
                if lease.lease_id in self.stats.dropped:
                    cut.drop(lease.lease_id)
                    continue
                if cut.lease is not None and cut.lease is not lease:
                    cut.flush()
                # Room for the growing batch is reserved before it grows: back-pressure.
                await self._hub.wait_room(self.stats.partial_bytes + len(result.data))
                cut.add(lease, pos, result.sample_id, result.data)
                self._note_inflight()
                if len(cut) == batch_size or pos + 1 == lease.end:
                    cut.flush()
            cut.flush()
        self._hub.finish()

    def _note_inflight(self) -> None:
        now = self.inflight_bytes
        if now > self.stats.peak_inflight_bytes:
            self.stats.peak_inflight_bytes = now

    def _deliverable(self, batch: ReadyBatch) -> bool:
        """Hub check before a batch goes to a trainer: is its lease surely still ours,
        and not too far ahead of committed progress? (True: it goes now.)"""
        if self.fence.valid(batch.lease_id):
            if not self.fence.may_run_ahead(batch.lease_id, batch.first_pos):
                self._held_ahead = True
                return False
            self.fence.delivered(batch.lease_id, batch.first_pos, batch.first_pos + len(batch))
            return True
        if batch.lease_id not in self._fenced:
            self._fenced.add(batch.lease_id)
            emit(
                _COMPONENT,
                "lease_fenced",
                lease_id=batch.lease_id,
                node_id=self._node_id,
                reason="coordinator_link" if self.fence.link_in_doubt else "renewal_overdue",
            )
        return False

    def make_batch(
        self, lease: LeaseRef, first_pos: int, ids: list[int], payloads: list[bytes]
    ) -> ReadyBatch:
        """A ``ReadyBatch`` of consecutive positions of ``lease`` (labels from the table)."""
        sample_ids = np.asarray(ids, dtype=np.uint64)
        offsets = np.zeros(len(payloads) + 1, dtype=np.uint64)
        np.cumsum([len(p) for p in payloads], out=offsets[1:])
        labels = None
        # The parts are not joined here: the wire message is their one copy (batch_wire).
        if self._has_labels:
            labels = self._table.label_id[sample_ids.astype(np.int64)].astype(np.int64)
        return ReadyBatch(
            lease_id=lease.lease_id,
            epoch=lease.epoch,
            first_pos=first_pos,
            sample_ids=sample_ids,
            parts=payloads,
            offsets=offsets,
            labels=labels,
        )

    # -- progress -----------------------------------------------------------------------

    async def _report_loop(self) -> None:
        clock = self.fence.now
        due = clock() + self._interval_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, due - clock())):
                    await self._report_soon.wait()
            except TimeoutError:
                pass
            self._report_soon.clear()
            if clock() >= due:
                due = clock() + self._interval_s
                await self.report_now()
            else:
                await self.report_now(moved_only=True)
            if self._min_gap_s:
                await asyncio.sleep(self._min_gap_s)

    async def report_now(self, *, moved_only: bool = False) -> None:
        """Report every held lease's acknowledged cursor (unchanged ones keep it alive);
        ``moved_only``: just the leases whose cursor moved since their last report."""
        cursors = self.tracker.unreported() if moved_only else self.tracker.cursors()
        for lease_id, cursor in cursors.items():
            if lease_id not in self.tracker:
                continue  # dropped while an earlier report of this round was in flight
            sent_at = self.fence.now()
            self.fence.renewing(sent_at)
            try:
                resp = await self._client.report_progress(
                    self._job_id, self._node_id, lease_id, cursor
                )
            except _LOST_LEASE_ERRORS as exc:
                self._drop(lease_id, exc)
                continue
            except (CoordinatorError, LeaseLogError) as exc:
                if isinstance(exc, CoordinatorError) and exc.code not in _TRANSIENT_CODES:
                    raise
                self.fence.link_failed()
                self._retry_log.emit(
                    _COMPONENT, "progress_report_failed", lease_id=lease_id, error=exc
                )
                return  # try again next interval
            finally:
                self.fence.renewing(None)
            self.stats.progress_reports += 1
            self.tracker.mark_reported(lease_id, cursor)
            self.fence.renewed(lease_id, sent_at, cursor)
            if self._fenced or self._held_ahead:
                self._fenced.clear()
                self._held_ahead = False
                self._hub.redispatch()  # held batches of renewed leases may go now
            if resp.completed:
                self.fence.forget(lease_id)
                self.tracker.remove(lease_id)
                self.stats.leases_completed += 1
                emit(_COMPONENT, "lease_done", lease_id=lease_id, cursor=cursor)
                self._freed.set()

    # -- no trainer ---------------------------------------------------------------------

    async def _idle_loop(self) -> None:
        """Hand leases back when the host has had no trainer for the grace."""
        await self._hub.wait_batch_size()  # before the first trainer: no lease is taken
        while True:
            await self._hub.wait_no_sessions()
            try:
                async with asyncio.timeout(self._no_trainer_grace_s):
                    await self._hub.wait_sessions()
                continue
            except TimeoutError:
                pass
            self._idle = True
            self._busy_again.clear()
            emit(_COMPONENT, "agent_idle", node_id=self._node_id, leases=len(self.tracker))
            while len(self.tracker):
                await self._release_held()
                if len(self.tracker):
                    try:
                        async with asyncio.timeout(self._interval_s):
                            await self._hub.wait_sessions()
                        break  # a trainer is back: keep what is left
                    except TimeoutError:
                        pass
            await self._hub.wait_sessions()
            self._idle = False
            self._busy_again.set()

    async def _release_held(self) -> None:
        """Report each held lease's cursor with ``release``; drop those given back."""
        for lease_id, cursor in self.tracker.cursors().items():
            try:
                resp = await self._client.report_progress(
                    self._job_id, self._node_id, lease_id, cursor, release=True
                )
            except _LOST_LEASE_ERRORS as exc:
                self._drop(lease_id, exc)
                continue
            except CoordinatorError as exc:
                if exc.code not in _TRANSIENT_CODES:
                    raise
                self.fence.link_failed()
                return  # try again shortly
            self.tracker.remove(lease_id)
            self.fence.forget(lease_id)
            self.stats.dropped.add(lease_id)
            discarded = self._hub.discard_lease(lease_id)
            emit(
                _COMPONENT,
                "lease_released",
                lease_id=lease_id,
                node_id=self._node_id,
                cursor=cursor,
                completed=resp.completed,
                discarded=discarded,
            )
            self._freed.set()

    def _drop(self, lease_id: str, why: Mx8Error) -> None:
        """The coordinator took the lease back (expired): stop delivering it."""
        self.tracker.remove(lease_id)
        self.fence.forget(lease_id)
        self._fenced.discard(lease_id)
        self.stats.dropped.add(lease_id)
        self.stats.leases_dropped += 1
        discarded = self._hub.discard_lease(lease_id)
        emit(
            _COMPONENT,
            "lease_lost",
            lease_id=lease_id,
            discarded=discarded,
            reason=why.event,
            error=str(why),
        )
        self._freed.set()


class _BatchCutter:
    """The batch being cut: consecutive positions of one lease."""

    def __init__(self, runner: LeaseRunner, hub: TrainerHub) -> None:
        self._runner = runner
        self._hub = hub
        self.lease: LeaseRef | None = None
        self._first_pos = 0
        self._ids: list[int] = []
        self._payloads: list[bytes] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, lease: LeaseRef, pos: int, sample_id: int, data: bytes) -> None:
        if self.lease is None:
            self.lease, self._first_pos = lease, pos
        self._ids.append(sample_id)
        self._payloads.append(data)
        self._runner.stats.partial_bytes += len(data)

    def drop(self, lease_id: str) -> None:
        if self.lease is not None and self.lease.lease_id == lease_id:
            self._reset()

    def flush(self) -> None:
        if self.lease is None or not self._ids:
            self._reset()
            return
        batch = self._runner.make_batch(self.lease, self._first_pos, self._ids, self._payloads)
        self._reset()
        self._runner.stats.batches_made += 1
        self._hub.put(batch)

    def _reset(self) -> None:
        self.lease = None
        self._ids = []
        self._payloads = []
        self._runner.stats.partial_bytes = 0

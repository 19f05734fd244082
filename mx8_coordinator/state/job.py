"""One job's state machine: nodes, leases, the lease log, counters and events, no gRPC.

Each call validates its request, changes the in-memory state (registry + scheduler)
synchronously, then awaits the lease log append of what changed before answering, so an
acknowledged lease or progress step survives a crash. Because the state change happens
before the first ``await``, log lines are written in the order the state changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from mx8_common.errors import JobStateError, LeaseLogError, RegistrationTokenError, RequestError
from mx8_common.obs.events import emit
from mx8_common.rpc.job_status import (
    JobCounters,
    JobStatus,
    LeaseStatus,
    NodeStatus,
    RankStatus,
)
from mx8_common.sample_order import RANK_EXACT, JobOrder
from mx8_coordinator.state.lease_log import (
    LeaseLog,
    LeaseLogHeader,
    LeaseLogState,
    new_incarnation,
)
from mx8_coordinator.state.lease_records import (
    DealRecord,
    ExpireRecord,
    IssueRecord,
    LeaseRecord,
    ProgressRecord,
    RankRecord,
)
from mx8_coordinator.state.lease_scheduler import Expiry, Grant, Lease, LeaseScheduler, Progress
from mx8_coordinator.state.node_registry import NodeRegistry, Registration, monotonic_ms
from mx8_coordinator.state.ranks import RankJoin, RankReport, WorldAnswer, WorldRegistry
from mx8_coordinator.state.store_log import StoreLeaseLog
from mx8_coordinator.state.throughput import RateSample, ThroughputTracker
from mx8_coordinator.state.world_file import WorldFile

__all__ = ["HeartbeatResult", "Job", "JobSpec", "lease_seq"]

_COMPONENT = "coordinator"


def lease_seq(lease_id: str) -> int:
    """The sequence number inside a scheduler lease id (``"<incarnation>-L<seq>"``, or
    ``"L<seq>"`` in logs written before incarnations)."""
    return int(lease_id.rpartition("L")[2])


@dataclass(frozen=True, kw_only=True)
class JobSpec(JobOrder):
    """What a job is: its snapshot, its order (``JobOrder``) and its timing."""

    job_id: str
    dataset_link: str
    class_names: tuple[str, ...] = ()
    #: When the snapshot's dataset was listed (Unix seconds; None: unknown). Agents refuse
    #: objects modified after it; without it they check sizes only.
    listed_at: float | None = None
    epochs: int = 1
    lease_ttl_ms: int = 10000
    heartbeat_interval_ms: int = 1000
    freeze_size: int = 1
    mode: str = RANK_EXACT

    def log_header(self) -> LeaseLogHeader:
        return LeaseLogHeader(
            job_id=self.job_id,
            manifest_hash=self.manifest_hash,
            total=self.total_samples,
            block_size=self.block_size,
            shuffle=self.shuffle,
            seed=self.seed,
            epochs=self.epochs,
        )


@dataclass(frozen=True)
class HeartbeatResult:
    job_ready: bool
    job_drained: bool
    world_size: int


class Job:
    """Registration, leasing, progress and expiry of one job."""

    def __init__(
        self,
        spec: JobSpec,
        *,
        log: LeaseLog | StoreLeaseLog | None = None,
        world_file: WorldFile | None = None,
        incarnation: str = "",
        clock: Callable[[], int] = monotonic_ms,
        stall_ms: int | None = None,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._log = log
        #: Raises while the log may not be written (a store log whose term lapsed): called
        #: before anything that logs changes state, so memory never runs ahead of the log.
        self._gate = gate
        #: Rank-exact mode's worlds in the state dir (apart from the lease log).
        self._world_file = world_file
        self._worlds_saved = 0
        self._worlds_lock = asyncio.Lock()
        #: This job's incarnation (the lease log's, or new with no log): agents in
        #: dynamic mode fail closed when it changes under them (progress was lost), and
        #: lease ids carry it so none repeats across incarnations.
        self.incarnation = incarnation or new_incarnation()
        self._clock = clock
        self.registry = NodeRegistry(
            freeze_size=spec.freeze_size, node_ttl_ms=spec.lease_ttl_ms, clock=clock
        )
        self.scheduler = LeaseScheduler(
            total=spec.total_samples,
            epochs=spec.epochs,
            lease_ttl_ms=spec.lease_ttl_ms,
            blocks_for_epoch=lambda e: spec.order(e).block_ranges(),
            clock=clock,
            max_wait_ms=spec.heartbeat_interval_ms,
            id_prefix=f"{self.incarnation}-",
        )
        self.ranks = WorldRegistry(
            job_id=spec.job_id,
            seed=spec.seed,
            shuffle=spec.shuffle,
            epochs=spec.epochs,
            total_samples=spec.total_samples,
            stale_ms=spec.lease_ttl_ms,
            clock=clock,
        )
        self.counters = JobCounters()
        self._samples_by_node: dict[str, int] = {}
        self._draining = False
        self._drained_announced = False
        self._started_mono = clock()
        self._started_unix_ms = int(time.time() * 1000)
        self._committed_here = 0
        #: Samples committed per node by this incarnation (the rate's numerator).
        self._committed_here_by_node: dict[str, int] = {}
        self._rates = ThroughputTracker()
        self._rates.record(self._started_mono, 0, {})  # the rate's base until a window fills
        #: Nodes that were answered "drained": when they go silent they finished.
        self._told_drained: set[str] = set()
        #: When the job drained here (its clock), to freeze the final average.
        self._drained_mono: int | None = None
        #: Last time any call or tick ran; a gap over ``stall_ms`` (None: not watched)
        #: means this process was stalled (see ``_wake``).
        self._awake_ms = clock()
        self._stall_ms = stall_ms

    # -- helpers ---------------------------------------------------------------------

    def unix_ms(self, mono_ms: int) -> int:
        """Wall-clock milliseconds of a time on the job's (monotonic) clock.

        Anchored at the job's start, so one moment always maps to the same wall time
        (reading both clocks on every call made two statuses differ by a millisecond).
        """
        return self._started_unix_ms + (mono_ms - self._started_mono)

    def _check_ids(self, job_id: str, node_id: str | None) -> None:
        if not job_id:
            raise RequestError(
                "job_id is empty; pass the job id the coordinator serves", field="job_id"
            )
        if job_id != self.spec.job_id:
            raise JobStateError(
                f"this coordinator serves job {self.spec.job_id!r}, not {job_id!r}; "
                "point the node at the right coordinator or fix --job-id",
            )
        if node_id is not None and not node_id:
            raise RequestError(
                "node_id is empty; every node needs a stable, unique id", field="node_id"
            )

    def _wake(self) -> None:
        """Before any expiry decision: a gap since the last call or tick longer than
        ``stall_ms`` means this coordinator did not run (SIGSTOP, a paused VM, a frozen
        loop; the server's ticker runs several times per TTL). Nodes could not be heard
        meanwhile, so the gap is not held against their leases: they are postponed by it
        instead of all expiring at once and being delivered twice. Agents fence on their
        own clocks, earlier than any expiry, so a postponed lease is never delivered by
        two nodes."""
        now = self._clock()
        gap = now - self._awake_ms
        self._awake_ms = now
        if self._stall_ms is not None and gap > self._stall_ms:
            self.scheduler.postpone_expiry(gap)
            self.registry.postpone_silence(gap)
            emit(_COMPONENT, "coordinator_stalled", level="warning", gap_ms=gap)

    def check_job(self, job_id: str) -> None:
        """Read-only calls may omit the job id; a wrong one is still refused."""
        if job_id:
            self._check_ids(job_id, None)

    def _check_gate(self) -> None:
        if self._gate is not None:
            self._gate()

    async def _append(self, records: Sequence[LeaseRecord]) -> None:
        if self._log is not None and records:
            await self._log.append(records)

    @property
    def rank_exact(self) -> bool:
        return self.spec.mode == RANK_EXACT

    @property
    def drained(self) -> bool:
        return self.ranks.drained if self.rank_exact else self.scheduler.drained

    def begin_drain(self) -> None:
        """Stop handing out leases (shutdown); reports are still taken."""
        self._draining = True

    # -- restart ---------------------------------------------------------------------

    def restore(self, state: LeaseLogState) -> None:
        """Take over the state a lease log replay produced (and the log's incarnation)."""
        if state.incarnation:
            self.incarnation = state.incarnation
            self.scheduler.id_prefix = f"{state.incarnation}-"
        self.registry.restore(state.ranks)
        self.scheduler.restore(dealt=state.dealt, leases=state.leases, next_seq=state.next_seq)
        for le in state.leases:
            self._samples_by_node[le.node_id] = (
                self._samples_by_node.get(le.node_id, 0) + le.cursor - le.start
            )
        self.counters.leases_issued = len(state.leases)
        self.counters.leases_completed = sum(le.state == "done" for le in state.leases)
        self.counters.leases_expired = sum(le.state == "expired" for le in state.leases)
        self.counters.samples_committed = sum(le.cursor - le.start for le in state.leases)
        emit(
            _COMPONENT,
            "lease_log_replayed",
            records=state.records,
            leases=len(state.leases),
            live_leases=len(self.scheduler.live_leases()),
            epochs_dealt=self.scheduler.epochs_dealt,
            samples_committed=self.counters.samples_committed,
            drained=self.drained,
        )
        self._drained_announced = self.drained
        if self.drained:
            self._drained_mono = self._clock()
            # The log says every epoch is done: nodes that do not come back are not lost.
            self._told_drained.update(state.ranks)

    def restore_worlds(self) -> None:
        """Rank-exact mode: take back the worlds saved in the state dir (blocking read)."""
        if self._world_file is None:
            return
        worlds = self._world_file.load()
        try:
            self.ranks.restore_worlds(worlds)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LeaseLogError(
                f"world file {self._world_file.path} has a malformed world ({exc!r}); delete "
                "it: agents report their worlds again when they re-register",
                path=str(self._world_file.path),
            ) from None
        self._worlds_saved = self.ranks.worlds.version
        if worlds:
            emit(_COMPONENT, "worlds_restored", worlds=len(worlds), path=str(self._world_file.path))

    async def _save_worlds(self) -> None:
        """Write the worlds if they changed; one write at a time, always the latest."""
        if self._world_file is None:
            return
        async with self._worlds_lock:
            version = self.ranks.worlds.version
            if version == self._worlds_saved:
                return
            try:
                await asyncio.to_thread(self._world_file.save, self.ranks.worlds.to_json())
            except OSError as exc:
                # Not the job's progress (agents hold that): a restart rebuilds from them.
                emit(
                    _COMPONENT,
                    "world_file_write_failed",
                    level="warning",
                    path=str(self._world_file.path),
                    error=str(exc),
                )
                return
            self._worlds_saved = version

    # -- RPC bodies ------------------------------------------------------------------

    async def join_rank(self, join: RankJoin) -> WorldAnswer:
        """Rank-exact mode: a trainer rank joins (or rejoins) its world."""
        answer = self.ranks.join(join)
        await self._save_worlds()
        return answer

    def check_reporter(self, job_id: str, node_id: str, token: str) -> None:
        """Rank-exact mode: ``ReportRanks`` comes from the agent that registered
        ``node_id`` (its registration token), like a dynamic progress report."""
        self._check_ids(job_id, node_id)
        self._check_token(node_id, token)

    async def report_ranks(self, reports: Sequence[RankReport]) -> bool:
        """Rank-exact mode: agents' progress (and what rebuilds a lost world); drained?"""
        drained = self.ranks.report(reports)
        await self._save_worlds()
        return drained

    async def register(
        self,
        job_id: str,
        node_id: str,
        hostname: str = "",
        *,
        incarnation: str = "",
        ranks: Sequence[RankReport] = (),
    ) -> Registration:
        self._wake()
        self._check_ids(job_id, node_id)
        self._check_gate()
        if ranks and self.rank_exact:
            # The agent's trainer ranks, checked before the node is taken: a coordinator
            # that lost its state rebuilds their worlds from these.
            self.ranks.report(ranks)
            await self._save_worlds()
        reg = self.registry.register(node_id, hostname, incarnation=incarnation)
        await self._append([RankRecord(node_id=n, rank=r) for n, r in reg.assigned])
        emit(
            _COMPONENT,
            "node_registered",
            node_id=node_id,
            hostname=hostname,
            rank=reg.rank,
            world_size=reg.world_size,
            job_ready=reg.ready,
        )
        return reg

    def _check_token(self, node_id: str, token: str, *, rebind: bool = False) -> None:
        try:
            self.registry.check_token(node_id, token, rebind=rebind)
        except RegistrationTokenError as exc:
            emit(_COMPONENT, exc.event, level="warning", node_id=node_id, error=str(exc))
            raise

    async def heartbeat(
        self,
        job_id: str,
        node_id: str,
        stats: Mapping[str, int] | None = None,
        *,
        token: str = "",
    ) -> HeartbeatResult:
        self._wake()
        self._check_ids(job_id, node_id)
        self._check_token(node_id, token, rebind=True)
        self.registry.heartbeat(node_id, stats)
        self._note_drained_seen(node_id)
        return HeartbeatResult(self.registry.ready, self.drained, self.registry.world_size)

    async def request_lease(
        self, job_id: str, node_id: str, want: int, *, token: str = ""
    ) -> Grant:
        self._wake()
        self._check_ids(job_id, node_id)
        self._check_token(node_id, token)
        if want <= 0:
            raise RequestError(
                "want must be > 0: the number of leases the node wants now", field="want"
            )
        if self.rank_exact:
            raise JobStateError(
                f"job {self.spec.job_id!r} runs in rank-exact mode: agents cut each trainer "
                "rank's batches themselves and take no leases; start the coordinator with "
                "--mode dynamic for leased work",
                node_id=node_id,
            )
        rank = self.registry.require_rank(node_id)
        self._check_gate()
        self.registry.heartbeat(node_id)
        self.registry.note_request(node_id)
        records = self._collect_expiries()
        if self._draining:
            grant = Grant((), (), self.spec.heartbeat_interval_ms, self.drained)
        else:
            grant = self.scheduler.acquire(
                node_id,
                rank,
                world_size=self.registry.world_size,
                departed_ranks=self._stealable_ranks(),
                want=want,
            )
        records += [DealRecord(epoch=d.epoch, world_size=d.world_size) for d in grant.dealt]
        records += [
            IssueRecord(
                lease_id=le.lease_id,
                seq=lease_seq(le.lease_id),
                node_id=le.node_id,
                epoch=le.epoch,
                start=le.start,
                end=le.end,
            )
            for le in grant.leases
        ]
        await self._append(records)
        # A leader stopped (SIGSTOP, a paused VM) while its records were being written may
        # wake deposed: the records are in the log, which the new leader replays, but it
        # answers no lease it can no longer stand behind.
        self._check_gate()
        for d in grant.dealt:
            emit(_COMPONENT, "epoch_dealt", epoch=d.epoch, world_size=d.world_size)
        for le in grant.leases:
            emit(
                _COMPONENT,
                "lease_issued",
                lease_id=le.lease_id,
                node_id=node_id,
                epoch=le.epoch,
                start=le.start,
                end=le.end,
            )
        self.counters.leases_issued += len(grant.leases)
        self._announce_drained()
        self._note_drained_seen(node_id)
        return grant

    def _stealable_ranks(self) -> list[int]:
        """Ranks whose queues another node may take: departed nodes', and idle ones' (live,
        no lease, no request for a few heartbeats: an agent without a trainer)."""
        idle_ms = max(1000, 3 * self.spec.heartbeat_interval_ms)
        holding = {le.node_id for le in self.scheduler.live_leases()}
        idle = self.registry.idle_ranks(idle_ms, holding)
        return sorted(set(self.registry.departed_ranks()) | set(idle))

    async def report_progress(
        self,
        job_id: str,
        node_id: str,
        lease_id: str,
        cursor: int,
        *,
        token: str = "",
        release: bool = False,
    ) -> Progress:
        self._wake()
        self._check_ids(job_id, node_id)
        self._check_token(node_id, token)
        if not lease_id:
            raise RequestError(
                "lease_id is empty; report on a lease RequestLease returned", field="lease_id"
            )
        self._check_gate()
        self.registry.heartbeat(node_id)
        progress = self.scheduler.report(node_id, lease_id, cursor)
        advanced = progress.committed_to - progress.committed_from
        if advanced:
            await self._append([ProgressRecord(lease_id=lease_id, cursor=cursor)])
            self._samples_by_node[node_id] = self._samples_by_node.get(node_id, 0) + advanced
            self.counters.samples_committed += advanced
            self._committed_here += advanced
            by_node = self._committed_here_by_node
            by_node[node_id] = by_node.get(node_id, 0) + advanced
        le = progress.lease
        if progress.completed and advanced:
            self.counters.leases_completed += 1
            emit(
                _COMPONENT,
                "lease_completed",
                lease_id=lease_id,
                node_id=node_id,
                epoch=le.epoch,
                start=le.start,
                end=le.end,
            )
        if progress.epoch_completed:
            emit(
                _COMPONENT,
                "epoch_completed",
                epoch=le.epoch,
                total_samples=self.spec.total_samples,
            )
        if release and not progress.completed:
            await self._release(node_id, lease_id)
        self._announce_drained()
        self._note_drained_seen(node_id)
        return progress

    async def _release(self, node_id: str, lease_id: str) -> None:
        """The node handed the lease back (no trainer): re-queue the rest now."""
        expiry = self.scheduler.release(node_id, lease_id)
        if expiry is None:
            return
        await self._append([ExpireRecord(lease_id=lease_id)])
        le = expiry.lease
        emit(
            _COMPONENT,
            "lease_released",
            lease_id=lease_id,
            node_id=node_id,
            epoch=le.epoch,
            start=le.start,
            end=le.end,
            cursor=le.cursor,
        )
        self.counters.leases_expired += 1
        if expiry.requeued is not None:
            self.counters.leases_requeued += 1

    # -- time ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Depart silent nodes and expire overdue leases (the server calls this often)."""
        self._wake()
        self._sample_rates()
        if self._gate is not None:
            try:
                self._gate()
            except LeaseLogError:
                return  # expiries wait until the log can record them
        await self._append(self._collect_expiries())

    def _rate_sample(self) -> RateSample:
        return RateSample(self._clock(), self._committed_here, self._committed_here_by_node)

    def _sample_rates(self) -> None:
        now = self._rate_sample()
        self._rates.record(now.at_ms, now.total, now.by_node)

    def _note_drained_seen(self, node_id: str) -> None:
        if self.drained:
            self._told_drained.add(node_id)

    def _collect_expiries(self) -> list[LeaseRecord]:
        expiries: list[Expiry] = []
        for node in self.registry.expire_silent():
            finished = node.node_id in self._told_drained
            emit(
                _COMPONENT,
                "node_departed",
                node_id=node.node_id,
                rank=node.rank,
                reason="finished" if finished else "lost",
            )
            expiries += self.scheduler.expire_node(node.node_id)
        expiries += self.scheduler.expire_due()
        records: list[LeaseRecord] = []
        for ex in expiries:
            le = ex.lease
            records.append(ExpireRecord(lease_id=le.lease_id))
            emit(
                _COMPONENT,
                "lease_expired",
                lease_id=le.lease_id,
                node_id=le.node_id,
                epoch=le.epoch,
                start=le.start,
                end=le.end,
                cursor=le.cursor,
            )
            self.counters.leases_expired += 1
            if ex.requeued is not None:
                emit(
                    _COMPONENT,
                    "lease_requeued",
                    from_lease_id=le.lease_id,
                    epoch=ex.requeued.epoch,
                    start=ex.requeued.start,
                    end=ex.requeued.end,
                )
                self.counters.leases_requeued += 1
        return records

    def _announce_drained(self) -> None:
        if self.drained and not self._drained_announced:
            self._drained_announced = True
            self._drained_mono = self._clock()
            emit(
                _COMPONENT,
                "job_drained",
                epochs=self.spec.epochs,
                total_samples=self.spec.total_samples,
                samples_committed=self.counters.samples_committed,
            )

    # -- views -----------------------------------------------------------------------

    def lease_status(self, lease: Lease) -> LeaseStatus:
        """``lease`` as clients see it: wall-clock expiry, the job's seed."""
        return LeaseStatus(
            lease_id=lease.lease_id,
            node_id=lease.node_id,
            epoch=lease.epoch,
            start=lease.start,
            end=lease.end,
            cursor=lease.cursor,
            expires_unix_ms=self.unix_ms(lease.expires_ms),
            seed=self.spec.seed,
        )

    def _rates_now(self) -> tuple[float, str, RateSample]:
        """The job's rate and its basis: recent window while running, frozen once drained."""
        now = self._rate_sample()
        if self._drained_mono is not None:
            elapsed_s = max(1e-3, (self._drained_mono - self._started_mono) / 1000)
            return self._committed_here / elapsed_s, "final", now
        self._rates.record(now.at_ms, now.total, now.by_node)
        return self._rates.rate(now), "window", now

    def status(self) -> JobStatus:
        """A consistent copy of the job's state: ``GetJobSnapshot``, the status page, metrics."""
        spec = self.spec
        rate, basis, now = self._rates_now()
        nodes = tuple(
            NodeStatus(
                node_id=n.node_id,
                hostname=n.hostname,
                rank=n.rank,
                alive=self.registry.is_live(n, now.at_ms),
                finished=n.node_id in self._told_drained,
                last_heartbeat_unix_ms=self.unix_ms(n.last_seen_ms),
                samples_committed=self._samples_by_node.get(n.node_id, 0),
                samples_delivered=n.stats.get("samples_delivered", 0),
                bytes_fetched=n.stats.get("bytes_fetched", 0),
                inflight_bytes=n.stats.get("inflight_bytes", 0),
                fetch_retries=n.stats.get("fetch_retries", 0),
                samples_per_second=(self._rates.rate(now, n.node_id) if basis == "window" else 0.0),
            )
            for n in self.registry.nodes()
        )
        return JobStatus(
            job_id=spec.job_id,
            dataset_link=spec.dataset_link,
            manifest_hash=spec.manifest_hash,
            total_samples=spec.total_samples,
            epochs=spec.epochs,
            world_size=self.registry.world_size,
            job_ready=self.registry.ready,
            job_drained=self.drained,
            started_unix_ms=self._started_unix_ms,
            samples_per_second=rate,
            rate_basis=basis,
            rate_window_ms=self._rates.window_ms,
            throughput_history=tuple((self.unix_ms(at), r) for at, r in self._rates.history()),
            nodes=nodes,
            live_leases=tuple(self.lease_status(le) for le in self.scheduler.live_leases()),
            committed_by_epoch=tuple(self.scheduler.committed(e) for e in range(spec.epochs)),
            counters=replace(self.counters),
            mode=spec.mode,
            ranks=tuple(
                RankStatus(
                    rank=r.rank,
                    world_size=r.world_size,
                    world_id=r.world_id,
                    epoch=r.epoch,
                    step=r.step,
                    finished=r.finished,
                )
                for r in self.ranks.progress()
            ),
        )

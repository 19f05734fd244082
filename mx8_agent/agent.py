"""``Agent``: the per-host daemon's lifecycle around one job.

``start()`` binds the trainer service (``--listen``; TLS with ``--tls-cert``/``--tls-key``,
mutual with ``--tls-ca``, a bearer token with ``MX8_AGENT_AUTH_TOKEN``) with the
``grpc.health.v1`` service beside it (NOT_SERVING until the manifest is ingested, open
without a token), and the metrics exporter. ``run()``
then registers with the coordinator (retrying an unreachable one with backoff until
``--connect-timeout-s``), heartbeats on the interval the coordinator gave, ingests the
manifest (fail closed: a bad manifest raises its ``ManifestError`` and no lease is ever
requested), then serves the job until the coordinator says it is drained: in rank-exact
mode (the coordinator's default) a ``RankServer`` cuts each trainer rank's own batches,
in dynamic mode the ``LeaseRunner`` takes leases; it gives every trainer its end-of-job
message and returns. A coordinator that restarted and
forgot this node is registered with again, from the heartbeat; if it now serves another
manifest hash, the agent fails closed (``coordinator_manifest_changed``, trainers told,
``run()`` raises ``ManifestChangedError``, the CLI exits 2) instead of switching snapshot
under running trainers. In dynamic mode a coordinator whose job incarnation changed
(restarted without its ``--state-dir``: leases it hands out again were delivered
already) fails the agent closed the same way (``coordinator_state_lost``, exit 2)
instead of delivering the job twice. In rank-exact mode losing the coordinator is a
pause: the trainers' streams go on, the agent retries every heartbeat interval (a
``coordinator_lost`` line every few seconds saying what it waits for) and, when a
coordinator answers again (restarted, possibly without its state), registers again
sending its ranks, their world contracts and positions, from which that coordinator
rebuilds the worlds; if it refuses them (``rank_report_refused``) or now runs another job
order, the agent fails closed. A coordinator unheard of for
``--coordinator-lost-timeout-s`` fails the agent (trainers told, exit 2).
``shutdown()`` stops leasing, reports what trainers acknowledged, stops the server and
closes every client; it is safe to call twice, and ``async with`` wraps
``start``/``shutdown`` (the shared part lives in ``mx8_common.rpc.daemon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import secrets
import tempfile
import time
from collections.abc import Coroutine, Iterable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mx8_agent.config import AGENT_AUTH_TOKEN_ENV, AgentConfig
from mx8_agent.ingest.manifest_ingest import IngestSettings, ingest_manifest
from mx8_agent.metrics import AgentMetrics
from mx8_agent.serve.batch_wire import add_agent_service
from mx8_agent.serve.servicer import AgentServicer, JobInfo
from mx8_agent.serve.trainer_hub import TrainerHub
from mx8_agent.work.lease_runner import LeaseRunner
from mx8_agent.work.rank_server import RankServer
from mx8_common import shm
from mx8_common.errors import (
    CoordinatorError,
    CoordinatorReplyError,
    CoordinatorStateLostError,
    LeaseLogError,
    ManifestChangedError,
    Mx8Error,
    NodeIdInUseError,
    NodeNotRegisteredError,
    RankReportError,
    RegistrationTokenError,
    RequestError,
)
from mx8_common.manifest.table import ManifestTable
from mx8_common.obs.events import Throttled, emit
from mx8_common.retry import EQUAL_JITTER, Backoff, Retry
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.daemon import SERVING, Daemon, ServerSettings
from mx8_common.rpc.errors import error_fields
from mx8_common.rpc.proto import agent_pb2
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.rpc.reply_checks import check_registration
from mx8_common.sample_order import DYNAMIC, RANK_EXACT, JobOrder
from mx8_common.storage.object_reader import ObjectReader
from mx8_common.storage.s3_client import S3Settings

__all__ = ["SERVICE_NAME", "Agent"]

#: The trainer-facing gRPC service, as health checks name it.
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
_COMPONENT = "agent"
_MAX_MESSAGE_BYTES = 1 << 30
#: How long a drained (or failed) agent waits for its trainers to read the last message.
_GOODBYE_S = 10.0
#: How long a disconnected trainer's unacknowledged batches wait for it to reconnect
#: before other trainers may take them (a transient break resumes without duplicates).
_RESUME_GRACE_S = 2.0
#: Retrying an unreachable coordinator until ``--connect-timeout-s``: 50 ms doubling to 2 s.
_REGISTER_BACKOFF = Backoff(base_s=0.05, max_s=2.0, jitter=EQUAL_JITTER)
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def _waiting_for(error: BaseException) -> str:
    """What a refused or unanswered coordinator call waits for, for people."""
    if isinstance(error, LeaseLogError):
        return (
            "the coordinator to reach its state store again (it leads but cannot renew its "
            "term, or another coordinator is taking over)"
        )
    return "the coordinator to answer"


class Agent(Daemon):
    """The agent daemon of one host (see the module docstring)."""

    component = _COMPONENT
    service_name = SERVICE_NAME

    def __init__(
        self,
        config: AgentConfig,
        *,
        s3_settings: S3Settings | None = None,
        shutdown_grace_s: float = 1.0,
    ) -> None:
        super().__init__(
            ServerSettings(
                listen=config.listen_target,
                tls=config.tls,
                auth_token=config.auth_token,
                token_env=AGENT_AUTH_TOKEN_ENV,
                max_message_bytes=_MAX_MESSAGE_BYTES,
                http=config.metrics_host_port,
            ),
            shutdown_grace_s=shutdown_grace_s,
        )
        self.config = config
        budget = config.max_inflight_bytes
        # Half the budget for reads in progress, half for batches queued/unacknowledged.
        self._hub_budget = max(1, budget // 2)
        self.fetch_config = dataclasses.replace(
            config.fetch_config(), max_inflight_bytes=max(1, budget - self._hub_budget)
        )
        self.metrics = AgentMetrics(self.stats)
        # Timed inside the reader: a wrapper would hide read_local_many from the pipeline.
        self._reader = ObjectReader(
            config.reader_config(), s3_settings=s3_settings, on_read=self.metrics.observe_read
        )
        self._client = CoordinatorClient(config.coordinator)
        self.hub = TrainerHub(
            max_bytes=self._hub_budget, on_acked=self._on_acked, resume_grace_s=_RESUME_GRACE_S
        )
        self._servicer = AgentServicer(
            hub=self.hub,
            job_info=self.job_info,
            locate=self._locations,
            ranks=self._rank_server,
            shared_memory=Path(config.shm_dir) if config.shm_dir else None,
            shared_max_bytes=self.fetch_config.max_inflight_bytes,
        )
        self._registration: cpb.RegisterNodeResponse | None = None
        self.table: ManifestTable | None = None
        self.runner: LeaseRunner | None = None
        #: Rank-exact mode's server, once the manifest is in (or why there is none).
        self.ranks: RankServer | None = None
        self._ranks_decided = asyncio.Event()
        self._ranks_error: BaseException | None = None
        # Set when the coordinator switched snapshot: nothing may be reported to it.
        self._fenced = False
        self._rng = random.Random()
        #: This process among agents with the same node id (see NodeCaps.incarnation).
        self._incarnation = secrets.token_hex(8)
        self._retry_log = Throttled()  # retry lines: one per event every few seconds

    # -- views --------------------------------------------------------------------------

    def job_info(self) -> JobInfo:
        reg = self._registration
        if reg is None:
            return JobInfo(job_id=self.config.job_id)
        return JobInfo(
            job_id=reg.job_id or self.config.job_id,
            manifest_hash=reg.manifest_hash,
            total_samples=reg.total_samples,
            epochs=reg.epochs,
            class_names=tuple(reg.class_names),
            node_rank=reg.rank,
            world_size=reg.world_size,
            ready=self.table is not None,
            mode=self._mode(reg),
            shuffle=reg.shuffle,
            seed=reg.seed,
            block_size=reg.block_size,
        )

    @staticmethod
    def _mode(reg: cpb.RegisterNodeResponse) -> str:
        # A coordinator that names no mode predates rank-exact mode: it leases.
        return reg.mode or DYNAMIC

    async def _rank_server(self) -> RankServer:
        """Rank-exact mode's server, once the manifest is ingested (the servicer waits)."""
        await self._ranks_decided.wait()
        if self._ranks_error is not None:
            raise self._ranks_error
        assert self.ranks is not None
        return self.ranks

    def _fail_trainers(self, error: BaseException) -> None:
        """Tell every trainer, waiting or streaming, why the agent stops."""
        self.hub.fail(error)
        if self.ranks is not None:
            self.ranks.fail(error)
        if not self._ranks_decided.is_set():
            self._ranks_error = error
            self._ranks_decided.set()

    @property
    def inflight_bytes(self) -> int:
        """Sample bytes held now: pipeline + batch being cut + queued + unacknowledged."""
        if self.ranks is not None:
            return self.ranks.reserved_bytes
        return self.runner.inflight_bytes if self.runner is not None else self.hub.held_bytes

    def stats(self) -> dict[str, float]:
        """A snapshot of the agent's counters and gauges (metrics, heartbeats, tests)."""
        runner = self.runner
        pipeline = runner.pipeline if runner is not None else None
        rs = runner.stats if runner is not None else None
        ranks = self.ranks
        acked = rs.samples_acked if rs is not None else 0
        since = rs.first_lease_at if rs is not None else None
        if ranks is not None:
            acked, since, pipeline = ranks.samples_acked, ranks.first_batch_at, ranks.pipeline
        elapsed = max(1e-3, time.monotonic() - since) if since is not None else None
        read = self._reader.stats
        return {
            "bytes_fetched": read.bytes,
            "samples_fetched": read.reads,
            "samples_acked": acked,
            "fetch_retries": read.retries,
            "local_read_batches": read.local_batches,
            "batches_sent": sum(s.batches_sent for s in self.hub.sessions)
            + (ranks.batches_sent if ranks is not None else 0),
            "batches_requeued": self.hub.requeued_batches,
            "batches_shared": self._servicer.batches_shared,
            "batches_trainer_read": ranks.batches_trainer_read if ranks is not None else 0,
            "shared_memory_trainers": self._servicer.shared_streams,
            "leases_started": rs.leases_started if rs is not None else 0,
            "progress_reports": rs.progress_reports if rs is not None else 0,
            "inflight_bytes": self.inflight_bytes,
            "peak_inflight_bytes": rs.peak_inflight_bytes
            if rs is not None
            else (ranks.peak_reserved_bytes if ranks is not None else 0),
            "queued_batches": self.hub.queued_batches,
            "unacked_batches": self.hub.unacked_batches,
            "running_reads": pipeline.stats.running if pipeline is not None else 0,
            "leases_held": len(runner.tracker) if runner is not None else 0,
            "trainers": len(self.hub.sessions) + (len(ranks.streams) if ranks is not None else 0),
            "bytes_per_second": read.bytes / elapsed if elapsed else 0.0,
            "samples_per_second": acked / elapsed if elapsed else 0.0,
        }

    def _locations(self, sample_ids: np.ndarray) -> list[str]:
        # Batches exist only after the ingest, so the table is there.
        assert self.table is not None
        return [self.table.location(i) for i in sample_ids.tolist()]

    def _on_acked(self, batch: Any) -> None:
        if self.runner is not None:
            self.runner.on_acked(batch)

    # -- start / run ------------------------------------------------------------------

    def _add_services(self, server: grpc.aio.Server) -> None:
        add_agent_service(self._servicer, server)

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        return self.metrics.http_handler()

    async def _open(self) -> None:
        cfg = self.config
        # Segments a killed agent left in /dev/shm (their lock died with it) go now.
        swept = shm.sweep(Path(cfg.shm_dir)) if cfg.shm_dir else 0
        if swept:
            emit(_COMPONENT, "shared_memory_swept", files=swept)
        emit(
            _COMPONENT,
            "agent_listening",
            address=self.address,
            node_id=cfg.node_id,
            metrics_port=self.metrics_port,
            pid=os.getpid(),
            tls=cfg.tls.enabled,
            mutual_tls=cfg.tls.mutual,
            auth_token=cfg.auth_token is not None,
        )

    def _work(self) -> Iterable[tuple[str, Coroutine[Any, Any, Any]]]:
        """Register, ingest, lease until the job is drained; raise what stopped it."""
        return [("main", self._main())]

    async def _main(self) -> None:
        reg = await self._register()
        heartbeat = asyncio.create_task(
            self._heartbeat_loop(reg.heartbeat_interval_ms / 1000), name="mx8-agent-heartbeat"
        )
        work = asyncio.create_task(self._serve_job(reg), name="mx8-agent-work")
        try:
            await asyncio.wait({work, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, heartbeat):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if work.done() and not work.cancelled():
            work.result()  # raise what stopped it
            return
        # The heartbeat loop only ends by raising (a switched snapshot).
        error = heartbeat.exception()
        assert error is not None
        self._fail_trainers(error)
        await self._wait_trainers_gone()
        raise error

    async def _serve_job(self, reg: cpb.RegisterNodeResponse) -> None:
        cache_dir = Path(self.config.cache_dir) if self.config.cache_dir else None
        table_dir = None
        if reg.total_samples >= self.config.table_file_min_rows:
            # A big manifest lives in memory-mapped files, not in this process's RAM.
            table_dir = (cache_dir or Path(tempfile.gettempdir()) / "mx8-agent-cache") / "tables"
        settings = IngestSettings(
            job_id=self.config.job_id,
            manifest_hash=reg.manifest_hash,
            total_samples=reg.total_samples,
            schema_version=reg.schema_version,
            mode=self.config.manifest_ingest,
            max_line_bytes=self.config.max_line_bytes,
            cache_dir=cache_dir,
            table_dir=table_dir,
            attempts=self.config.ingest_attempts,
            chunk_timeout_s=self.config.manifest_chunk_timeout_s,
        )
        try:
            result = await ingest_manifest(self._client, settings, rng=self._rng)
        except Mx8Error as exc:
            # Fail closed: no lease is ever requested; waiting trainers are told why.
            self._fail_trainers(exc)
            await self._wait_trainers_gone()
            raise
        self.table = result.table
        # Trainers can be served from here on: DescribeJob is complete, leasing starts.
        await self.set_health(SERVING)
        order = JobOrder(
            total_samples=reg.total_samples,
            block_size=reg.block_size,
            shuffle=reg.shuffle,
            seed=reg.seed,
            manifest_hash=reg.manifest_hash,
        )
        if self._mode(reg) == RANK_EXACT:
            await self._serve_ranks(reg, order, result.table)
            return
        dynamic_only = RequestError(
            "this job runs in dynamic mode (coordinator --mode dynamic): trainers take "
            "batches as they come; open the stream without a rank contract",
            field="contract",
        )
        self._ranks_error = dynamic_only
        self._ranks_decided.set()
        self.runner = LeaseRunner(
            client=self._client,
            job_id=self.config.job_id,
            node_id=self.config.node_id,
            table=result.table,
            job_order=order,
            reader=self._reader,
            fetch_config=self.fetch_config,
            hub=self.hub,
            leases_ahead=self.config.leases_ahead,
            progress_interval_s=self.config.progress_interval_ms / 1000,
            lease_ttl_s=reg.lease_ttl_ms / 1000,
            # A renewal unanswered for a heartbeat: the coordinator may be gone, hold.
            stall_s=max(0.2, reg.heartbeat_interval_ms / 1000),
            retry_wait_s=max(0.05, reg.heartbeat_interval_ms / 1000),
            no_trainer_grace_s=self.config.no_trainer_grace_ms / 1000,
            max_unreported_batches=self.config.max_unreported_batches,
            min_report_gap_s=self.config.progress_min_gap_ms / 1000,
        )
        try:
            await self.runner.run()
        except Mx8Error as exc:
            fields = error_fields(exc) | {"error": str(exc), "node_id": self.config.node_id}
            emit(_COMPONENT, exc.event, level="error", **fields)
            # Tell the trainers why before going away.
            self._fail_trainers(exc)
            await self._wait_trainers_gone()
            raise
        await self._wait_trainers_gone()
        emit(_COMPONENT, "agent_drained", node_id=self.config.node_id, **self._summary())

    async def _serve_ranks(
        self, reg: cpb.RegisterNodeResponse, order: JobOrder, table: ManifestTable
    ) -> None:
        """Rank-exact mode: serve the trainer ranks until every rank finished the job."""
        # Contract-less streams are dynamic mode's: tell any that came early.
        self.hub.fail(
            RequestError(
                "this job runs in rank-exact mode: open the stream with the trainer's rank "
                "contract (mx8.load does), or run the coordinator with --mode dynamic",
                field="contract",
            )
        )
        self.ranks = RankServer(
            client=self._client,
            job_id=self.config.job_id,
            node_id=self.config.node_id,
            table=table,
            job_order=order,
            epochs=reg.epochs,
            reader=self._reader,
            # One budget for everything: batches are charged from request to ack.
            fetch_config=dataclasses.replace(
                self.fetch_config, max_inflight_bytes=self.config.max_inflight_bytes
            ),
            report_interval_s=self.config.progress_interval_ms / 1000,
            read_workers=self.config.local_read_workers,
        )
        self._ranks_decided.set()
        try:
            await self.ranks.run()
        except Mx8Error as exc:
            fields = error_fields(exc) | {"error": str(exc), "node_id": self.config.node_id}
            emit(_COMPONENT, exc.event, level="error", **fields)
            self._fail_trainers(exc)
            await self._wait_trainers_gone()
            raise
        await self._wait_trainers_gone()
        emit(_COMPONENT, "agent_drained", node_id=self.config.node_id, **self._summary())

    async def _wait_trainers_gone(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_GOODBYE_S):
                await self.hub.wait_no_sessions()
                if self.ranks is not None:
                    await self.ranks.wait_no_streams()

    def _summary(self) -> dict[str, Any]:
        s = self.stats()
        return {
            k: s[k]
            for k in (
                "samples_acked",
                "bytes_fetched",
                "leases_started",
                "peak_inflight_bytes",
                "progress_reports",
            )
        }

    async def _register(self) -> cpb.RegisterNodeResponse:
        cfg = self.config

        def unreachable(exc: Exception) -> bool:
            # A leader that cannot reach its state store (or was just deposed) refuses
            # with LeaseLogError: transient like an unreachable one, the Service may
            # route to the next leader.
            return (isinstance(exc, CoordinatorError) and exc.code in _UNREACHABLE) or isinstance(
                exc, LeaseLogError
            )

        def retryable(exc: Exception) -> bool:
            # A node id held by a live agent is free once that agent has been silent for
            # the lease TTL (this agent's own restart); a duplicate gives up at the deadline.
            return unreachable(exc) or isinstance(exc, NodeIdInUseError)

        def retrying(retry: Retry) -> None:
            self._retry_log.emit(
                _COMPONENT,
                "register_retry",
                delay_s=round(retry.delay_s, 3),
                waiting_for=_waiting_for(retry.error),
                gives_up_in_s=round(max(0.0, deadline - time.monotonic()), 1),
                error=retry.error,
            )

        deadline = time.monotonic() + cfg.connect_timeout_s

        try:
            reg = await _REGISTER_BACKOFF.run(
                self._register_once,
                retry_if=retryable,
                on_retry=retrying,
                rng=self._rng,
                deadline=deadline,
            )
        except NodeIdInUseError as exc:
            emit(_COMPONENT, exc.event, node_id=cfg.node_id, holder=exc.hostname, error=str(exc))
            raise
        except (CoordinatorError, LeaseLogError) as exc:
            if not unreachable(exc):
                raise
            raise CoordinatorError(
                f"{exc} (gave up after {cfg.connect_timeout_s:g}s of registering; raise "
                "--connect-timeout-s, or start the coordinator / bring its state store back)",
                address=cfg.coordinator,
                code=getattr(exc, "code", None) or "UNAVAILABLE",
            ) from None
        self._registration = reg
        # Before the first read: objects modified after the snapshot's listing are refused,
        # as embedded mode refuses them; 0 (unknown) leaves the size checks alone.
        self._reader.listed_at = reg.listed_at_unix_s or None
        emit(
            _COMPONENT,
            "node_registered",
            node_id=cfg.node_id,
            rank=reg.rank,
            world_size=reg.world_size,
            job_ready=reg.job_ready,
            manifest_hash=reg.manifest_hash,
            total_samples=reg.total_samples,
            listed_at=reg.listed_at_unix_s or None,
            changed_objects="size-or-modified" if reg.listed_at_unix_s else "size-only",
        )
        return reg

    async def _heartbeat_loop(self, interval_s: float) -> None:
        cfg = self.config
        #: Since when the coordinator has not answered (None: it answers).
        lost_since: float | None = None
        while True:
            await asyncio.sleep(interval_s)
            s = self.stats()
            try:
                beat = await self._client.heartbeat(
                    cfg.job_id,
                    cfg.node_id,
                    samples_delivered=int(s["samples_acked"]),
                    bytes_fetched=int(s["bytes_fetched"]),
                    inflight_bytes=int(s["inflight_bytes"]),
                    fetch_retries=int(s["fetch_retries"]),
                )
            except Mx8Error as exc:
                # A missed heartbeat is not fatal: the lease TTL is several intervals long.
                self._retry_log.emit(_COMPONENT, "heartbeat_failed", reason=exc.event, error=exc)
                if isinstance(exc, (NodeNotRegisteredError, RegistrationTokenError)):
                    # A coordinator restarted without its lease log no longer knows us, or
                    # it answered a registration we never heard back from (its token is
                    # not ours); registering again is idempotent for the same agent.
                    try:
                        reg = await self._register_once()
                    except RankReportError as refused:
                        raise self._refused(refused) from None
                    except Mx8Error as again:
                        lost_since = self._coordinator_lost(again, lost_since)
                        continue
                    self._check_same_job(reg.job_incarnation)
                    self._check_same_snapshot(reg)
                    self._check_same_order(reg)
                    lost_since = self._coordinator_back(lost_since)
                    continue
                lost_since = self._coordinator_lost(exc, lost_since)
                continue
            lost_since = self._coordinator_back(lost_since)
            self._check_same_job(beat.job_incarnation)
            if beat.job_drained and self.runner is not None:
                self.runner.note_drained()

    def _coordinator_lost(self, exc: Mx8Error, since: float | None) -> float:
        """Say what the agent waits for (every few seconds); give up after the timeout."""
        cfg = self.config
        now = time.monotonic()
        since = now if since is None else since
        waited = now - since
        limit = cfg.coordinator_lost_timeout_s
        if waited > limit:
            error = CoordinatorError(
                f"no answer from the coordinator at {cfg.coordinator} for {waited:.0f}s "
                f"(--coordinator-lost-timeout-s {limit:g}): {exc}; start it again on that "
                "address (a rank-exact job continues from the agents), or restart the job",
                address=cfg.coordinator,
                code=getattr(exc, "code", None) or "UNAVAILABLE",
            )
            emit(_COMPONENT, "coordinator_lost_timeout", level="error", error=str(error))
            raise error
        ranks = self.ranks.rank_reports() if self.ranks is not None else []
        self._retry_log.emit(
            _COMPONENT,
            "coordinator_lost",
            address=cfg.coordinator,
            waiting_s=round(waited, 1),
            gives_up_in_s=round(limit - waited, 1),
            waiting_for=(
                f"{_waiting_for(exc)}; trainers keep being served, then this agent "
                f"registers again with its {len(ranks)} ranks"
                if self.ranks is not None
                else _waiting_for(exc)
            ),
            error=exc,
        )
        return since

    def _coordinator_back(self, since: float | None) -> None:
        if since is not None:
            emit(
                _COMPONENT,
                "coordinator_reconnected",
                address=self.config.coordinator,
                lost_s=round(time.monotonic() - since, 1),
            )

    def _refused(self, error: RankReportError) -> RankReportError:
        """The coordinator refuses what this agent says of its ranks: fail closed."""
        self._fenced = True
        emit(
            _COMPONENT,
            error.event,
            level="error",
            node_id=self.config.node_id,
            field=error.field,
            error=str(error),
        )
        self._fail_trainers(error)
        return error

    def _check_same_order(self, reg: cpb.RegisterNodeResponse) -> None:
        """Fail closed when a re-registration gives another job order or mode than the
        first one: the positions this agent serves would mean other samples."""
        first = self._registration
        assert first is not None
        for name in ("total_samples", "block_size", "shuffle", "seed", "epochs"):
            was, now = getattr(first, name), getattr(reg, name)
            if was == now:
                continue
            self._fenced = True
            error = ManifestChangedError(
                f"the coordinator at {self.config.coordinator} restarted with {name} {now}, "
                f"but this node's trainers read the job with {name} {was}; restart it with "
                f"the job's flags (--{name.replace('_', '-')} {was}), or restart the whole job",
                expected=str(was),
                got=str(now),
            )
            emit(_COMPONENT, error.event, node_id=self.config.node_id, error=str(error))
            self._fail_trainers(error)
            raise error
        if self._mode(first) != self._mode(reg):
            self._fenced = True
            error = ManifestChangedError(
                f"the coordinator at {self.config.coordinator} restarted in --mode "
                f"{self._mode(reg)}, but this job runs in {self._mode(first)}; restart it with "
                f"--mode {self._mode(first)}, or restart the whole job",
                expected=self._mode(first),
                got=self._mode(reg),
            )
            emit(_COMPONENT, error.event, node_id=self.config.node_id, error=str(error))
            self._fail_trainers(error)
            raise error

    def _check_same_job(self, got: str) -> None:
        """Dynamic mode: fail closed when the coordinator's job incarnation changed.

        A coordinator restarted without its lease log starts the job over and would hand
        out ranges the trainers already had. Rank-exact mode re-learns positions from
        the agents instead, so it is left alone; an empty id (older peer) is unknown.
        """
        assert self._registration is not None
        expected = self._registration.job_incarnation
        if self._mode(self._registration) != DYNAMIC or not expected or not got:
            return
        if got == expected:
            return
        self._fenced = True
        cfg = self.config
        error = CoordinatorStateLostError(
            f"mx8-coordinator at {cfg.coordinator} restarted without its --state-dir: job "
            f"{cfg.job_id}'s progress is gone; restart the job, and run the coordinator with "
            "--state-dir so a restart resumes",
            expected=expected,
            got=got,
        )
        emit(
            _COMPONENT,
            error.event,
            level="error",
            node_id=cfg.node_id,
            expected=expected,
            got=got,
            error=str(error),
        )
        # Now, before a lease of the new incarnation can reach a trainer.
        self._fail_trainers(error)
        raise error

    async def _register_once(self) -> cpb.RegisterNodeResponse:
        """RegisterNode with this host's caps (first registration and re-registration alike)."""
        cfg = self.config
        reply = await self._client.register_node(
            cfg.job_id,
            cfg.node_id,
            hostname=os.uname().nodename,
            max_inflight_bytes=cfg.max_inflight_bytes,
            fetch_concurrency=cfg.fetch_concurrency,
            incarnation=self._incarnation,
            # Rank-exact: what a coordinator that lost its state rebuilds the worlds from.
            ranks=self.ranks.rank_reports() if self.ranks is not None else (),
        )
        try:
            # Nothing of the reply is used (a hash becomes a file name) before it is checked.
            return check_registration(reply)
        except CoordinatorReplyError as exc:
            emit(_COMPONENT, exc.event, field=exc.field, error=str(exc), node_id=cfg.node_id)
            raise

    def _check_same_snapshot(self, reg: cpb.RegisterNodeResponse) -> None:
        """Fail closed when a re-registration names another manifest than the first one."""
        assert self._registration is not None
        expected, got = self._registration.manifest_hash, reg.manifest_hash
        if got == expected:
            emit(_COMPONENT, "node_reregistered", node_id=self.config.node_id, manifest_hash=got)
            return
        self._fenced = True
        error = ManifestChangedError(
            f"the coordinator at {self.config.coordinator} now serves manifest {got} but this "
            f"node's trainers are reading {expected}: it restarted on another snapshot. "
            f"Restart it on the original snapshot (manifest hash {expected}), or restart the "
            "whole job (coordinator, agents, trainers) on the new one",
            expected=expected,
            got=got,
        )
        emit(
            _COMPONENT,
            error.event,
            node_id=self.config.node_id,
            expected=expected,
            got=got,
            error=str(error),
        )
        raise error

    # -- stop -------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self.runner is not None and not self._fenced:
            # Only acknowledged samples: what trainers did not consume stays uncommitted.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.runner.report_now()
        if self.ranks is not None and not self._fenced:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.ranks.report_now()

    async def _close(self) -> None:
        await self._reader.aclose()
        await self._client.close()

    def _stopped_fields(self) -> dict[str, Any]:
        return {"node_id": self.config.node_id}

"""``Coordinator``: the daemon's lifecycle around one job, on the shared ``Daemon`` base.

``start()`` binds the gRPC port first (health NOT_SERVING), resolves the snapshot (or takes
a given ``ManifestSource``), opens and replays the lease log, then turns health SERVING
and starts the expiry ticker. ``run()`` waits until ``shutdown()`` or a failing task;
``shutdown()`` drains (no new leases), stops the server with a grace period, flushes and
closes the lease log and the metrics exporter.

With ``--state-dir`` a store URL the log is segments in the store (``state.store_log``)
and leadership a term (``state.leader``): ``_open`` first waits to claim a term (at once
for a new job; after the leader record went unrenewed for the leader TTL otherwise; a
``--standby`` waits as long as it takes), then replays. While leading, a renewal task
keeps the term; a newer term found by it or by a segment write ends ``run()`` with
``CoordinatorFencedError`` (exit 2). It is safe to call twice; ``async with``
wraps both (``mx8_common.rpc.daemon`` has the shared part).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import socket
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc

from mx8_common.errors import CoordinatorFencedError, Mx8Error
from mx8_common.obs.events import emit
from mx8_common.owner_lock import OwnerLock
from mx8_common.rpc.daemon import NOT_SERVING, SERVING, Daemon, ServerSettings
from mx8_common.rpc.job_status import JobStatus
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_common.store import ManifestStore
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import (
    FileManifestSource,
    ManifestSource,
    StoreManifestSource,
)
from mx8_coordinator.rpc.servicer import CoordinatorServicer
from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.leader import LeaderElection, LeaderRecord
from mx8_coordinator.state.lease_log import LeaseLog, lease_log_path, read_log_manifest_hash
from mx8_coordinator.state.node_registry import monotonic_ms
from mx8_coordinator.state.state_dir import claim_state_dir
from mx8_coordinator.state.store_log import (
    Segment,
    StoreLeaseLog,
    read_store_log_manifest_hash,
)
from mx8_coordinator.state.world_file import WorldFile
from mx8_coordinator.web.metrics import CoordinatorMetrics

__all__ = ["SERVICE_NAME", "Coordinator", "freeze_startup_heap"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
_COMPONENT = "coordinator"


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now to the permanent GC generation.

    What start-up built (gRPC, protobuf, structlog, the job's tables) lives as long as
    the process; left in generation 2, every full collection walks all of it again in
    the middle of serving (13-25 ms of CPU per gen-2 pass over ~50k objects measured
    under load, ~once per 10 s at the agents' rate): a stall of every RPC in flight.
    Returns how many objects were frozen. A process-wide choice: the daemon's entry
    point asks for it (``Coordinator(freeze_heap=True)``), not library users.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Coordinator(Daemon):
    """The coordinator daemon for one job.

    ``source`` replaces resolving ``config.dataset``: a ``ManifestSource``, or an async
    factory of one (awaited after the port is bound, like the resolver would be).
    ``freeze_heap`` freezes the start-up heap (``freeze_startup_heap``) just before
    health turns SERVING: ``mx8-coordinator`` sets it, as it owns its process.
    """

    component = _COMPONENT
    service_name = SERVICE_NAME

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        source: ManifestSource | Callable[[], Awaitable[ManifestSource]] | None = None,
        clock: Callable[[], int] = monotonic_ms,
        shutdown_grace_s: float = 2.0,
        freeze_heap: bool = False,
    ) -> None:
        super().__init__(
            ServerSettings(
                listen=config.listen,
                tls=config.tls,
                auth_token=config.auth_token,
                max_message_bytes=config.max_message_bytes,
                http=config.metrics_host_port,
            ),
            shutdown_grace_s=shutdown_grace_s,
        )
        self.config = config
        self._given_source = source
        self._freeze_heap = freeze_heap
        self._clock = clock
        self.metrics = CoordinatorMetrics(self._status_from_thread)
        self._servicer = CoordinatorServicer(
            metrics=self.metrics,
            max_message_bytes=config.max_message_bytes,
            bind_node_ids=config.tls_bind_node_id,
            stream_compression=config.manifest_stream_compression,
        )
        self._log: LeaseLog | None = None
        self._store_log: StoreLeaseLog | None = None
        self._election: LeaderElection | None = None
        #: The leader a standby waits on (for the status page).
        self._watched: LeaderRecord | None = None
        self._state_lock: OwnerLock | None = None
        self._resources = contextlib.AsyncExitStack()
        self.job: Job | None = None
        self.source: ManifestSource | None = None
        self._state_store_obj: ManifestStore | None = None

    # -- start -----------------------------------------------------------------------

    async def _claim(self) -> None:
        # A store URL is claimed by term (in _open), not by a lock on this host's disk.
        if self.config.state_dir is not None and not self.config.state_in_store:
            self._state_lock = await asyncio.to_thread(claim_state_dir, self.config.state_dir)

    def _add_services(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_CoordinatorServicer_to_server(self._servicer, server)

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        return self.metrics.http_handler(auth_token=self.config.auth_token)

    async def _open(self) -> None:
        """Resolve, replay, serve: health turns SERVING and the ticker starts."""
        source = await self._open_source()
        self.source = source
        self.job = await self._open_job(source)
        self._servicer.source = source
        self._servicer.job = self.job
        if self._freeze_heap:
            emit(_COMPONENT, "heap_frozen", objects=freeze_startup_heap())
        await self.set_health(SERVING)
        self.spawn(self._tick_forever(), "ticker")
        if self._store_log is not None:
            self.spawn(self._renew_forever(), "leader-renewal")
            self.spawn(self._watch_fenced(), "fencing")
        emit(
            _COMPONENT,
            "coordinator_serving",
            address=self.address,
            job_id=self.config.job_id,
            mode=self.config.mode,
            manifest_hash=source.manifest_hash,
            total_samples=source.total_samples,
            metrics_port=self.metrics_port,
            tls=self.config.tls.enabled,
            mutual_tls=self.config.tls.mutual,
            auth_token=self.config.auth_token is not None,
        )

    def status(self) -> JobStatus:
        """The job's status, as the page, ``/api/status`` and metrics show it (on the loop)."""
        if self.job is None:
            status = JobStatus.before_job(self.config.job_id, self.config.dataset)
        else:
            status = self.job.status()
        election = self._election
        if election is not None and election.record is not None:
            leader = election.record
        elif self._watched is not None:
            leader = self._watched  # a standby names the leader it waits on
        else:
            return status
        where = f"{leader.holder} at {leader.address}"
        return dataclasses.replace(status, leader=where, leader_term=leader.term)

    def _status_from_thread(self) -> JobStatus:
        # The HTTP server's threads must not read the job while the loop changes it:
        # build the status on the loop and wait for it (bounded, so a stuck loop gives 503).
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return self.status()  # not started, or already on the loop

        async def build() -> JobStatus:
            return self.status()

        return asyncio.run_coroutine_threadsafe(build(), loop).result(timeout=5)

    async def _open_source(self) -> ManifestSource:
        given = self._given_source
        if isinstance(given, ManifestSource):
            return given
        if given is not None:
            return await given()
        dataset = self.config.dataset
        if await asyncio.to_thread(Path(dataset).is_file):
            # A canonical manifest file given directly: serve it as it is.
            return await FileManifestSource.open(dataset)
        return await self._resolve_dataset()

    async def _resolve_dataset(self) -> ManifestSource:
        # Imported here: the resolver pulls in S3 and store code a file-backed job never needs.
        from mx8_common.link import parse_dataset_link
        from mx8_common.snapshot.resolver import resolve_snapshot
        from mx8_common.store import open_manifest_store

        cfg = self.config
        link = cfg.dataset
        logged_hash = None
        if cfg.state_in_store:
            logged_hash = await read_store_log_manifest_hash(await self._state_store(), cfg.job_id)
        elif cfg.state_dir is not None:
            logged_hash = await asyncio.to_thread(
                read_log_manifest_hash, lease_log_path(cfg.state_dir, cfg.job_id)
            )
        if logged_hash is not None and parse_dataset_link(link).mode == "plain":
            # Resume the snapshot the lease log was written against, even if the link's
            # intent pointer moved since: positions only mean something for that hash.
            link = f"{link}@sha256:{logged_hash}"
        resolver_config = cfg.resolver_config()
        store = await self._resources.enter_async_context(
            open_manifest_store(
                resolver_config.store_root, s3_endpoint_url=resolver_config.s3_endpoint_url
            )
        )
        resolved = await resolve_snapshot(link, resolver_config, store=store)
        emit(
            _COMPONENT,
            "snapshot_resolved",
            link=cfg.dataset,
            manifest_hash=resolved.manifest_hash,
            samples=resolved.samples,
            indexed=resolved.indexed,
            listed_at=resolved.listed_at,
        )
        return StoreManifestSource(
            store,
            manifest_hash=resolved.manifest_hash,
            total_samples=resolved.samples,
            class_names=tuple(resolved.class_names or ()),
            listed_at=resolved.listed_at,
        )

    async def _open_job(self, source: ManifestSource) -> Job:
        cfg = self.config
        spec = JobSpec(
            job_id=cfg.job_id,
            dataset_link=cfg.dataset,
            manifest_hash=source.manifest_hash,
            total_samples=source.total_samples,
            class_names=tuple(source.class_names),
            listed_at=source.listed_at,
            block_size=cfg.block_size,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            epochs=cfg.epochs,
            lease_ttl_ms=cfg.lease_ttl_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            freeze_size=cfg.freeze_size,
            mode=cfg.mode,
        )
        if cfg.state_dir is None:
            job = Job(spec, clock=self._clock, stall_ms=self._stall_ms(spec))
            emit(
                _COMPONENT,
                "lease_log_disabled",
                reason="no --state-dir",
                job_incarnation=job.incarnation,
            )
            return job
        if cfg.state_in_store:
            return await self._open_store_job(spec)
        path = lease_log_path(cfg.state_dir, cfg.job_id)
        self._log, state = await asyncio.to_thread(LeaseLog.open, path, spec.log_header())
        self._log.on_sync = self.metrics.lease_log_sync.observe
        # A state dir in a store (s3://...) keeps the lease log only: agents rebuild worlds.
        local = "://" not in str(cfg.state_dir)
        worlds = WorldFile(cfg.state_dir, cfg.job_id, spec.manifest_hash) if local else None
        job = Job(
            spec,
            log=self._log,
            world_file=worlds,
            incarnation=state.incarnation,
            clock=self._clock,
            stall_ms=self._stall_ms(spec),
        )
        if not state.empty:
            job.restore(state)
        await asyncio.to_thread(job.restore_worlds)
        return job

    def _stall_ms(self, spec: JobSpec) -> int | None:
        """The ticker runs every <= TTL/5: a gap of half the TTL is this process stalling
        (not watched under an injected clock, which tests jump on purpose)."""
        if self._clock is not monotonic_ms:
            return None
        return max(1, spec.lease_ttl_ms // 2)

    # -- the lease log in a store -----------------------------------------------------

    async def _state_store(self) -> ManifestStore:
        from mx8_common.store import open_manifest_store

        if self._state_store_obj is None:
            assert self.config.state_dir is not None
            root = self.config.state_dir
            root = root[len("file://") :] if root.startswith("file://") else root
            self._state_store_obj = await self._resources.enter_async_context(
                open_manifest_store(
                    root, s3_endpoint_url=self.config.resolver_config().s3_endpoint_url
                )
            )
        return self._state_store_obj

    async def _open_store_job(self, spec: JobSpec) -> Job:
        cfg = self.config
        election = LeaderElection(
            await self._state_store(),
            cfg.job_id,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            address=self.address or cfg.listen,
            ttl_ms=cfg.leader_ttl,
        )
        self._election = election
        waited = time.monotonic()

        def on_wait(current: LeaderRecord | None) -> None:
            self._watched = current
            emit(
                _COMPONENT,
                "coordinator_standby",
                job_id=cfg.job_id,
                standby=cfg.standby,
                leader=current.describe() if current is not None else "",
                term=current.term if current is not None else 0,
                leader_ttl_ms=cfg.leader_ttl,
            )

        term = await election.claim(standby=cfg.standby, on_wait=on_wait)
        claimed = time.monotonic()
        log, state = await StoreLeaseLog.open(
            election.store,
            election,
            spec.log_header(),
            flush_ms=cfg.state_flush_ms,
            on_segment=self._segment_written,
        )
        self._store_log = log
        log.on_sync = self.metrics.lease_log_sync.observe
        # Replay took part of the term's first validity window: renew before serving.
        await election.renew()
        job = Job(
            spec,
            log=log,
            incarnation=state.incarnation,
            clock=self._clock,
            stall_ms=self._stall_ms(spec),
            gate=log.check_writable,
        )
        if not state.empty:
            job.restore(state)
        takeover_s = time.monotonic() - claimed
        self.metrics.leader_term.set(term)
        self.metrics.term_changes.inc()
        self.metrics.takeover_seconds.set(takeover_s)
        previous = election.previous
        emit(
            _COMPONENT,
            "coordinator_leader",
            job_id=cfg.job_id,
            term=term,
            previous=previous.describe() if previous is not None else "",
            waited_ms=round((claimed - waited) * 1000),
            takeover_ms=round(takeover_s * 1000),
            records_replayed=state.records,
            compacted_from=log.compacted_from,
            log=log.path,
        )
        return job

    async def _release(self) -> None:
        election, log = self._election, self._store_log
        assert election is not None
        if log is None or log.fenced is not None:
            election.stop()  # never led, or deposed: the record is not ours to touch
            return
        try:
            await election.release()
        except Mx8Error as exc:
            election.stop()  # standbys take over after the TTL instead
            emit(_COMPONENT, "coordinator_release_failed", level="warning", error=str(exc))
            return
        emit(_COMPONENT, "coordinator_released", job_id=self.config.job_id, term=election.term)

    def _segment_written(self, _segment: Segment) -> None:
        self.metrics.segments_written.inc()

    async def _renew_forever(self) -> None:
        """Keep the term; on a lapse stop leasing (the log refuses) and say why once."""
        election, log = self._election, self._store_log
        assert election is not None and log is not None
        suspended = False
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Start to start, so a slow renewal does not push the next one later.
            next_at = max(next_at + election.renew_interval_ms / 1000, loop.time())
            await asyncio.sleep(next_at - loop.time())
            try:
                async with asyncio.timeout(election.valid_window_ms / 1000):
                    await election.renew()
            except CoordinatorFencedError as exc:
                log.fence(exc)
                raise
            except (Mx8Error, TimeoutError) as exc:
                election.last_error = str(exc) or (
                    f"no answer from the store within {election.valid_window_ms} ms"
                )
                if not election.valid() and not suspended:
                    suspended = True
                    self.metrics.leader_suspended.set(1)
                    await self.set_health(NOT_SERVING)
                    emit(
                        _COMPONENT,
                        "coordinator_leader_suspended",
                        level="error",
                        job_id=self.config.job_id,
                        term=election.term,
                        reason=f"cannot renew the leader record: {election.last_error}; "
                        "no lease is handed out until the store answers",
                    )
                continue
            if suspended:
                suspended = False
                self.metrics.leader_suspended.set(0)
                await self.set_health(SERVING)
                emit(
                    _COMPONENT, "coordinator_leader_resumed", job_id=self.config.job_id,
                    term=election.term,
                )  # fmt: skip

    async def _watch_fenced(self) -> None:
        """End ``run()`` with the fencing error once the log finds a newer term."""
        log = self._store_log
        assert log is not None
        await log.deposed.wait()
        assert log.fenced is not None
        raise log.fenced

    async def _tick_forever(self) -> None:
        assert self.job is not None
        # Often enough that an expiry is noticed within a fraction of the TTL.
        period_s = max(0.01, min(self.config.lease_ttl_ms / 5, 500) / 1000)
        while True:
            await asyncio.sleep(period_s)
            await self.job.tick()

    # -- stop ----------------------------------------------------------------------

    async def _drain(self) -> None:
        if self.job is not None:
            self.job.begin_drain()

    async def _close(self) -> None:
        if self._log is not None:
            await self._log.close()
        if self._store_log is not None:
            await self._store_log.close()
        if self._election is not None:
            await self._release()
        await self._resources.aclose()
        if self._state_lock is not None:
            self._state_lock.release()

    def _stopped_fields(self) -> dict[str, Any]:
        return {"job_id": self.config.job_id}

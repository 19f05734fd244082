"""``Coordinator``: the daemon's lifecycle around one job, on the shared ``Daemon`` base.

``start()`` binds the gRPC port first (health NOT_SERVING), resolves the snapshot (or takes
a given ``ManifestSource``), opens and replays the lease log, then turns health SERVING
and starts the expiry ticker. ``run()`` waits until ``shutdown()`` or a failing task;
``shutdown()`` drains (no new leases), stops the server with a grace period, flushes and
closes the lease log and the metrics exporter. It is safe to call twice; ``async with``
wraps both (``mx8_common.rpc.daemon`` has the shared part).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc

from mx8_common.obs.events import emit
from mx8_common.owner_lock import OwnerLock
from mx8_common.rpc.daemon import SERVING, Daemon, ServerSettings
from mx8_common.rpc.job_status import JobStatus
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import (
    FileManifestSource,
    ManifestSource,
    StoreManifestSource,
)
from mx8_coordinator.rpc.servicer import CoordinatorServicer
from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.lease_log import LeaseLog, lease_log_path, read_log_manifest_hash
from mx8_coordinator.state.node_registry import monotonic_ms
from mx8_coordinator.state.state_dir import claim_state_dir
from mx8_coordinator.state.world_file import WorldFile
from mx8_coordinator.web.metrics import CoordinatorMetrics

__all__ = ["SERVICE_NAME", "Coordinator"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
_COMPONENT = "coordinator"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Coordinator(Daemon):
    """The coordinator daemon for one job.

    ``source`` replaces resolving ``config.dataset``: a ``ManifestSource``, or an async
    factory of one (awaited after the port is bound, like the resolver would be).
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
        self._clock = clock
        self.metrics = CoordinatorMetrics(self._status_from_thread)
        self._servicer = CoordinatorServicer(
            metrics=self.metrics,
            max_message_bytes=config.max_message_bytes,
            bind_node_ids=config.tls_bind_node_id,
            stream_compression=config.manifest_stream_compression,
        )
        self._log: LeaseLog | None = None
        self._state_lock: OwnerLock | None = None
        self._resources = contextlib.AsyncExitStack()
        self.job: Job | None = None
        self.source: ManifestSource | None = None

    # -- start -----------------------------------------------------------------------

    async def _claim(self) -> None:
        if self.config.state_dir is not None:
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
        await self.set_health(SERVING)
        self.spawn(self._tick_forever(), "ticker")
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
            return JobStatus.before_job(self.config.job_id, self.config.dataset)
        return self.job.status()

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
        if cfg.state_dir is not None:
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
            job = Job(spec, clock=self._clock)
            emit(
                _COMPONENT,
                "lease_log_disabled",
                reason="no --state-dir",
                job_incarnation=job.incarnation,
            )
            return job
        path = lease_log_path(cfg.state_dir, cfg.job_id)
        self._log, state = await asyncio.to_thread(LeaseLog.open, path, spec.log_header())
        # A state dir in a store (s3://...) keeps the lease log only: agents rebuild worlds.
        local = "://" not in str(cfg.state_dir)
        worlds = WorldFile(cfg.state_dir, cfg.job_id, spec.manifest_hash) if local else None
        job = Job(
            spec,
            log=self._log,
            world_file=worlds,
            incarnation=state.incarnation,
            clock=self._clock,
        )
        if not state.empty:
            job.restore(state)
        await asyncio.to_thread(job.restore_worlds)
        return job

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
        await self._resources.aclose()
        if self._state_lock is not None:
            self._state_lock.release()

    def _stopped_fields(self) -> dict[str, Any]:
        return {"job_id": self.config.job_id}

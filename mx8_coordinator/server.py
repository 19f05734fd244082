"""``Coordinator``: the daemon's lifecycle around one job.

``start()`` binds the gRPC port first (health NOT_SERVING), resolves the snapshot (or takes
a given ``ManifestSource``), opens and replays the lease log, then turns health SERVING
and starts the expiry ticker. ``run()`` waits until ``shutdown()`` or a failing task;
``shutdown()`` drains (no new leases), stops the server with a grace period, flushes and
closes the lease log and the metrics exporter. It is safe to call twice; ``async with``
wraps both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mx8_common.errors import ConfigError
from mx8_common.obs.events import emit
from mx8_common.rpc.job_status import JobStatus
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_common.rpc.security import BearerTokenInterceptor, server_credentials, warn_if_exposed
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
from mx8_coordinator.web.metrics import CoordinatorMetrics

__all__ = ["SERVICE_NAME", "Coordinator"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
_COMPONENT = "coordinator"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Coordinator:
    """The coordinator daemon for one job.

    ``source`` replaces resolving ``config.dataset``: a ``ManifestSource``, or an async
    factory of one (awaited after the port is bound, like the resolver would be).
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        source: ManifestSource | Callable[[], Awaitable[ManifestSource]] | None = None,
        clock: Callable[[], int] = monotonic_ms,
        shutdown_grace_s: float = 2.0,
    ) -> None:
        self.config = config
        self._given_source = source
        self._clock = clock
        self._grace = shutdown_grace_s
        self.metrics = CoordinatorMetrics(self._status_from_thread)
        self._servicer = CoordinatorServicer(
            metrics=self.metrics, max_message_bytes=config.max_message_bytes
        )
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._log: LeaseLog | None = None
        self._resources = contextlib.AsyncExitStack()
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._shutdown_requested = asyncio.Event()
        self._shutdown_started = False
        self._done = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.job: Job | None = None
        self.source: ManifestSource | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients should dial (the bound port, also when 0 was asked)."""
        if self.port is None:
            raise RuntimeError("the coordinator is not started")
        host, _ = self.config.listen_host_port
        return f"{host}:{self.port}"

    # -- start -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, resolve, replay, serve. Idempotent."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        await self._bind()
        try:
            source = await self._open_source()
            self.source = source
            self.job = await self._open_job(source)
        except BaseException:
            await self.shutdown()
            raise
        self._servicer.source = source
        self._servicer.job = self.job
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._ticker = asyncio.create_task(self._tick_forever(), name="mx8-coordinator-ticker")
        emit(
            _COMPONENT,
            "coordinator_serving",
            address=self.address,
            job_id=self.config.job_id,
            manifest_hash=source.manifest_hash,
            total_samples=source.total_samples,
            metrics_port=self.metrics_port,
            tls=self.config.tls.enabled,
            mutual_tls=self.config.tls.mutual,
            auth_token=self.config.auth_token is not None,
        )

    async def _bind(self) -> None:
        cfg = self.config
        cap = cfg.max_message_bytes
        tls = cfg.tls
        # Read the PEM files before binding: a bad path fails start-up with its flag named.
        credentials = server_credentials(tls) if tls.enabled else None
        interceptors = [BearerTokenInterceptor(cfg.auth_token)] if cfg.auth_token else []
        warn_if_exposed(cfg.listen, cfg.auth_token, tls=tls, component=_COMPONENT)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", cap),
                ("grpc.max_receive_message_length", cap),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_CoordinatorServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        host, port = self.config.listen_host_port
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(f"{host}:{port}")
            else:
                self.port = self._server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.listen}: {exc}; is another coordinator "
                "running there? pick another --listen port"
            ) from exc
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        metrics_at = self.config.metrics_host_port
        if metrics_at is not None:
            try:
                self.metrics_port = self.metrics.serve(*metrics_at)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {self.config.metrics}: {exc}; pick another "
                    "--metrics port"
                ) from exc

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

    async def _set_health(self, status: Any) -> None:
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)

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
        from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot
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
        # from_env: the resolver's own knobs (S3 endpoint, external sort, lock timeouts)
        # still come from MX8_SNAPSHOT_* / MX8_S3_* variables.
        resolver_config = SnapshotResolverConfig.from_env(
            materialize_manifest_bytes=False,
            recursive=cfg.recursive,
            label_mode=cfg.label_mode,
            store_root=cfg.store,
        )
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
        )
        return StoreManifestSource(
            store,
            manifest_hash=resolved.manifest_hash,
            total_samples=resolved.samples,
            class_names=tuple(resolved.class_names or ()),
        )

    async def _open_job(self, source: ManifestSource) -> Job:
        cfg = self.config
        spec = JobSpec(
            job_id=cfg.job_id,
            dataset_link=cfg.dataset,
            manifest_hash=source.manifest_hash,
            total_samples=source.total_samples,
            class_names=tuple(source.class_names),
            block_size=cfg.block_size,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            epochs=cfg.epochs,
            lease_ttl_ms=cfg.lease_ttl_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            freeze_size=cfg.freeze_size,
        )
        if cfg.state_dir is None:
            emit(_COMPONENT, "lease_log_disabled", reason="no --state-dir")
            return Job(spec, clock=self._clock)
        path = lease_log_path(cfg.state_dir, cfg.job_id)
        self._log, state = await asyncio.to_thread(LeaseLog.open, path, spec.log_header())
        job = Job(spec, log=self._log, clock=self._clock)
        if not state.empty:
            job.restore(state)
        return job

    async def _tick_forever(self) -> None:
        assert self.job is not None
        # Often enough that an expiry is noticed within a fraction of the TTL.
        period_s = max(0.01, min(self.config.lease_ttl_ms / 5, 500) / 1000)
        while True:
            await asyncio.sleep(period_s)
            await self.job.tick()

    # -- run / stop ------------------------------------------------------------------

    async def run(self) -> None:
        """Start, then serve until ``shutdown()`` (or a failing background task)."""
        await self.start()
        assert self._ticker is not None
        stop = asyncio.create_task(self._shutdown_requested.wait())
        try:
            await asyncio.wait({stop, self._ticker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await self.shutdown()
        if self._ticker.done() and not self._ticker.cancelled() and self._ticker.exception():
            raise self._ticker.exception()  # type: ignore[misc]

    def request_shutdown(self) -> None:
        """Ask ``run()`` to shut down (signal handlers call this)."""
        self._shutdown_requested.set()

    async def shutdown(self) -> None:
        """Drain and stop everything. Safe to call twice (the second waits for the first)."""
        self._shutdown_requested.set()
        if self._shutdown_started:
            await self._done.wait()
            return
        self._shutdown_started = True
        try:
            if self.job is not None:
                self.job.begin_drain()
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            if self._server is not None:
                await self._server.stop(self._grace)
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._ticker
            if self._log is not None:
                await self._log.close()
            await asyncio.to_thread(self.metrics.stop)
            await self._resources.aclose()
            emit(_COMPONENT, "coordinator_stopped", job_id=self.config.job_id)
        finally:
            self._done.set()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

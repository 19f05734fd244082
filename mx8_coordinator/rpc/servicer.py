"""The gRPC face of the coordinator: proto -> plain call on ``Job`` -> proto.

Each method only converts; an ``Mx8Error`` it raises leaves as a typed status through the
daemon's ``ErrorBoundary`` interceptor (``mx8_common.rpc.errors``), where the status codes
a client sees are decided in one table.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mx8_common.errors import RequestError, SnapshotNotFoundError
from mx8_common.manifest.chunk_codec import encode_chunk
from mx8_common.manifest.format import SCHEMA_VERSION
from mx8_common.rpc.job_status_proto import job_status_to_proto, lease_to_proto
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_common.rpc.security import check_node_identity
from mx8_coordinator.rpc.manifest_serving import (
    ManifestSource,
    iter_manifest_chunks,
    read_whole_manifest,
)
from mx8_coordinator.state.job import Job
from mx8_coordinator.state.lease_scheduler import Lease
from mx8_coordinator.state.ranks import RankJoin, RankReport, RankStart
from mx8_coordinator.web.metrics import CoordinatorMetrics

__all__ = ["CoordinatorServicer"]

_NOT_READY = (
    "the coordinator is still resolving its dataset snapshot; retry in a moment "
    "(its health check turns SERVING when it is ready)"
)

R = TypeVar("R")


def _unary(
    fn: Callable[[Any, Any, Job, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Wrap a unary method: wait-for-job and latency, in one place."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: CoordinatorServicer, request: Any, context: Any) -> R:
        started = time.perf_counter()
        try:
            job = self.job
            if job is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _NOT_READY)
            node_id = getattr(request, "node_id", "")
            if self.bind_node_ids and node_id:
                # A node speaks only for the node its client certificate names.
                check_node_identity(node_id, context)
            return await fn(self, request, job, context)
        finally:
            self.metrics.rpc_latency.labels(name).observe(time.perf_counter() - started)

    return wrapper


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """``mx8.v1.Coordinator`` over a ``Job`` and a ``ManifestSource``.

    ``job`` and ``source`` stay None while the snapshot is being resolved; calls then
    get UNAVAILABLE, which clients retry.
    """

    def __init__(
        self,
        *,
        metrics: CoordinatorMetrics,
        max_message_bytes: int,
        stream_compression: str = "zlib",
        bind_node_ids: bool = False,
    ) -> None:
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.stream_encoding = "" if stream_compression == "none" else stream_compression
        #: Mutual TLS with ``--tls-bind-node-id``: each request's node id must be a name of
        #: the client's certificate.
        self.bind_node_ids = bind_node_ids
        self.job: Job | None = None
        self.source: ManifestSource | None = None

    def _lease_pb(self, job: Job, lease: Lease) -> pb.Lease:
        return lease_to_proto(job.lease_status(lease))

    @_unary
    async def RegisterNode(
        self, request: pb.RegisterNodeRequest, job: Job, context: Any
    ) -> pb.RegisterNodeResponse:
        caps = request.caps
        reg = await job.register(
            request.job_id,
            request.node_id,
            caps.hostname,
            incarnation=caps.incarnation,
            ranks=[_rank_report(p, request.node_id) for p in request.ranks],
        )
        s = job.spec
        return pb.RegisterNodeResponse(
            rank=reg.rank or 0,
            world_size=reg.world_size,
            manifest_hash=s.manifest_hash,
            schema_version=SCHEMA_VERSION,
            total_samples=s.total_samples,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            lease_ttl_ms=s.lease_ttl_ms,
            job_ready=reg.ready,
            job_id=s.job_id,
            epochs=s.epochs,
            shuffle=s.shuffle,
            seed=s.seed,
            block_size=s.block_size,
            class_names=list(s.class_names),
            job_incarnation=job.incarnation,
            mode=s.mode,
            listed_at_unix_s=s.listed_at or 0.0,
            registration_token=reg.token,
        )

    @_unary
    async def RegisterRank(
        self, request: pb.RegisterRankRequest, job: Job, context: Any
    ) -> pb.RegisterRankResponse:
        job.check_job(request.job_id)
        r = request
        join = RankJoin(
            node_id=r.node_id,
            instance_id=r.instance_id,
            rank=r.rank,
            world_size=r.world_size,
            batch_size=r.batch_size,
            drop_last=r.drop_last,
            seed=r.seed if r.HasField("seed") else None,
            shuffle=r.shuffle if r.HasField("shuffle") else None,
            start=RankStart(epoch=r.epoch, step=r.step, consumed=r.consumed, resumed=r.resumed),
            world_id=r.world_id,
        )
        answer = await job.join_rank(join)  # a ContractError reaches the agent typed
        return pb.RegisterRankResponse(
            ready=answer.ready,
            world_id=answer.world_id,
            world_size=answer.world_size,
            registered_ranks=answer.registered,
            missing_ranks=answer.missing,
        )

    @_unary
    async def ReportRanks(
        self, request: pb.ReportRanksRequest, job: Job, context: Any
    ) -> pb.ReportRanksResponse:
        job.check_reporter(request.job_id, request.node_id, request.registration_token)
        reports = [_rank_report(p, request.node_id) for p in request.ranks]
        return pb.ReportRanksResponse(job_drained=await job.report_ranks(reports))

    @_unary
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, job: Job, context: Any
    ) -> pb.HeartbeatResponse:
        st = request.stats
        stats = {
            "samples_delivered": st.samples_delivered,
            "bytes_fetched": st.bytes_fetched,
            "inflight_bytes": st.inflight_bytes,
            "fetch_retries": st.fetch_retries,
        }
        hb = await job.heartbeat(
            request.job_id, request.node_id, stats, token=request.registration_token
        )
        return pb.HeartbeatResponse(
            job_ready=hb.job_ready,
            job_drained=hb.job_drained,
            world_size=hb.world_size,
            job_incarnation=job.incarnation,
        )

    @_unary
    async def RequestLease(
        self, request: pb.RequestLeaseRequest, job: Job, context: Any
    ) -> pb.RequestLeaseResponse:
        grant = await job.request_lease(
            request.job_id, request.node_id, request.want, token=request.registration_token
        )
        return pb.RequestLeaseResponse(
            leases=[self._lease_pb(job, le) for le in grant.leases],
            wait_ms=grant.wait_ms,
            job_drained=grant.drained,
        )

    @_unary
    async def ReportProgress(
        self, request: pb.ReportProgressRequest, job: Job, context: Any
    ) -> pb.ReportProgressResponse:
        progress = await job.report_progress(
            request.job_id,
            request.node_id,
            request.lease_id,
            request.cursor,
            token=request.registration_token,
            release=request.release,
        )
        return pb.ReportProgressResponse(
            lease=self._lease_pb(job, progress.lease), completed=progress.completed
        )

    def _check_manifest(self, job: Job, job_id: str, manifest_hash: str) -> ManifestSource:
        job.check_job(job_id)
        if not manifest_hash:
            raise RequestError(
                "manifest_hash is empty; ask for the hash RegisterNode returned",
                field="manifest_hash",
            )
        if self.source is None or manifest_hash != self.source.manifest_hash:
            raise SnapshotNotFoundError(
                f"this coordinator serves manifest {job.spec.manifest_hash}, not "
                f"{manifest_hash}; the node is talking to the wrong job's coordinator",
                manifest_hash=manifest_hash,
            )
        return self.source

    @_unary
    async def GetManifest(
        self, request: pb.GetManifestRequest, job: Job, context: Any
    ) -> pb.GetManifestResponse:
        source = self._check_manifest(job, request.job_id, request.manifest_hash)
        data = await read_whole_manifest(source, self._whole_manifest_cap())
        return pb.GetManifestResponse(
            manifest_bytes=data, schema_version=SCHEMA_VERSION, manifest_hash=source.manifest_hash
        )

    def _whole_manifest_cap(self) -> int:
        # Leave room for the reply's own fields inside the message cap.
        return max(0, self.max_message_bytes - 1024)

    async def GetManifestStream(
        self, request: pb.GetManifestStreamRequest, context: Any
    ) -> AsyncIterator[pb.ManifestChunk]:
        started = time.perf_counter()
        try:
            job = self.job
            if job is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _NOT_READY)
                return
            source = self._check_manifest(job, request.job_id, request.manifest_hash)
            # The bulk of what the coordinator sends: zlib cuts it ~8x, for agents that ask.
            encoding = self.stream_encoding
            if encoding not in request.accept_encodings:
                encoding = ""
            async for piece in iter_manifest_chunks(source):
                chunk = pb.ManifestChunk(offset=piece.offset, schema_version=SCHEMA_VERSION)
                if encoding:
                    # zlib releases the GIL: off the loop, leases keep being served.
                    chunk.data = await asyncio.to_thread(encode_chunk, piece.data, encoding)
                    chunk.encoding = encoding
                    chunk.raw_length = len(piece.data)
                else:
                    chunk.data = piece.data
                if piece.offset == 0:
                    chunk.total_bytes = piece.total_bytes
                    chunk.manifest_hash = source.manifest_hash
                yield chunk
        finally:
            self.metrics.rpc_latency.labels("GetManifestStream").observe(
                time.perf_counter() - started
            )

    @_unary
    async def GetJobSnapshot(
        self, request: pb.GetJobSnapshotRequest, job: Job, context: Any
    ) -> pb.JobSnapshot:
        job.check_job(request.job_id)
        return job_status_to_proto(job.status())


def _rank_report(p: pb.RankProgress, node_id: str) -> RankReport:
    return RankReport(
        rank=p.rank,
        instance_id=p.instance_id,
        world_id=p.world_id,
        world_size=p.world_size,
        epoch=p.epoch,
        step=p.step,
        finished=p.finished,
        node_id=node_id,
        batch_size=p.batch_size,
        drop_last=p.drop_last,
    )

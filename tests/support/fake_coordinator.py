"""A small real grpc.aio Coordinator that serves a chosen (good or broken) manifest stream.

It answers RegisterNode/Heartbeat like the real one, serves ``GetManifestStream`` from
given bytes with a chosen fault, hands out one lease over the whole manifest and counts
every ``RequestLease`` call, so tests can prove an agent never asked for work after a
failed ingest. ``forget_nodes()`` plays a coordinator restart: heartbeats are refused
(``NodeNotRegisteredError``, through the same error boundary as the real one) until the
node registers again, with whatever ``manifest_hash`` the fake announces by then;
``forget_nodes(token=True)`` refuses them for their token instead (a restarted coordinator
that answered a registration whose answer the agent never got).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from mx8_common.errors import NodeNotRegisteredError, RegistrationTokenError
from mx8_common.manifest.chunk_codec import encode_chunk
from mx8_common.manifest.format import SCHEMA_VERSION
from mx8_common.rpc.errors import ErrorBoundary
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc

__all__ = ["FAULTS", "FakeCoordinator"]

#: Stream faults the fake can inject.
FAULTS = (
    "none",  # the exact manifest
    "cut",  # stop mid-line and end the stream normally (total_bytes still announced)
    "cut_unannounced",  # stop at a line boundary, no total_bytes: the hash catches it
    "header_schema",  # the header says schema_version=1
    "chunk_schema",  # a later chunk carries schema_version=1
    "hash",  # one byte of a location changed (valid rows, wrong hash)
    "bad_row",  # a row with a non-numeric byte_length
    "drop_once",  # UNAVAILABLE mid-stream on the first call, then the exact manifest
    # With encoding="zlib", a later encoded chunk is:
    "zlib_cut",  # cut in half (not a whole zlib stream)
    "zlib_corrupt",  # corrupted in its compressed body
    "zlib_long",  # decoding to one byte more than its raw_length announces
    "zlib_unknown",  # labelled with an encoding the agent did not ask for
)


class FakeCoordinator(pb_grpc.CoordinatorServicer):
    """Serve ``manifest`` (canonical bytes) with ``fault``; count the calls."""

    def __init__(
        self,
        manifest: bytes,
        *,
        total_samples: int,
        fault: str = "none",
        chunk_bytes: int = 4096,
        announced_hash: str | None = None,
        register_overrides: dict[str, Any] | None = None,
        lease_range: tuple[int, int] | None = None,
        stall_after_first_chunk: bool = False,
        encoding: str = "",
    ) -> None:
        assert fault in FAULTS, fault
        self.manifest = manifest
        self.total_samples = total_samples
        self.fault = fault
        # A bad row is announced with its own hash: the store holds bad bytes "honestly",
        # so only the row check (not the hash check) can catch it.
        hashed = self._broken_bytes() if fault == "bad_row" else manifest
        self.manifest_hash = announced_hash or hashlib.sha256(hashed).hexdigest()
        self.chunk_bytes = chunk_bytes
        # Hostile-peer knobs: fields of RegisterNodeResponse to replace, the one lease's
        # [start, end), and a stream that goes silent after its first chunk.
        self.register_overrides = register_overrides or {}
        self.lease_range = lease_range
        self.stall_after_first_chunk = stall_after_first_chunk
        # "zlib": chunks are encoded for an agent that accepts it (as the coordinator does).
        self.encoding = encoding
        self.release = asyncio.Event()
        self.release.set()
        self.stream_calls = 0
        self.request_lease_calls = 0
        self.reports: list[tuple[str, int]] = []
        self._leased = False
        self.register_calls = 0
        #: The job incarnation it announces; a test changes it to "restart without state".
        self.job_incarnation = "0fa4e001"
        self._forgotten: type[NodeNotRegisteredError | RegistrationTokenError] | None = None
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        self._server = grpc.aio.server(interceptors=[ErrorBoundary("fake-coordinator")])
        pb_grpc.add_CoordinatorServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    # -- RPCs ----------------------------------------------------------------------------

    def forget_nodes(self, *, token: bool = False) -> None:
        """Act like a restarted coordinator that has not seen this node yet (``token``: that
        holds another token for it)."""
        self._forgotten = RegistrationTokenError if token else NodeNotRegisteredError

    async def RegisterNode(self, request: Any, context: Any) -> pb.RegisterNodeResponse:
        self.register_calls += 1
        self._forgotten = None
        fields: dict[str, Any] = {
            "rank": 0,
            "world_size": 1,
            "manifest_hash": self.manifest_hash,
            "schema_version": SCHEMA_VERSION,
            "total_samples": self.total_samples,
            "heartbeat_interval_ms": 100,
            "lease_ttl_ms": 5000,
            "job_ready": True,
            "job_id": request.job_id,
            "epochs": 1,
            "block_size": 65536,
            "job_incarnation": self.job_incarnation,
        }
        return pb.RegisterNodeResponse(**(fields | self.register_overrides))

    async def Heartbeat(self, request: Any, context: Any) -> pb.HeartbeatResponse:
        if self._forgotten is not None:
            raise self._forgotten(
                f"node {request.node_id} not registered with this token", node_id=request.node_id
            )
        return pb.HeartbeatResponse(
            job_ready=True, world_size=1, job_incarnation=self.job_incarnation
        )

    async def RequestLease(self, request: Any, context: Any) -> pb.RequestLeaseResponse:
        self.request_lease_calls += 1
        if not self._leased:
            self._leased = True
            start, end = self.lease_range or (0, self.total_samples)
            lease = pb.Lease(
                lease_id="L1",
                node_id=request.node_id,
                range=pb.WorkRange(start_id=start, end_id=end, epoch=0),
                cursor=start,
            )
            return pb.RequestLeaseResponse(leases=[lease])
        done = any(c == self.total_samples for _, c in self.reports)
        return pb.RequestLeaseResponse(wait_ms=20, job_drained=done)

    async def ReportProgress(self, request: Any, context: Any) -> pb.ReportProgressResponse:
        self.reports.append((request.lease_id, request.cursor))
        done = request.cursor == self.total_samples
        return pb.ReportProgressResponse(
            lease=pb.Lease(lease_id=request.lease_id, cursor=request.cursor), completed=done
        )

    def _broken_bytes(self) -> bytes:
        data = self.manifest
        if self.fault == "header_schema":
            return data.replace(b"schema_version=0\n", b"schema_version=1\n", 1)
        if self.fault == "hash":
            i = data.index(b"\t", len(b"schema_version=0\n")) + 1
            return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        if self.fault == "bad_row":
            lines = data.split(b"\n")
            cols = lines[2].split(b"\t")
            cols[3] = b"12x"
            lines[2] = b"\t".join(cols)
            return b"\n".join(lines)
        return data

    async def GetManifestStream(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.ManifestChunk]:
        self.stream_calls += 1
        await self.release.wait()
        data = self._broken_bytes()
        total = len(data)
        if self.fault == "cut":
            data = data[: total // 2 + 3]
        elif self.fault == "cut_unannounced":
            data = data[: data.rindex(b"\n", 0, total // 2) + 1]
        drop_now = self.fault == "drop_once" and self.stream_calls == 1
        for offset in range(0, len(data), self.chunk_bytes):
            if drop_now and offset >= total // 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped (test)")
            piece = data[offset : offset + self.chunk_bytes]
            chunk = pb.ManifestChunk(data=piece, offset=offset, schema_version=SCHEMA_VERSION)
            if self.encoding and self.encoding in request.accept_encodings:
                chunk.data = encode_chunk(piece, self.encoding)
                chunk.encoding = self.encoding
                chunk.raw_length = len(piece)
                if self.fault == "zlib_cut" and offset > 0:
                    chunk.data = chunk.data[: len(chunk.data) // 2]
                elif self.fault == "zlib_corrupt" and offset > 0:
                    chunk.data = chunk.data[:8] + bytes([chunk.data[8] ^ 0xFF]) + chunk.data[9:]
                elif self.fault == "zlib_long" and offset > 0:
                    chunk.raw_length = len(piece) - 1
                elif self.fault == "zlib_unknown" and offset > 0:
                    chunk.encoding = "br"
            if self.fault == "chunk_schema" and offset > 0:
                chunk.schema_version = SCHEMA_VERSION + 1
            if offset == 0:
                chunk.manifest_hash = self.manifest_hash
                if self.fault != "cut_unannounced":
                    chunk.total_bytes = total
            yield chunk
            if self.stall_after_first_chunk:
                await asyncio.Event().wait()  # silent, connection open, until cancelled

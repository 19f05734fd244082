"""``CoordinatorClient``: one grpc.aio channel to ``mx8-coordinator``, errors made plain.

Methods mirror the ``mx8.v1.Coordinator`` RPCs and return its proto messages. A refusal
comes back as the typed error the coordinator raised (``LeaseNotFoundError``,
``JobNotReadyError``... rebuilt from the status details by ``rpc.errors``); any other
``grpc.aio.AioRpcError`` (unreachable, timed out, token refused) becomes a
``CoordinatorError`` carrying the status name in ``.code`` (``"UNAVAILABLE"``...). This
is the one place the coordinator's gRPC errors are translated.

TLS, the bearer token and the message cap come from ``CoordinatorClientConfig``
(``MX8_TLS_*``, ``MX8_AUTH_TOKEN``, ``MX8_GRPC_MAX_MESSAGE_BYTES``) unless given, so every
daemon and tool that dials the coordinator follows the same environment; the channel itself
is built by ``rpc.channels``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from mx8_common.errors import CoordinatorError, RegistrationTokenError
from mx8_common.rpc.channels import aio_channel
from mx8_common.rpc.client_config import CoordinatorClientConfig
from mx8_common.rpc.errors import error_from_rpc
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_common.rpc.security import TlsConfig

__all__ = ["CoordinatorClient"]


@contextlib.contextmanager
def _rpc_errors(address: str, method: str) -> Iterator[None]:
    """Translate gRPC failures of ``method``: the coordinator's typed error, or else a
    ``CoordinatorError`` naming the status code."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        refused = error_from_rpc(exc, origin=f"the coordinator at {address}")
        if refused is not None:
            raise refused from exc
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            message = (
                f"coordinator at {address} is unreachable; is mx8-coordinator running and "
                f"--coordinator right? If it runs TLS, set MX8_TLS_CA (and MX8_TLS_CERT/"
                f"MX8_TLS_KEY for mutual TLS) ({method}: {exc.details()})"
            )
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            message = (
                f"coordinator at {address} refused {method} (UNAUTHENTICATED): {exc.details()}"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = (
                f"coordinator at {address} did not answer {method} in time; it may be "
                "overloaded or the network is slow (raise the client timeout)"
            )
        else:
            message = f"coordinator at {address} refused {method}: {exc.details()}"
        raise CoordinatorError(message, address=address, code=code.name) from exc


class CoordinatorClient:
    """An async client of one coordinator; use ``async with CoordinatorClient(addr) as c``.

    ``tls`` None reads ``MX8_TLS_*`` (pass ``TlsConfig()`` to force plaintext); ``token``
    None reads ``MX8_AUTH_TOKEN`` (pass ``""`` to send none).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        max_message_bytes: int | None = None,
        tls: TlsConfig | None = None,
        token: str | None = None,
    ) -> None:
        if max_message_bytes is None or tls is None or token is None:
            env = CoordinatorClientConfig.from_env()  # fills what the caller left None
            if max_message_bytes is None:
                max_message_bytes = env.max_message_bytes
            tls = env.tls if tls is None else tls
            token = env.auth_token if token is None else token
        self.address = address
        self.timeout_s = timeout_s
        self.tls = tls
        self._channel = aio_channel(
            address, tls=tls, token=token, max_message_bytes=max_message_bytes
        )
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        #: The secret of this node's registration (``register_node`` keeps it), sent with
        #: every heartbeat, lease request and progress report.
        self.registration_token = ""
        #: Set when the registration in flight has its answer (None: none in flight).
        self._registering: asyncio.Event | None = None

    async def close(self) -> None:
        """Close the channel (idempotent)."""
        await self._channel.close()

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any) -> Any:
        with _rpc_errors(self.address, method):
            return await getattr(self._stub, method)(request, timeout=self.timeout_s)

    async def _call_as_node(self, method: str, build: Callable[[str], Any]) -> Any:
        """A call that carries the registration token (``build(token)`` makes the request).

        Refused for its token while or after this client registered again (a new
        coordinator, a standby that took over): the call was built with the old token, so
        it is sent once more with the current one. The coordinator holds the new token
        before its answer arrives (it logs the registration first), so a refusal that
        overtakes that answer waits for it. A refusal of the current token stands.
        """
        token = self.registration_token
        try:
            return await self._call(method, build(token))
        except RegistrationTokenError:
            if self._registering is not None:
                await self._registering.wait()
            if self.registration_token == token:
                raise
            return await self._call(method, build(self.registration_token))

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until the channel connects (the coordinator listens), or raise."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._channel.channel_ready()
        except TimeoutError as exc:
            raise CoordinatorError(
                f"coordinator at {self.address} is unreachable after {timeout_s}s; is "
                "mx8-coordinator running and --coordinator right?",
                address=self.address,
                code="UNAVAILABLE",
            ) from exc

    async def register_node(
        self,
        job_id: str,
        node_id: str,
        *,
        hostname: str = "",
        max_inflight_bytes: int = 0,
        fetch_concurrency: int = 0,
        incarnation: str = "",
        ranks: Sequence[pb.RankProgress] = (),
    ) -> pb.RegisterNodeResponse:
        caps = pb.NodeCaps(
            hostname=hostname,
            max_inflight_bytes=max_inflight_bytes,
            fetch_concurrency=fetch_concurrency,
            incarnation=incarnation,
        )
        request = pb.RegisterNodeRequest(job_id=job_id, node_id=node_id, caps=caps, ranks=ranks)
        answered = self._registering = asyncio.Event()
        try:
            reply = await self._call("RegisterNode", request)
            self.registration_token = reply.registration_token
        finally:
            answered.set()  # refusals waiting on it decide, with or without a new token
            if self._registering is answered:
                self._registering = None
        return reply

    async def heartbeat(
        self,
        job_id: str,
        node_id: str,
        *,
        samples_delivered: int = 0,
        bytes_fetched: int = 0,
        inflight_bytes: int = 0,
        fetch_retries: int = 0,
    ) -> pb.HeartbeatResponse:
        stats = pb.NodeStats(
            samples_delivered=samples_delivered,
            bytes_fetched=bytes_fetched,
            inflight_bytes=inflight_bytes,
            fetch_retries=fetch_retries,
        )
        return await self._call_as_node(
            "Heartbeat",
            lambda token: pb.HeartbeatRequest(
                job_id=job_id, node_id=node_id, stats=stats, registration_token=token
            ),
        )

    async def request_lease(
        self, job_id: str, node_id: str, want: int = 1
    ) -> pb.RequestLeaseResponse:
        return await self._call_as_node(
            "RequestLease",
            lambda token: pb.RequestLeaseRequest(
                job_id=job_id, node_id=node_id, want=want, registration_token=token
            ),
        )

    async def report_progress(
        self,
        job_id: str,
        node_id: str,
        lease_id: str,
        cursor: int,
        *,
        delivered_bytes: int = 0,
        release: bool = False,
    ) -> pb.ReportProgressResponse:
        """Commit ``[start, cursor)`` of a lease (renewing it); ``release`` gives the
        rest back."""
        return await self._call_as_node(
            "ReportProgress",
            lambda token: pb.ReportProgressRequest(
                job_id=job_id,
                node_id=node_id,
                lease_id=lease_id,
                cursor=cursor,
                delivered_bytes=delivered_bytes,
                registration_token=token,
                release=release,
            ),
        )

    async def get_manifest(self, job_id: str, manifest_hash: str) -> pb.GetManifestResponse:
        """The whole manifest in one message (small manifests; see ``get_manifest_stream``)."""
        request = pb.GetManifestRequest(job_id=job_id, manifest_hash=manifest_hash)
        return await self._call("GetManifest", request)

    async def get_manifest_stream(
        self, job_id: str, manifest_hash: str, *, accept_encodings: Sequence[str] = ()
    ) -> AsyncIterator[pb.ManifestChunk]:
        """The manifest's chunks in order, as the coordinator streams them.

        With ``accept_encodings`` (e.g. ``("zlib",)``) chunks may come encoded (their
        ``encoding`` field; ``mx8_common.manifest.chunk_codec.decode_chunk`` decodes them).
        No overall deadline: a large manifest may take longer than ``timeout_s``.
        """
        request = pb.GetManifestStreamRequest(
            job_id=job_id, manifest_hash=manifest_hash, accept_encodings=list(accept_encodings)
        )
        call = self._stub.GetManifestStream(request)
        try:
            with _rpc_errors(self.address, "GetManifestStream"):
                async for chunk in call:
                    yield chunk
        finally:
            call.cancel()

    async def get_job_snapshot(self, job_id: str = "") -> pb.JobSnapshot:
        return await self._call("GetJobSnapshot", pb.GetJobSnapshotRequest(job_id=job_id))

    async def register_rank(self, request: pb.RegisterRankRequest) -> pb.RegisterRankResponse:
        """Rank-exact mode: a trainer rank joins its world (a refusal is in the reply)."""
        return await self._call("RegisterRank", request)

    async def report_ranks(
        self, job_id: str, node_id: str, ranks: list[pb.RankProgress]
    ) -> pb.ReportRanksResponse:
        return await self._call_as_node(
            "ReportRanks",
            lambda token: pb.ReportRanksRequest(
                job_id=job_id, node_id=node_id, ranks=ranks, registration_token=token
            ),
        )

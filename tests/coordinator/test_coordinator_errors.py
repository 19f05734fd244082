"""Every refusal the coordinator documents, over real gRPC: the client gets the typed error
the coordinator raised (class and fields), sent with the documented status code."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from support.eventually import assert_eventually

from mx8_common.errors import (
    CoordinatorError,
    JobNotReadyError,
    JobStateError,
    LeaseNotFoundError,
    LeaseRangeError,
    LeaseStateError,
    ManifestTooLargeError,
    Mx8Error,
    NodeNotRegisteredError,
    RequestError,
    SnapshotNotFoundError,
)
from mx8_common.rpc.coordinator_client import CoordinatorClient

JOB = "default"


async def expect(cls: type[Mx8Error], status: str, match: str, call, **fields: object) -> Mx8Error:
    """``call`` raises exactly ``cls`` with ``fields``, sent with gRPC status ``status``."""
    with pytest.raises(Mx8Error, match=match) as info:
        await call
    error = info.value
    assert type(error) is cls, error
    assert error.__cause__.code().name == status, error
    for name, value in fields.items():
        assert getattr(error, name) == value, (name, error)
    return error


async def test_coordinator_errors_invalid_argument(manifest_path: Path, start_coordinator) -> None:
    coord = await start_coordinator(manifest_path, block_size=100)
    async with CoordinatorClient(coord.address) as c:
        await expect(
            RequestError,
            "INVALID_ARGUMENT",
            "node_id is empty",
            c.register_node(JOB, ""),
            field="node_id",
        )
        await expect(
            RequestError,
            "INVALID_ARGUMENT",
            "job_id is empty",
            c.register_node("", "a"),
            field="job_id",
        )
        await c.register_node(JOB, "a")
        await expect(
            RequestError,
            "INVALID_ARGUMENT",
            "want must be > 0",
            c.request_lease(JOB, "a", 0),
            field="want",
        )
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await expect(
            LeaseRangeError,
            "INVALID_ARGUMENT",
            rf"cursor 101 is outside lease {lease.lease_id}'s range \[0, 100\]",
            c.report_progress(JOB, "a", lease.lease_id, 101),
            lease_id=lease.lease_id,
        )
        await expect(
            RequestError,
            "INVALID_ARGUMENT",
            "lease_id is empty",
            c.report_progress(JOB, "a", "", 1),
            field="lease_id",
        )
        await expect(
            RequestError,
            "INVALID_ARGUMENT",
            "manifest_hash is empty",
            c.get_manifest(JOB, ""),
            field="manifest_hash",
        )


async def test_coordinator_errors_failed_precondition(
    manifest_path: Path, start_coordinator
) -> None:
    coord = await start_coordinator(manifest_path, world_size=2, block_size=100)
    async with CoordinatorClient(coord.address) as c:
        for call in (c.request_lease(JOB, "ghost", 1), c.heartbeat(JOB, "ghost")):
            await expect(
                NodeNotRegisteredError,
                "FAILED_PRECONDITION",
                "not registered",
                call,
                node_id="ghost",
            )
        await expect(
            JobStateError,
            "FAILED_PRECONDITION",
            "serves job 'default', not 'other'",
            c.register_node("other", "a"),
        )
        await c.register_node(JOB, "a")
        await expect(
            JobNotReadyError,
            "FAILED_PRECONDITION",
            "job is not ready: 1 of 2",
            c.request_lease(JOB, "a", 1),
            node_id="a",
        )
        await c.register_node(JOB, "b")
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await c.report_progress(JOB, "a", lease.lease_id, 50)
        await expect(
            LeaseStateError,
            "FAILED_PRECONDITION",
            "goes back from 50",
            c.report_progress(JOB, "a", lease.lease_id, 10),
            lease_id=lease.lease_id,
        )
        await expect(
            LeaseStateError,
            "FAILED_PRECONDITION",
            "held by node 'a', not 'b'",
            c.report_progress(JOB, "b", lease.lease_id, 60),
            lease_id=lease.lease_id,
        )


async def test_coordinator_errors_not_found(manifest_path: Path, start_coordinator) -> None:
    coord = await start_coordinator(
        manifest_path, block_size=100, lease_ttl_ms=300, heartbeat_interval_ms=50
    )
    async with CoordinatorClient(coord.address) as c:
        await c.register_node(JOB, "a")
        await expect(
            LeaseNotFoundError,
            "NOT_FOUND",
            "'L42' is unknown",
            c.report_progress(JOB, "a", "L42", 1),
            lease_id="L42",
        )
        await expect(
            SnapshotNotFoundError,
            "NOT_FOUND",
            "serves manifest",
            c.get_manifest(JOB, "0" * 64),
            manifest_hash="0" * 64,
        )
        stream = c.get_manifest_stream(JOB, "f" * 64)
        await expect(
            SnapshotNotFoundError,
            "NOT_FOUND",
            "serves manifest",
            stream.__anext__(),
            manifest_hash="f" * 64,
        )
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await c.report_progress(JOB, "a", lease.lease_id, 5)
        # Go silent past the TTL: the lease expires and reports on it are refused.
        await assert_eventually(
            lambda: coord.job is not None and not coord.job.scheduler.live_leases()
        )
        await expect(
            LeaseNotFoundError,
            "NOT_FOUND",
            r"expired at cursor 5 .* remainder \[5, 100\) was re-queued; drop it",
            c.report_progress(JOB, "a", lease.lease_id, 6),
            lease_id=lease.lease_id,
        )


async def test_coordinator_errors_manifest_over_message_cap(
    manifest_path: Path, start_coordinator
) -> None:
    coord = await start_coordinator(manifest_path, max_message_bytes=4096)
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    async with CoordinatorClient(coord.address) as c:
        await expect(
            ManifestTooLargeError,
            "RESOURCE_EXHAUSTED",
            "use GetManifestStream",
            c.get_manifest(JOB, digest),
        )


async def test_coordinator_client_unreachable_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    async with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=2) as c:
        await expect(
            CoordinatorError,
            "UNAVAILABLE",
            "is unreachable; is mx8-coordinator running",
            c.heartbeat(JOB, "a"),
            address=f"127.0.0.1:{port}",
            code="UNAVAILABLE",
        )
        with pytest.raises(CoordinatorError, match=r"unreachable after 0\.2s") as info:
            await c.wait_ready(timeout_s=0.2)
        assert info.value.code == "UNAVAILABLE"

"""Every status code the coordinator documents, produced over real gRPC, with a useful message."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from support.eventually import assert_eventually

from mx8_common.errors import CoordinatorError
from mx8_common.rpc.coordinator_client import CoordinatorClient

JOB = "default"


async def expect(code: str, match: str, call) -> CoordinatorError:
    with pytest.raises(CoordinatorError, match=match) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def test_coordinator_errors_invalid_argument(manifest_path: Path, start_coordinator) -> None:
    coord = await start_coordinator(manifest_path, block_size=100)
    async with CoordinatorClient(coord.address) as c:
        await expect("INVALID_ARGUMENT", "node_id is empty", c.register_node(JOB, ""))
        await expect("INVALID_ARGUMENT", "job_id is empty", c.register_node("", "a"))
        await c.register_node(JOB, "a")
        await expect("INVALID_ARGUMENT", "want must be > 0", c.request_lease(JOB, "a", 0))
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await expect(
            "INVALID_ARGUMENT",
            r"cursor 101 is outside lease L1's range \[0, 100\]",
            c.report_progress(JOB, "a", lease.lease_id, 101),
        )
        await expect("INVALID_ARGUMENT", "lease_id is empty", c.report_progress(JOB, "a", "", 1))
        await expect("INVALID_ARGUMENT", "manifest_hash is empty", c.get_manifest(JOB, ""))


async def test_coordinator_errors_failed_precondition(
    manifest_path: Path, start_coordinator
) -> None:
    coord = await start_coordinator(manifest_path, world_size=2, block_size=100)
    async with CoordinatorClient(coord.address) as c:
        await expect("FAILED_PRECONDITION", "not registered", c.request_lease(JOB, "ghost", 1))
        await expect("FAILED_PRECONDITION", "not registered", c.heartbeat(JOB, "ghost"))
        await expect(
            "FAILED_PRECONDITION",
            "serves job 'default', not 'other'",
            c.register_node("other", "a"),
        )
        await c.register_node(JOB, "a")
        await expect(
            "FAILED_PRECONDITION", "job is not ready: 1 of 2", c.request_lease(JOB, "a", 1)
        )
        await c.register_node(JOB, "b")
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await c.report_progress(JOB, "a", lease.lease_id, 50)
        await expect(
            "FAILED_PRECONDITION",
            "goes back from 50",
            c.report_progress(JOB, "a", lease.lease_id, 10),
        )
        await expect(
            "FAILED_PRECONDITION",
            "held by node 'a', not 'b'",
            c.report_progress(JOB, "b", lease.lease_id, 60),
        )


async def test_coordinator_errors_not_found(manifest_path: Path, start_coordinator) -> None:
    coord = await start_coordinator(
        manifest_path, block_size=100, lease_ttl_ms=300, heartbeat_interval_ms=50
    )
    async with CoordinatorClient(coord.address) as c:
        await c.register_node(JOB, "a")
        await expect("NOT_FOUND", "'L42' is unknown", c.report_progress(JOB, "a", "L42", 1))
        await expect("NOT_FOUND", "serves manifest", c.get_manifest(JOB, "0" * 64))
        stream = c.get_manifest_stream(JOB, "f" * 64)
        await expect("NOT_FOUND", "serves manifest", stream.__anext__())
        (lease,) = (await c.request_lease(JOB, "a", 1)).leases
        await c.report_progress(JOB, "a", lease.lease_id, 5)
        # Go silent past the TTL: the lease expires and reports on it are refused.
        await assert_eventually(
            lambda: coord.job is not None and not coord.job.scheduler.live_leases()
        )
        await expect(
            "NOT_FOUND",
            r"expired at cursor 5 .* remainder \[5, 100\) was re-queued; drop it",
            c.report_progress(JOB, "a", lease.lease_id, 6),
        )


async def test_coordinator_errors_manifest_over_message_cap(
    manifest_path: Path, start_coordinator
) -> None:
    coord = await start_coordinator(manifest_path, max_message_bytes=4096)
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    async with CoordinatorClient(coord.address) as c:
        await expect("RESOURCE_EXHAUSTED", "use GetManifestStream", c.get_manifest(JOB, digest))


async def test_coordinator_client_unreachable_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    async with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=2) as c:
        err = await expect(
            "UNAVAILABLE", "is unreachable; is mx8-coordinator running", c.heartbeat(JOB, "a")
        )
        assert err.address == f"127.0.0.1:{port}"
        with pytest.raises(CoordinatorError, match=r"unreachable after 0\.2s") as info:
            await c.wait_ready(timeout_s=0.2)
        assert info.value.code == "UNAVAILABLE"

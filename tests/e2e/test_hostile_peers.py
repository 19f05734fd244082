"""``mx8d-agent`` processes against a hostile or broken coordinator (a fake speaking the
real proto): nothing outside the agent's own directories is touched, and every bad reply
ends in one line, a named event and exit 2, never a traceback or an endless wait. And a
real ``mx8-coordinator`` against a fake agent that holds the shared token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.agent import DaemonProcess, run_trainer
from support.fake_coordinator import FakeCoordinator
from support.manifests import write_local_dataset

from mx8_common.errors import NodeIdInUseError, RegistrationTokenError
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.errors import status_code_for
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow


def start_agent(
    daemons: list[DaemonProcess], tmp_path: Path, coordinator: str, sock_dir: Path, *args: str
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_agent",
        [
            "--coordinator",
            coordinator,
            "--node-id",
            "h",
            "--listen",
            f"unix://{sock_dir}/h.sock",
            *args,
        ],
        tmp_path / "agent-h.log",
    )
    daemons.append(proc)
    return proc


def one_plain_line(proc: DaemonProcess) -> str:
    """The agent's only non-JSON output line (no traceback)."""
    plain = [line for line in proc.text().splitlines() if not line.startswith("{")]
    assert len(plain) == 1, plain
    assert "Traceback" not in proc.text()
    return plain[0]


async def run_against(
    fake: FakeCoordinator,
    daemons: list[DaemonProcess],
    tmp_path: Path,
    sock_dir: Path,
    *args: str,
) -> tuple[DaemonProcess, int]:
    address = await fake.start()
    try:
        agent = start_agent(daemons, tmp_path, address, sock_dir, *args)
        code = await agent.wait_exit(30)
    finally:
        await fake.stop()
    return agent, code


async def test_agent_cached_ingest_refuses_a_traversal_hash_and_leaves_the_victim(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    data = write_local_dataset(tmp_path / "ds", 20).read_bytes()
    cache = tmp_path / "a" / "b" / "cache"
    cache.mkdir(parents=True)
    victim = tmp_path / "a" / "victim.tsv"
    victim.write_text("precious\n")
    fake = FakeCoordinator(data, total_samples=20, announced_hash="../victim")
    agent, code = await run_against(
        fake,
        daemons,
        tmp_path,
        sock_dir,
        "--manifest-ingest",
        "cached",
        "--cache-dir",
        str(cache),
    )
    assert victim.read_text() == "precious\n"
    assert code == 2
    assert "manifest_hash" in one_plain_line(agent)
    event = agent.event("coordinator_reply_invalid")
    assert event is not None and event["field"] == "manifest_hash"
    assert fake.stream_calls == 0 and fake.request_lease_calls == 0


@pytest.mark.parametrize(
    ("overrides", "lease_range", "field"),
    [
        ({"block_size": 0}, None, "block_size"),
        ({"heartbeat_interval_ms": 0}, None, "heartbeat_interval_ms"),
        ({}, (0, 10_000), "range"),
        ({}, (15, 5), "range"),
        ({"listed_at_unix_s": float("nan")}, None, "listed_at_unix_s"),
    ],
    ids=["block_size_0", "heartbeat_0", "range_past_end", "start_after_end", "listed_at_nan"],
)
async def test_agent_fails_closed_on_a_malformed_registration_or_lease(
    tmp_path: Path,
    sock_dir: Path,
    daemons: list[DaemonProcess],
    overrides: dict[str, Any],
    lease_range: tuple[int, int] | None,
    field: str,
) -> None:
    data = write_local_dataset(tmp_path / "ds", 20).read_bytes()
    fake = FakeCoordinator(
        data, total_samples=20, register_overrides=overrides, lease_range=lease_range
    )
    address = await fake.start()
    try:
        agent = start_agent(daemons, tmp_path, address, sock_dir)
        if lease_range is not None:
            # The lease loop starts once a trainer says its batch size.
            await agent.wait_event("manifest_ingested")
            trainer = asyncio.get_running_loop().run_in_executor(
                None, lambda: run_trainer(f"unix://{sock_dir}/h.sock", batch_size=4, timeout_s=20)
            )
            code = await agent.wait_exit(30)
            assert (await trainer).error is not None
        else:
            code = await agent.wait_exit(30)
    finally:
        await fake.stop()
    assert code == 2
    assert field in one_plain_line(agent)
    event = agent.event("coordinator_reply_invalid")
    assert event is not None and event["field"] == field
    assert agent.event("lease_started") is None


async def test_agent_ends_a_stalled_manifest_stream_as_truncated_and_retries_per_policy(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    data = write_local_dataset(tmp_path / "ds", 300).read_bytes()
    fake = FakeCoordinator(data, total_samples=300, chunk_bytes=512, stall_after_first_chunk=True)
    agent, code = await run_against(
        fake,
        daemons,
        tmp_path,
        sock_dir,
        "--manifest-chunk-timeout-s",
        "0.5",
        "--ingest-attempts",
        "2",
    )
    assert code == 2
    assert "stalled" in one_plain_line(agent)
    assert len(agent.events("manifest_ingest_retry")) == 1
    assert agent.event("manifest_stream_truncated") is not None
    assert fake.stream_calls == 2 and fake.request_lease_calls == 0


async def test_coordinator_refuses_a_token_holder_reporting_another_nodes_lease_complete(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Without mTLS, knowing the shared bearer token is not enough to act as node n0."""
    env = {"MX8_AUTH_TOKEN": "shared-secret"}
    coordinator = DaemonProcess(
        "mx8_coordinator",
        [
            "--dataset",
            str(write_local_dataset(tmp_path / "ds", 300)),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--mode",
            "dynamic",
            "--lease-ttl-ms",
            "30000",
        ],
        tmp_path / "coordinator.log",
        env=env,
    )
    daemons.append(coordinator)
    address = (await coordinator.wait_event("coordinator_serving"))["address"]
    async with (
        CoordinatorClient(address, token="shared-secret") as n0,
        CoordinatorClient(address, token="shared-secret") as fake,
    ):
        reg = await n0.register_node("default", "n0", incarnation="n0-process")
        assert len(reg.registration_token) == 32
        (lease,) = (await n0.request_lease("default", "n0", 1)).leases
        end = lease.range.end_id
        # Registering as n0 while n0 is live is refused, with or without an incarnation.
        for incarnation in ("", "fake-process"):
            with pytest.raises(NodeIdInUseError, match="held by a live agent"):
                await fake.register_node("default", "n0", incarnation=incarnation)
        # A registration of its own gives the fake its own token, not n0's.
        await fake.register_node("default", "fake", incarnation="fake-process")
        assert fake.registration_token not in ("", n0.registration_token)
        for token in (fake.registration_token, ""):
            fake.registration_token = token
            with pytest.raises(RegistrationTokenError, match="only the agent that registered"):
                await fake.report_progress("default", "n0", lease.lease_id, end)
            with pytest.raises(RegistrationTokenError):
                await fake.heartbeat("default", "n0")
        refused = coordinator.events("registration_token_mismatch")
        assert len(refused) == 4 and {e["node_id"] for e in refused} == {"n0"}
        # n0 itself still reports its lease, and nothing was committed for the fake.
        done = await n0.report_progress("default", "n0", lease.lease_id, end)
        assert done.completed
        snap = await n0.get_job_snapshot()
        assert {n.node_id: n.samples_committed for n in snap.nodes} == {
            "n0": end - lease.range.start_id,
            "fake": 0,
        }
    assert "Traceback" not in coordinator.text()


def test_registration_token_mismatch_is_permission_denied() -> None:
    error = RegistrationTokenError("no", node_id="n0")
    assert status_code_for(error) == grpc.StatusCode.PERMISSION_DENIED

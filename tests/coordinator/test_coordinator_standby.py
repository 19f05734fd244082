"""Coordinators in-process with the lease log in a shared folder used as a store
(``file://``): health, status, metrics and the handover of a clean shutdown."""

from __future__ import annotations

import asyncio
import io
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.eventually import assert_eventually

from mx8.cli import print_status
from mx8_common.errors import ConfigError
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import FileManifestSource
from mx8_coordinator.server import Coordinator

pytestmark = pytest.mark.timeout(60)


async def http_get(url: str) -> bytes:
    # Off the loop: the status handler builds its answer on the loop.
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())


async def health(address: str) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return reply.status


def config(manifest: Path, state: Path, **extra: Any) -> CoordinatorConfig:
    return CoordinatorConfig(
        dataset=str(manifest),
        listen="127.0.0.1:0",
        mode="dynamic",
        lease_ttl_ms=1000,
        heartbeat_interval_ms=100,
        block_size=100,
        state_dir=f"file://{state}",
        metrics="127.0.0.1:0",
        **extra,
    )


def test_coordinator_config_standby_needs_state_dir_in_a_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--standby needs --state-dir as a store URL"):
        CoordinatorConfig(dataset="x", standby=True, state_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--state-flush-ms"):
        CoordinatorConfig(dataset="x", state_dir="s3://b/p/", lease_ttl_ms=1000, state_flush_ms=500)


async def test_standby_is_not_serving_names_the_leader_and_takes_over_on_clean_shutdown(
    manifest_path: Path, tmp_path: Path
) -> None:
    state = tmp_path / "shared"
    leader = Coordinator(
        config(manifest_path, state), source=await FileManifestSource.open(manifest_path)
    )
    standby = Coordinator(
        config(manifest_path, state, standby=True),
        source=await FileManifestSource.open(manifest_path),
    )
    try:
        await leader.start()
        assert leader.status().leader_term == 1
        assert leader.status().leader.endswith(f"at {leader.address}")
        async with CoordinatorClient(leader.address) as client:
            await client.register_node("default", "n")
            grant = await client.request_lease("default", "n", 1)
            lease = grant.leases[0]
            await client.report_progress("default", "n", lease.lease_id, lease.range.start_id + 10)
        starting = asyncio.create_task(standby.start())
        await assert_eventually(lambda: standby.address is not None and standby._watched)
        assert standby.address is not None
        assert await health(standby.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        waiting = standby.status()
        assert waiting.leader_term == 1 and waiting.leader == leader.status().leader
        base = f"http://127.0.0.1:{leader.metrics_port}"
        text = (await http_get(f"{base}/metrics")).decode()
        assert "mx8_coordinator_leader_term 1.0" in text
        assert "mx8_coordinator_log_segments_written_total" in text
        # The lease and progress records' segment writes are timed like a local log's syncs.
        syncs = re.search(r"^mx8_coordinator_lease_log_sync_seconds_count (\S+)$", text, re.M)
        assert syncs is not None and float(syncs.group(1)) >= 2
        html = await http_get(f"{base}/")
        assert b"leader term" in html
        printed = io.StringIO()
        print_status(leader.status(), file=printed)  # what `mx8 status` draws
        assert "leader term" in printed.getvalue() and leader.address in printed.getvalue()

        await leader.shutdown()  # releases its record: no TTL to wait out
        await asyncio.wait_for(starting, 5)
        assert await health(standby.address) == health_pb2.HealthCheckResponse.SERVING
        status = standby.status()
        assert status.leader_term == 2
        assert status.counters.samples_committed == 10  # replayed from the shared log
        assert status.live_leases[0].lease_id == lease.lease_id
    finally:
        await standby.shutdown()
        await leader.shutdown()

"""``mx8-coordinator`` and ``mx8d-agent`` as real processes, trainers as threads.

The multi-agent tests: two agents x two trainers over a 5,000-object S3 prefix (delivered
exactly once), an agent killed with SIGKILL mid-epoch (survivors finish, every position
committed exactly once, nothing committed that its trainer did not consume), and the CLI
contract (fail-closed exit 2 with one line, SIGTERM exit 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess, TrainerRun, run_trainer
from support.eventually import assert_eventually, assert_eventually_blocking
from support.fake_coordinator import FakeCoordinator
from support.manifests import write_local_dataset

from mx8_common.errors import AgentError
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.testing.local_s3 import free_port
from mx8_coordinator.state.lease_log import lease_log_path

pytestmark = pytest.mark.slow

JOB = "default"


def start_coordinator(
    daemons: list[DaemonProcess], tmp_path: Path, dataset: str, *args: str
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_coordinator",
        # These are dynamic mode's tests (work-stealing leases).
        ["--dataset", dataset, "--listen", f"127.0.0.1:{free_port()}", "--mode", "dynamic", *args],
        tmp_path / "coordinator.log",
    )
    daemons.append(proc)
    return proc


def start_agent(
    daemons: list[DaemonProcess],
    tmp_path: Path,
    coordinator: str,
    node_id: str,
    sock_dir: Path,
    *args: str,
) -> tuple[DaemonProcess, str]:
    url = f"unix://{sock_dir}/{node_id}.sock"
    proc = DaemonProcess(
        "mx8_agent",
        [
            "--coordinator",
            coordinator,
            "--node-id",
            node_id,
            "--listen",
            url,
            "--progress-interval-ms",
            "100",
            *args,
        ],
        tmp_path / f"agent-{node_id}.log",
    )
    daemons.append(proc)
    return proc, url


def trainers(
    url: str, n: int, **kw: Any
) -> tuple[list[asyncio.Future[TrainerRun]], ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(n)
    loop = asyncio.get_running_loop()
    futures = [
        loop.run_in_executor(pool, lambda r=r: run_trainer(url, local_rank=r, **kw))
        for r in range(n)
    ]
    return futures, pool


async def committed_by(address: str, node_id: str) -> int:
    async with CoordinatorClient(address) as client:
        snap = await client.get_job_snapshot()
    return sum(n.samples_committed for n in snap.nodes if n.node_id == node_id)


def committed_ranges(state_dir: Path) -> dict[str, tuple[str, int, int, int]]:
    """lease id -> (node, epoch, start, last reported cursor), from the lease log."""
    leases: dict[str, tuple[str, int, int, int]] = {}
    for line in lease_log_path(state_dir, JOB).read_text().splitlines():
        record = json.loads(line)
        if record.get("ev") == "issue":
            start = record["start"]
            leases[record["lease"]] = (record["node"], record["epoch"], start, start)
        elif record.get("ev") == "progress":
            node, epoch, start, _ = leases[record["lease"]]
            leases[record["lease"]] = (node, epoch, start, record["cursor"])
    return leases


async def test_agent_processes_two_agents_two_trainers_s3_prefix_exactly_once(
    tmp_path: Path,
    s3_env: Any,
    s3_sync_client: Any,
    s3_bucket: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
) -> None:
    n = 5000

    def body(i: int) -> bytes:
        return f"object {i}\n".encode() * (1 + i % 5)

    def put(i: int) -> None:
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"train/{i:05d}.bin", Body=body(i))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(n)))
    coordinator = start_coordinator(
        daemons,
        tmp_path,
        f"s3://{s3_bucket}/train/",
        "--store",
        str(tmp_path / "store"),
        "--world-size",
        "2",
        "--block-size",
        "250",
        "--heartbeat-interval-ms",
        "200",
    )
    address = (await coordinator.wait_event("coordinator_serving", 60))["address"]
    agents = [
        start_agent(daemons, tmp_path, address, f"a{k}", sock_dir, "--fetch-concurrency", "32")
        for k in range(2)
    ]
    futures: list[asyncio.Future[TrainerRun]] = []
    pools = []
    for proc, url in agents:
        await proc.wait_event("agent_listening")
        fs, pool = trainers(url, 2, batch_size=32, timeout_s=60)
        futures += fs
        pools.append(pool)
    runs = await asyncio.wait_for(asyncio.gather(*futures), 150)
    for pool in pools:
        pool.shutdown()
    for run in runs:
        assert run.error is None, run.error
    delivered = [i for run in runs for i in run.ids]
    assert sorted(delivered) == list(range(n))  # every id exactly once
    assert all(len(run.ids) > 0 for run in runs)  # all four trainers took part
    for proc, _ in agents:
        assert await proc.wait_exit(30) == 0, proc.text()
        assert proc.event("lease_started") is not None
    drained = await coordinator.wait_event("job_drained", 10)
    assert drained["samples_committed"] == n


async def test_agent_processes_sigkill_mid_epoch_survivor_finishes_committed_once(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    n = 2000
    manifest = write_local_dataset(tmp_path / "ds", n)
    state = tmp_path / "state"
    coordinator = start_coordinator(
        daemons,
        tmp_path,
        str(manifest),
        "--state-dir",
        str(state),
        "--world-size",
        "2",
        "--block-size",
        "100",
        "--heartbeat-interval-ms",
        "100",
        "--lease-ttl-ms",
        "1500",
    )
    address = (await coordinator.wait_event("coordinator_serving"))["address"]
    (a, url_a), (b, url_b) = (
        start_agent(daemons, tmp_path, address, node, sock_dir) for node in ("a", "b")
    )
    await a.wait_event("agent_listening")
    await b.wait_event("agent_listening")
    seen_b = 0

    def kill_b(_batch: Any) -> None:
        nonlocal seen_b
        seen_b += 1
        if seen_b == 10:
            # Batches 1-9 are acked, so b's first 100-sample lease is complete: wait until
            # the coordinator committed it, then kill b mid-epoch with batches in flight.
            assert_eventually_blocking(lambda: asyncio.run(committed_by(address, "b")) >= 100)
            os.kill(b.proc.pid, signal.SIGKILL)

    run_a, run_b = await asyncio.gather(
        asyncio.to_thread(run_trainer, url_a, delay_s=0.002),
        asyncio.to_thread(run_trainer, url_b, on_batch=kill_b),
    )
    assert isinstance(run_b.error, AgentError), run_b.error
    assert run_a.error is None, run_a.error
    assert b.proc.wait(10) == -signal.SIGKILL
    assert await a.wait_exit(30) == 0, a.text()
    # The survivor delivered everything b's trainer did not acknowledge.
    assert set(run_a.ids) | set(run_b.ids) == set(range(n))
    assert coordinator.event("lease_expired") is not None
    # Committed positions (from the lease log): disjoint, covering the epoch exactly once,
    # and b committed nothing its trainer did not consume.
    covered: list[int] = []
    by_b: set[int] = set()
    for node, epoch, start, cursor in committed_ranges(state).values():
        assert epoch == 0
        covered += range(start, cursor)
        if node == "b":
            by_b.update(range(start, cursor))
    assert sorted(covered) == list(range(n))
    assert len(by_b) >= 100
    assert by_b <= set(run_b.ids)

    # What the status page shows: b was killed mid-job (lost), a exited after the drain.
    def departures() -> dict[str, str] | None:
        got = {e["node_id"]: e["reason"] for e in coordinator.events("node_departed")}
        return got if len(got) == 2 else None

    assert await assert_eventually(departures, timeout_s=20) == {"a": "finished", "b": "lost"}


async def test_agent_processes_cli_fail_closed_exits_2_with_one_line(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    data = write_local_dataset(tmp_path, 300).read_bytes()
    fake = FakeCoordinator(data, total_samples=300, fault="cut")
    address = await fake.start()
    try:
        agent, _url = start_agent(daemons, tmp_path, address, "x", sock_dir)
        code = await agent.wait_exit(30)
    finally:
        await fake.stop()
    assert code == 2
    plain = [line for line in agent.text().splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("mx8d-agent: manifest stream ended")
    assert agent.event("manifest_stream_truncated")["level"] == "error"
    assert agent.event("agent_failed")["level"] == "error"
    assert agent.event("lease_started") is None
    assert fake.request_lease_calls == 0


async def test_agent_processes_sigterm_exits_0(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    coordinator = start_coordinator(
        daemons, tmp_path, str(write_local_dataset(tmp_path / "ds", 50))
    )
    address = (await coordinator.wait_event("coordinator_serving"))["address"]
    agent, url = start_agent(
        daemons,
        tmp_path,
        address,
        "t",
        sock_dir,
        "--manifest-ingest",
        "cached",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    ingested = await agent.wait_event("manifest_ingested")
    assert ingested["mode"] == "cached" and ingested["samples"] == 50
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.wait_exit(15) == 0
    assert agent.event("agent_stopped") is not None
    assert not Path(url.removeprefix("unix://")).exists()

"""Rank-exact mode (the default) with ``--state-dir`` in S3 (moto), processes.

Two agents (host-a serves ranks 0-1, host-b ranks 2-3) and four plain trainer processes.
With a standby: the agents reach "the coordinator" through one TCP forwarder, re-pointed
at the standby when the leader is killed with SIGKILL mid-epoch (what a Kubernetes
Service does with the Ready pod); the standby takes the next term and the job goes on.
Without the store: a leader whose state store stops answering is suspended (refuses
registrations; rank-exact heartbeats and reports write nothing and go on); an agent that
registers then waits, saying for what, and joins when the store returns, or gives up at
``--connect-timeout-s`` with one clear line.
Either way every rank's ids equal the uninterrupted run's (embedded ``mx8.load``).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess
from support.eventually import assert_eventually
from support.rank_jobs import (
    embedded,
    kill_trainers,
    put_dataset,
    records,
    start_trainer,
    wait_trainer,
)
from support.tcp_proxy import TcpProxy

from mx8_common.testing.local_s3 import LocalS3, free_port

pytestmark = pytest.mark.slow

SAMPLES = 400
BATCH = 4
SEED = 5
EPOCHS = 2
WORLD = 4
TTL_MS = 3000
HOSTS = ("host-a", "host-b")


@pytest.fixture
async def store_proxy(s3_server: LocalS3) -> AsyncIterator[TcpProxy]:
    """A forwarder to S3 the test can freeze (the store stops answering)."""
    p = TcpProxy(s3_server.env["MX8_S3_ENDPOINT_URL"].removeprefix("http://"))
    await p.start()
    yield p
    p.thaw()
    await p.stop()


@pytest.fixture
def trainers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        kill_trainers(procs)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1:1")
    yield p
    await p.stop()


def coordinator_args(link: str, bucket: str, address: str, *extra: str) -> list[str]:
    return [
        "--dataset", link, "--listen", address, "--world-size", "2", "--epochs", str(EPOCHS),
        "--shuffle", "--seed", str(SEED), "--heartbeat-interval-ms", "200",
        "--lease-ttl-ms", str(TTL_MS), "--state-dir", f"s3://{bucket}/state/", *extra,
    ]  # fmt: skip


def start_agent(
    tmp_path: Path, sock_dir: Path, host: str, address: str, *extra: str
) -> DaemonProcess:
    args = [
        "--coordinator", address, "--node-id", host, "--listen", f"unix://{sock_dir}/{host}.sock",
        "--progress-interval-ms", "100", "--max-inflight-bytes", "4KiB", *extra,
    ]  # fmt: skip
    return DaemonProcess("mx8_agent", args, tmp_path / f"{host}.log")


def start_trainers(
    tmp_path: Path, sock_dir: Path, link: str, procs: list[subprocess.Popen[bytes]]
) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    cfg = {"link": link, "batch_size": BATCH, "out": str(out), "step_delay_s": 0.3}
    for rank in range(WORLD):
        url = f"unix://{sock_dir}/{HOSTS[rank // 2]}.sock"
        procs.append(start_trainer(tmp_path, rank, WORLD, url, cfg))
    return out


async def mid_epoch_0(out: Path) -> None:
    """Every rank has taken a step or two of epoch 0."""
    await assert_eventually(
        lambda: all(len(records(out, r)) >= 2 for r in range(WORLD)), timeout_s=90
    )


async def assert_uninterrupted_order(
    tmp_path: Path, link: str, out: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    for rank, proc in enumerate(procs):
        log = tmp_path / f"trainer-{rank}.log"
        assert await wait_trainer(proc, 120, log) == 0, log.read_text()
        assert "Error" not in log.read_text()
    for rank in range(WORLD):
        mine = records(out, rank)
        assert all(rec["ok"] for rec in mine)
        for epoch in range(EPOCHS):
            expected = await asyncio.to_thread(embedded, link, rank, WORLD, BATCH, SEED, epoch)
            got = [rec for rec in mine if rec["epoch"] == epoch]
            assert [rec["ids"] for rec in got] == expected, f"rank {rank} epoch {epoch}"
            assert [rec["step"] for rec in got] == list(range(len(expected)))


async def test_rank_exact_standby_takes_over_after_leader_kill9_ranks_keep_embedded_order(
    tmp_path: Path,
    s3_env: LocalS3,
    s3_sync_client: Any,
    s3_bucket: str,
    store_root: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
    trainers: list[subprocess.Popen[bytes]],
    proxy: TcpProxy,
) -> None:
    link = put_dataset(s3_sync_client, s3_bucket, SAMPLES)
    a_addr, b_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    leader = DaemonProcess(
        "mx8_coordinator", coordinator_args(link, s3_bucket, a_addr), tmp_path / "a.log"
    )
    daemons.append(leader)
    await leader.wait_event("coordinator_serving", timeout_s=60)
    standby = DaemonProcess(
        "mx8_coordinator",
        coordinator_args(link, s3_bucket, b_addr, "--standby"),
        tmp_path / "b.log",
    )
    daemons.append(standby)
    assert (await standby.wait_event("coordinator_standby", timeout_s=60))["term"] == 1
    proxy.target = a_addr
    await proxy.start()
    agents = [start_agent(tmp_path, sock_dir, host, proxy.address) for host in HOSTS]
    daemons.extend(agents)
    for agent in agents:
        await agent.wait_event("manifest_ingested", timeout_s=60)
    out = start_trainers(tmp_path, sock_dir, link, trainers)

    await mid_epoch_0(out)
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(timeout=10)
    killed = time.monotonic()
    assert all(rec["epoch"] == 0 for r in range(WORLD) for rec in records(out, r))
    proxy.target = b_addr
    proxy.cut()
    took_over = await standby.wait_event("coordinator_leader", timeout_s=60)
    await standby.wait_event("coordinator_serving", timeout_s=30)
    # Polled from here: an upper bound on the takeover.
    serving_after = time.monotonic() - killed
    print(f"takeover: serving {serving_after:.2f}s after kill -9, {took_over}")
    assert took_over["term"] == 2 and "term 1" in took_over["previous"]
    assert serving_after < 2 * TTL_MS / 1000 + 2  # the TTL, a poll, the replay

    await assert_uninterrupted_order(tmp_path, link, out, trainers)
    for agent in agents:
        assert await agent.wait_exit(timeout_s=30) == 0, agent.text()[-3000:]
        assert "Traceback" not in agent.text()
        assert agent.event("coordinator_reconnected") is not None
    # The new leader rebuilt the worlds from the agents and saw the job through.
    assert sorted(e["rank"] for e in standby.events("rank_rejoined")) == list(range(WORLD))
    assert standby.event("job_drained") is not None
    assert standby.event("rank_report_refused") is None
    assert "Traceback" not in standby.text()


async def test_rank_exact_agent_registering_with_a_suspended_leader_waits_until_its_store_returns(
    tmp_path: Path,
    s3_env: LocalS3,
    s3_sync_client: Any,
    s3_bucket: str,
    store_root: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
    trainers: list[subprocess.Popen[bytes]],
    store_proxy: TcpProxy,
) -> None:
    link = put_dataset(s3_sync_client, s3_bucket, SAMPLES)
    # The coordinator alone reaches S3 through this proxy; agents read the data directly.
    store = store_proxy
    try:
        address = f"127.0.0.1:{free_port()}"
        leader = DaemonProcess(
            "mx8_coordinator",
            coordinator_args(link, s3_bucket, address),
            tmp_path / "coordinator.log",
            env={"MX8_S3_ENDPOINT_URL": f"http://{store.address}"},
        )
        daemons.append(leader)
        await leader.wait_event("coordinator_serving", timeout_s=60)
        host_a = start_agent(tmp_path, sock_dir, "host-a", address)
        daemons.append(host_a)
        await host_a.wait_event("manifest_ingested", timeout_s=60)

        store.freeze()  # the store stops answering (a black hole, not a refusal)
        suspended = await leader.wait_event("coordinator_leader_suspended", timeout_s=30)
        assert suspended["level"] == "error" and "cannot renew" in suspended["reason"]
        # Registering now is refused: the agent waits, saying for what...
        host_b = start_agent(tmp_path, sock_dir, "host-b", address)
        daemons.append(host_b)
        retry = await host_b.wait_event("register_retry", timeout_s=30)
        assert "state store" in retry["waiting_for"] and "hands out no lease" in retry["error"]
        # ...and one with a short --connect-timeout-s gives up with one clear line.
        late = start_agent(tmp_path, sock_dir, "host-c", address, "--connect-timeout-s", "4")
        daemons.append(late)
        assert await late.wait_exit(timeout_s=30) == 2
        last = late.text().strip().splitlines()[-1]
        assert last.startswith("mx8d-agent: ") and "gave up after 4s of registering" in last, last
        assert "hands out no lease" in last and "Traceback" not in late.text()
        # A registered agent is not disturbed: rank-exact heartbeats write nothing.
        assert host_a.proc.poll() is None and host_a.event("coordinator_lost") is None
        assert host_b.proc.poll() is None and host_b.event("node_registered") is None
    finally:
        store.thaw()
    await leader.wait_event("coordinator_leader_resumed", timeout_s=30)
    await host_b.wait_event("manifest_ingested", timeout_s=60)
    agents = [host_a, host_b]
    out = start_trainers(tmp_path, sock_dir, link, trainers)

    # The store gone again mid-epoch: rank-exact training does not even pause.
    await mid_epoch_0(out)
    store.freeze()
    try:
        await assert_eventually(
            lambda: len(leader.events("coordinator_leader_suspended")) == 2, timeout_s=30
        )
        await assert_uninterrupted_order(tmp_path, link, out, trainers)
        for agent in agents:
            assert await agent.wait_exit(timeout_s=30) == 0, agent.text()[-3000:]
            assert "Traceback" not in agent.text()
            assert agent.event("coordinator_lost") is None
    finally:
        store.thaw()
    assert leader.event("job_drained") is not None

"""Rank-exact mode, processes: losing the coordinator is a pause, not a failed job.

A coordinator with a ``--state-dir``, two agents (host-a serves ranks 0-1, host-b ranks
2-3) and four plain trainer processes over a moto S3 prefix. Mid-epoch the coordinator
is killed with SIGKILL and its state dir deleted (the head node died with its disk); a
new one starts on the same address with another, empty state dir, pinning the snapshot
by hash (no re-index). It rebuilds the world from what the agents report, the trainers
finish without an error, and every rank's ids equal the uninterrupted run's (embedded
``mx8.load``); the new coordinator drains the job and both agents exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess
from support.eventually import assert_eventually

import mx8
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow

SAMPLES = 400
BATCH = 8
SEED = 5
EPOCHS = 2
WORLD = 4
TRAINER = Path(__file__).resolve().parent.parent / "support" / "rank_trainer.py"


def _records(out: Path, rank: int) -> list[dict[str, Any]]:
    path = out / f"rank-{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _embedded(link: str, rank: int, epoch: int) -> list[list[int]]:
    loader = mx8.load(link, rank=rank, world_size=WORLD, batch_size=BATCH, shuffle=True, seed=SEED)
    loader.set_epoch(epoch)
    return [b.sample_ids.tolist() for b in loader]


@pytest.fixture
def trainers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def _wait(proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> int:
    def done() -> bool:
        return proc.poll() is not None

    try:
        await assert_eventually(done, timeout_s=timeout_s, interval_s=0.1)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGABRT)
        proc.wait(timeout=10)
        text = log.read_text()
        raise AssertionError(f"trainer did not finish in {timeout_s}s:\n{text}") from None
    return int(proc.returncode)


async def test_rank_exact_coordinator_kill9_without_state_rebuilds_from_agents(
    tmp_path: Path,
    s3_env: Any,
    s3_sync_client: Any,
    s3_bucket: str,
    store_root: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
    trainers: list[subprocess.Popen[bytes]],
) -> None:
    for i in range(SAMPLES):
        s3_sync_client.put_object(
            Bucket=s3_bucket, Key=f"data/{i:05d}.bin", Body=f"{i:05d}".encode() * 8
        )
    link = f"s3://{s3_bucket}/data/"
    address = f"127.0.0.1:{free_port()}"
    common = [
        "--listen", address, "--world-size", "2", "--epochs", str(EPOCHS), "--shuffle",
        "--seed", str(SEED), "--heartbeat-interval-ms", "200", "--lease-ttl-ms", "3000",
    ]  # fmt: skip
    first_state = tmp_path / "state-1"
    first = DaemonProcess(
        "mx8_coordinator",
        ["--dataset", link, "--state-dir", str(first_state), *common],
        tmp_path / "coordinator-1.log",
    )
    daemons.append(first)
    resolved = await first.wait_event("snapshot_resolved", timeout_s=60)
    agents = {}
    for host in ("host-a", "host-b"):
        url = f"unix://{sock_dir}/{host}.sock"
        args = [
            "--coordinator", address, "--node-id", host, "--listen", url,
            "--progress-interval-ms", "100", "--max-inflight-bytes", "4KiB",
        ]  # fmt: skip
        agents[host] = DaemonProcess("mx8_agent", args, tmp_path / f"{host}.log")
        daemons.append(agents[host])
    for agent in agents.values():
        await agent.wait_event("manifest_ingested", timeout_s=60)

    out = tmp_path / "out"
    out.mkdir()
    cfg = json.dumps({"link": link, "batch_size": BATCH, "out": str(out), "step_delay_s": 0.2})
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank % 2),
            "MX8_AGENT_URL": f"unix://{sock_dir}/{'host-a' if rank < 2 else 'host-b'}.sock",
            "PYTHONFAULTHANDLER": "1",
        }
        with open(tmp_path / f"trainer-{rank}.log", "wb") as log:
            trainers.append(
                subprocess.Popen(
                    [sys.executable, str(TRAINER), cfg],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    # Mid-epoch 0: every rank has taken a step or two, none has finished the epoch.
    await assert_eventually(
        lambda: all(len(_records(out, r)) >= 2 for r in range(WORLD)), timeout_s=60
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    assert all(rec["epoch"] == 0 for r in range(WORLD) for rec in _records(out, r))
    shutil.rmtree(first_state)  # the head node's disk is gone with it

    pinned = f"{link}@sha256:{resolved['manifest_hash']}"
    second = DaemonProcess(
        "mx8_coordinator",
        ["--dataset", pinned, "--state-dir", str(tmp_path / "state-2"), *common],
        tmp_path / "coordinator-2.log",
    )
    daemons.append(second)

    for rank, proc in enumerate(trainers):
        log = tmp_path / f"trainer-{rank}.log"
        assert await _wait(proc, 120, log) == 0, log.read_text()
        assert "Error" not in log.read_text()
    for rank in range(WORLD):
        records = _records(out, rank)
        assert all(rec["ok"] for rec in records)
        for epoch in range(EPOCHS):
            expected = await asyncio.to_thread(_embedded, link, rank, epoch)
            mine = [rec for rec in records if rec["epoch"] == epoch]
            assert [rec["ids"] for rec in mine] == expected
            assert [rec["step"] for rec in mine] == list(range(len(expected)))
    for agent in agents.values():
        assert await agent.wait_exit(timeout_s=30) == 0, agent.text()
        assert "Traceback" not in agent.text()
        # While it was away the agent said what it waited for, then rejoined with its ranks.
        lost = agent.event("coordinator_lost")
        assert lost is not None and "registers again with its 2 ranks" in lost["waiting_for"]
        assert agent.event("coordinator_reconnected") is not None
    resolved_again = second.event("snapshot_resolved")
    assert resolved_again is not None and not resolved_again["indexed"]  # pinned: no re-index
    assert resolved_again["manifest_hash"] == resolved["manifest_hash"]
    rebuilt = second.event("world_rebuilt")
    assert rebuilt is not None and rebuilt["world_size"] == WORLD and rebuilt["batch_size"] == BATCH
    rejoined = second.events("rank_rejoined")
    assert sorted(e["rank"] for e in rejoined) == list(range(WORLD))
    # Rebuilt while the job ran: every rank was short of its last step when it rejoined.
    steps = len(await asyncio.to_thread(_embedded, link, 0, EPOCHS - 1))
    assert all((e["epoch"], e["step"]) < (EPOCHS - 1, steps) for e in rejoined)
    assert second.event("job_drained") is not None
    assert second.event("rank_report_refused") is None

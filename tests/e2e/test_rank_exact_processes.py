"""Rank-exact mode end to end: a coordinator, two agents (two simulated hosts) and trainer
processes over a moto S3 prefix; every rank's ids are compared with embedded mode's.

* torchrun (gloo, ``--nnodes 2`` on 127.0.0.1, 2 processes per host, a tiny DDP model
  all-reducing every step), 2 shuffled epochs: no hang, ``len(loader)`` steps per epoch,
  ids equal to ``mx8.load(rank=r, world_size=4)`` embedded.
* every trainer killed hard after a checkpoint and later acknowledged steps, restarted from
  the checkpoint: the rest of the epoch equals the uninterrupted run's; then the same state
  at world size 2 (elastic): the rest of the epoch exactly once, then a whole epoch.
* an agent killed with SIGKILL and restarted while its trainers live: their ids are still
  the uninterrupted run's.
* a trainer whose seed or batch size disagrees: one line naming both values, within seconds.

Trainers other than the torchrun ones are plain processes with ``RANK``/``WORLD_SIZE``
set as torchrun sets them (a torchrun start costs ~20 s on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess
from support.eventually import assert_eventually

import mx8
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow

SAMPLES = 200
BATCH = 8
SEED = 5
EPOCHS = 2
TRAINER = Path(__file__).resolve().parent.parent / "support" / "rank_trainer.py"


@dataclass
class Job:
    """A coordinator and two agents (host-a serves ranks 0-1, host-b ranks 2-3)."""

    link: str
    out: Path
    coordinator: DaemonProcess
    address: str
    agents: dict[str, DaemonProcess]
    urls: dict[str, str]
    agent_args: dict[str, list[str]]
    tmp: Path
    trainers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url_of(self, rank: int, per_host: int = 2) -> str:
        return self.urls[self.host_of(rank, per_host)]

    def host_of(self, rank: int, per_host: int = 2) -> str:
        return "host-a" if rank < per_host else "host-b"


def _upload(client: Any, bucket: str) -> str:
    for i in range(SAMPLES):
        client.put_object(Bucket=bucket, Key=f"data/{i:05d}.bin", Body=f"{i:05d}".encode() * 8)
    return f"s3://{bucket}/data/"


@pytest.fixture
def job(
    tmp_path: Path,
    s3_env: Any,
    s3_sync_client: Any,
    s3_bucket: str,
    store_root: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
) -> Iterator[Job]:
    link = _upload(s3_sync_client, s3_bucket)
    port = free_port()
    # The default --block-size: embedded mx8.load uses it too.
    args = [
        "--dataset", link, "--listen", f"127.0.0.1:{port}", "--world-size", "2",
        "--epochs", str(EPOCHS), "--shuffle", "--seed", str(SEED),
        "--heartbeat-interval-ms", "200", "--lease-ttl-ms", "3000",
    ]  # fmt: skip
    coordinator = DaemonProcess("mx8_coordinator", args, tmp_path / "coordinator.log")
    daemons.append(coordinator)
    agents, urls, args = {}, {}, {}
    for host in ("host-a", "host-b"):
        urls[host] = f"unix://{sock_dir}/{host}.sock"
        # Each simulated host its own shared memory (the trainers set the same).
        (tmp_path / f"shm-{host}").mkdir()
        args[host] = [
            "--coordinator", f"127.0.0.1:{port}", "--node-id", host, "--listen", urls[host],
            "--progress-interval-ms", "100", "--max-inflight-bytes", "4KiB",
            "--shm-dir", str(tmp_path / f"shm-{host}"),
        ]  # fmt: skip
        agents[host] = DaemonProcess("mx8_agent", args[host], tmp_path / f"{host}.log")
        daemons.append(agents[host])
    out = tmp_path / "out"
    out.mkdir()
    j = Job(link, out, coordinator, f"127.0.0.1:{port}", agents, urls, args, tmp_path)
    try:
        yield j
    finally:
        for proc in j.trainers:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _spawn(job: Job, cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    log = open(job.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a hard kill takes the workers too
    )
    log.close()
    job.trainers.append(proc)
    return proc


def _trainer(job: Job, rank: int, world: int, cfg: dict[str, Any], tag: str) -> Any:
    cfg = {"link": job.link, "batch_size": BATCH, "out": str(job.out), **cfg}
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank % 2),
        "MX8_AGENT_URL": job.url_of(rank, per_host=max(1, world // 2)),
        "MX8_SHM_DIR": str(job.tmp / f"shm-{job.host_of(rank, per_host=max(1, world // 2))}"),
    }
    return _spawn(job, [sys.executable, str(TRAINER), json.dumps(cfg)], env, f"{tag}-{rank}")


def _records(job: Job, rank: int) -> list[dict[str, Any]]:
    path = job.out / f"rank-{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _embedded(link: str, rank: int, world: int, epoch: int) -> list[list[int]]:
    loader = mx8.load(link, rank=rank, world_size=world, batch_size=BATCH, shuffle=True, seed=SEED)
    loader.set_epoch(epoch)
    return [b.sample_ids.tolist() for b in loader]


async def _wait(proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> int:
    """The exit code; on a timeout, kill the process (dumping its threads) and fail."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: the threads to the log
            proc.wait(timeout=10)
            raise AssertionError(f"process did not finish in {timeout_s}s:\n{log.read_text()}")
        await asyncio.sleep(0.1)
    return int(proc.returncode)


async def _ranks_acked(address: str, step: int, world: int) -> bool:
    async with CoordinatorClient(address) as client:
        snap = await client.get_job_snapshot()
    ranks = [r for r in snap.ranks if r.world_size == world]
    return len(ranks) == world and all(r.epoch == 0 and r.step >= step for r in ranks)


async def _ready(job: Job) -> None:
    for agent in job.agents.values():
        await agent.wait_event("manifest_ingested", timeout_s=60)


async def test_rank_exact_torchrun_two_hosts_ddp_steps_and_ids_equal_embedded(job: Job) -> None:
    await _ready(job)
    master = free_port()
    cfg = json.dumps({"link": job.link, "batch_size": BATCH, "out": str(job.out), "ddp": True})
    hosts = []
    for node_rank, host in enumerate(("host-a", "host-b")):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--node_rank", str(node_rank), "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(master),
            str(TRAINER), cfg,
        ]  # fmt: skip
        env = {"MX8_AGENT_URL": job.urls[host], "OMP_NUM_THREADS": "1"}
        hosts.append(_spawn(job, cmd, env, f"torchrun-{host}"))
    for node_rank, proc in enumerate(hosts):
        log = job.tmp / f"torchrun-host-{'ab'[node_rank]}.log"
        assert await _wait(proc, 120, log) == 0, log.read_text()
    for rank in range(4):
        records = _records(job, rank)
        assert all(r["ok"] for r in records)
        for epoch in range(EPOCHS):
            mine = [r for r in records if r["epoch"] == epoch]
            expected = await asyncio.to_thread(_embedded, job.link, rank, 4, epoch)
            assert [r["step"] for r in mine] == list(range(len(expected)))
            assert {r["len"] for r in mine} == {len(expected)}
            assert [r["ids"] for r in mine] == expected
    # Every rank finished: the job drains and both agents exit 0.
    for agent in job.agents.values():
        assert await agent.wait_exit(timeout_s=30) == 0
    assert job.coordinator.event("job_drained") is not None


async def test_rank_exact_hard_kill_resumes_from_checkpoint_then_elastic_at_two_ranks(
    job: Job,
) -> None:
    await _ready(job)
    k, h = 2, 4  # checkpoint after 2 steps; steps up to 4 acknowledged before the kill
    first = [
        _trainer(job, r, 4, {"checkpoint_step": k, "hang_after_step": h}, "a") for r in range(4)
    ]
    await assert_eventually(lambda: _ranks_acked(job.address, h, 4), timeout_s=60, interval_s=0.2)
    for proc in first:
        _kill_group(proc)
    states = [json.loads((job.out / f"state-{r}.json").read_text()) for r in range(4)]
    assert {(s["epoch"], s["step"], s["consumed"]) for s in states} == {(0, k, k * BATCH * 4)}
    taken = {r: [rec["ids"] for rec in _records(job, r)][:k] for r in range(4)}
    for path in job.out.glob("rank-*.jsonl"):
        path.unlink()

    # Restarted at the same world from the checkpoint: exactly the uninterrupted rest.
    again = [
        _trainer(
            job, r, 4, {"resume": str(job.out / f"state-{r}.json"), "stop_after_epoch": 0}, "b"
        )
        for r in range(4)
    ]
    for r, proc in enumerate(again):
        assert await _wait(proc, 90, job.tmp / f"b-{r}.log") == 0
    for rank in range(4):
        expected = await asyncio.to_thread(_embedded, job.link, rank, 4, 0)
        assert taken[rank] == expected[:k]
        records = _records(job, rank)
        assert [rec["ids"] for rec in records] == expected[k:]
        assert [rec["step"] for rec in records] == list(range(k, len(expected)))
        assert all(rec["ok"] for rec in records)
    for path in job.out.glob("rank-*.jsonl"):
        path.unlink()

    # Elastic: the state of world 4 at world 2 covers the rest of epoch 0 once, then epoch 1.
    two = [_trainer(job, r, 2, {"resume": str(job.out / "state-3.json")}, "c") for r in range(2)]
    for r, proc in enumerate(two):
        assert await _wait(proc, 90, job.tmp / f"c-{r}.log") == 0
    before = [i for r in range(4) for b in taken[r] for i in b]
    rest = {r: [rec for rec in _records(job, r) if rec["epoch"] == 0] for r in range(2)}
    assert len({len(rest[0]), len(rest[1])}) == 1  # equal steps
    counts = Counter(before + [i for r in range(2) for rec in rest[r] for i in rec["ids"]])
    assert set(counts) == set(range(SAMPLES))
    assert sum(n - 1 for n in counts.values()) < 2  # each once, plus the wrap padding
    for rank in range(2):
        epoch1 = [rec["ids"] for rec in _records(job, rank) if rec["epoch"] == 1]
        assert epoch1 == await asyncio.to_thread(_embedded, job.link, rank, 2, 1)
    for agent in job.agents.values():
        assert await agent.wait_exit(timeout_s=30) == 0


async def test_rank_exact_agent_kill9_and_restart_while_trainers_live(job: Job) -> None:
    await _ready(job)
    procs = [_trainer(job, r, 4, {"step_delay_s": 0.15}, "t") for r in range(4)]
    await assert_eventually(lambda: len(_records(job, 0)) >= 2, timeout_s=60)
    killed = job.agents["host-a"]
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(timeout=10)
    restarted = DaemonProcess("mx8_agent", job.agent_args["host-a"], job.tmp / "host-a-2.log")
    job.agents["host-a"] = restarted
    try:
        for r, proc in enumerate(procs):
            assert await _wait(proc, 120, job.tmp / f"t-{r}.log") == 0
        for rank in range(4):
            records = _records(job, rank)
            assert all(r["ok"] for r in records)  # byte for byte, shared memory or not
            for epoch in range(EPOCHS):
                expected = await asyncio.to_thread(_embedded, job.link, rank, 4, epoch)
                assert [r["ids"] for r in records if r["epoch"] == epoch] == expected
        assert "lost mx8d-agent" in (job.tmp / "t-0.log").read_text()
        assert await restarted.wait_exit(timeout_s=30) == 0
        # Batches went through shared memory before and after the restart, and neither
        # agent (one killed -9) left a segment or a probe behind.
        for log in ("host-a.log", "host-a-2.log"):
            text = (job.tmp / log).read_text()
            assert re.search(r'"shared_memory": ?true|shared_memory=True', text), log
        assert os.listdir(job.tmp / "shm-host-a") == []
    finally:
        restarted.stop()


async def test_rank_exact_seed_or_batch_size_mismatch_is_one_clear_line(job: Job) -> None:
    await _ready(job)
    started = time.monotonic()
    seed = _trainer(job, 0, 1, {"seed": 7}, "seed")
    rank0 = _trainer(job, 0, 2, {}, "bs")
    await assert_eventually(
        lambda: "waiting for rank 1 of 2" in (job.tmp / "bs-0.log").read_text(), timeout_s=30
    )
    rank1 = _trainer(job, 1, 2, {"batch_size": 4}, "bs")
    for proc, name in ((seed, "seed-0"), (rank0, "bs-0"), (rank1, "bs-1")):
        assert await _wait(proc, 30, job.tmp / f"{name}.log") != 0
    assert time.monotonic() - started < 30
    seed_log = (job.tmp / "seed-0.log").read_text().strip().splitlines()
    assert seed_log[-1] == (
        "mx8_common.errors.ContractError: seed 7 of rank 0 differs from the job's --seed 5; "
        "pass seed=5 or leave seed out to take the job's"
    )
    for name in ("bs-0", "bs-1"):
        text = (job.tmp / f"{name}.log").read_text()
        last = text.strip().splitlines()[-1]
        assert last.startswith("mx8_common.errors.ContractError: batch_size 4 of rank 1 differs")
        assert "from 8 of rank 0" in last
        assert "During handling" not in text and "The above exception" not in text

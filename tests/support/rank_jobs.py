"""Helpers of the rank-exact e2e tests: a dataset in S3, plain trainer processes of
``support/rank_trainer.py`` and what they recorded, the uninterrupted (embedded) order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import mx8
from support.eventually import assert_eventually

TRAINER = Path(__file__).resolve().parent / "rank_trainer.py"


def put_dataset(s3_sync_client: Any, bucket: str, samples: int) -> str:
    """``samples`` objects under ``data/`` (the payloads rank_trainer.py checks); the link."""
    for i in range(samples):
        s3_sync_client.put_object(
            Bucket=bucket, Key=f"data/{i:05d}.bin", Body=f"{i:05d}".encode() * 8
        )
    return f"s3://{bucket}/data/"


def records(out: Path, rank: int) -> list[dict[str, Any]]:
    """What rank ``rank`` recorded, one dict per step (a line being written is left out)."""
    path = out / f"rank-{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def embedded(
    link: str, rank: int, world: int, batch: int, seed: int, epoch: int
) -> list[list[int]]:
    """Rank ``rank``'s batches of ``epoch`` from embedded ``mx8.load``: the uninterrupted order."""
    loader = mx8.load(link, rank=rank, world_size=world, batch_size=batch, shuffle=True, seed=seed)
    loader.set_epoch(epoch)
    return [b.sample_ids.tolist() for b in loader]


def start_trainer(
    tmp_path: Path, rank: int, world: int, agent_url: str, cfg: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """One trainer process (its own session, so a test can kill its whole group)."""
    env = {
        **os.environ,
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank % 2),
        "MX8_AGENT_URL": agent_url,
        "PYTHONFAULTHANDLER": "1",
    }
    with open(tmp_path / f"trainer-{rank}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(TRAINER), json.dumps(cfg)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_trainer(proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> int:
    """The exit code; on a timeout, the trainer's stacks (faulthandler) in the failure."""
    try:
        await assert_eventually(
            lambda: proc.poll() is not None, timeout_s=timeout_s, interval_s=0.1
        )
    except AssertionError:
        os.killpg(proc.pid, signal.SIGABRT)
        proc.wait(timeout=10)
        raise AssertionError(
            f"trainer did not finish in {timeout_s}s:\n{log.read_text()}"
        ) from None
    return int(proc.returncode)


def kill_trainers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

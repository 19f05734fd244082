"""Helpers of the agent tests: daemons as processes, trainers in threads, hubs and batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mx8._agent_client import AgentStreamClient, RankOpen
from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub
from mx8_common.rpc.coordinator_client import CoordinatorClient
from support.eventually import assert_eventually

__all__ = [
    "DaemonProcess",
    "TrainerRun",
    "committed",
    "make_batch",
    "new_hub",
    "rank_client",
    "run_trainer",
]


@dataclass
class TrainerRun:
    """What one trainer thread consumed (acknowledged batches only) and how it ended."""

    ids: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    batches: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def run_trainer(
    url: str,
    *,
    local_rank: int = 0,
    batch_size: int = 16,
    window: int = 4,
    job_id: str = "default",
    delay_s: float = 0.0,
    stop_after: int | None = None,
    keep_batches: bool = False,
    timeout_s: float = 30.0,
    on_batch: Callable[[Any], None] | None = None,
) -> TrainerRun:
    """Consume the agent's stream in the calling thread; never raises (see ``.error``).

    ``stop_after`` batches closes the stream early, leaving the last one unacknowledged.
    """
    run = TrainerRun()
    try:
        with AgentStreamClient(
            url,
            job_id=job_id,
            local_rank=local_rank,
            batch_size=batch_size,
            window=window,
            timeout_s=timeout_s,
        ) as client:
            for n, batch in enumerate(client, start=1):
                if on_batch is not None:
                    on_batch(batch)
                if stop_after is not None and n >= stop_after:
                    break
                run.ids.extend(batch.sample_ids.tolist())
                run.epochs.append(batch.epoch)
                if keep_batches:
                    run.batches.append(batch)
                if delay_s:
                    time.sleep(delay_s)
    except BaseException as exc:
        run.error = exc
    finally:
        run.done.set()
    return run


class DaemonProcess:
    """An ``mx8-coordinator`` or ``mx8d-agent`` child process logging JSON events to a file."""

    def __init__(
        self, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        full_env = {**os.environ, "MX8_LOG_FORMAT": "json", **(env or {})}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=full_env,
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written right now
                if name is None or event.get("event") == name:
                    out.append(event)
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        found = self.events(name)
        return found[0] if found else None

    async def wait_event(self, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = self.event(name)
            if found is None and self.proc.poll() is not None:
                raise AssertionError(f"{name!r} never came; the process exited:\n{self.text()}")
            return found

        return await assert_eventually(check, timeout_s=timeout_s)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        await assert_eventually(lambda: self.proc.poll() is not None, timeout_s=timeout_s)
        return int(self.proc.returncode)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


async def committed(address: str) -> int:
    async with CoordinatorClient(address) as client:
        snap = await client.get_job_snapshot()
    return int(snap.counters.samples_committed)


def make_batch(k: int, n: int = 4, nbytes: int = 40, lease: str = "L1") -> ReadyBatch:
    return ReadyBatch(
        lease_id=lease,
        epoch=0,
        first_pos=k * n,
        sample_ids=np.arange(k * n, k * n + n, dtype=np.uint64),
        parts=[b"p" * nbytes],
        offsets=np.linspace(0, nbytes, n + 1).astype(np.uint64),
        labels=None,
    )


def new_hub(max_bytes: int = 10_000) -> tuple[TrainerHub, list[ReadyBatch]]:
    acked: list[ReadyBatch] = []
    return TrainerHub(max_bytes=max_bytes, on_acked=acked.append), acked


def rank_client(url: str, rank: int, *, world_size: int = 2, **kw: Any) -> AgentStreamClient:
    """A rank-exact stream of rank ``rank`` of ``world_size`` (batches of 8) from the
    agent at ``url``; ``kw`` go to ``AgentStreamClient``."""
    return AgentStreamClient(
        url,
        job_id="",
        local_rank=rank,
        batch_size=8,
        rank=RankOpen(rank=rank, world_size=world_size),
        **kw,
    )

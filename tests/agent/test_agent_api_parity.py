"""Distributed mx8.load (coordinator + agent processes) yields what embedded mx8.load yields."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from support.agent import DaemonProcess
from support.eventually import assert_eventually
from support.manifests import sample_bytes

import mx8
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow

SAMPLES = 60
EPOCHS = 2


def _write_folder(root: Path) -> Path:
    folder = root / "dataset"
    for i in range(SAMPLES):
        sub = folder / f"part-{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.bin").write_bytes(sample_bytes(i))
    return folder


def _distributed_epochs(url: str, folder: Path) -> tuple[str, dict[int, list[int]], list[bytes]]:
    """The training loop a user writes in embedded mode: one ``for`` loop per epoch."""
    loader = mx8.load(str(folder), agent=url, batch_size=7)
    per_epoch: dict[int, list[int]] = {}
    payloads: list[bytes] = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch.epoch == epoch  # one loop, one epoch (one trainer, no failures)
            per_epoch.setdefault(epoch, []).extend(batch.sample_ids.tolist())
            payloads.extend(batch.payloads)
    # The job is over: another loop is empty at once, without waiting for the agent.
    started = time.monotonic()
    assert list(loader) == []
    assert time.monotonic() - started < 1.0
    return loader.manifest_hash, per_epoch, payloads


async def test_distributed_load_yields_each_epoch_per_loop_with_embedded_ids(
    tmp_path: Path, sock_dir: Path, store_root: str, daemons: list[DaemonProcess]
) -> None:
    folder = _write_folder(tmp_path)
    port = free_port()
    coordinator = DaemonProcess(
        "mx8_coordinator",
        [
            "--dataset",
            str(folder),
            "--listen",
            f"127.0.0.1:{port}",
            "--epochs",
            str(EPOCHS),
            "--shuffle",
            "--seed",
            "3",
            "--block-size",
            "8",
            "--label-mode",
            "none",
        ],
        tmp_path / "coordinator.log",
    )
    daemons.append(coordinator)
    url = f"unix://{sock_dir}/agent.sock"
    agent = DaemonProcess(
        "mx8_agent",
        ["--coordinator", f"127.0.0.1:{port}", "--node-id", "node-a", "--listen", url],
        tmp_path / "agent.log",
    )
    daemons.append(agent)
    await agent.wait_event("manifest_ingested", timeout_s=60)

    manifest_hash, per_epoch, payloads = await asyncio.to_thread(_distributed_epochs, url, folder)

    embedded = mx8.load(str(folder), shuffle=True, seed=3, batch_size=7, label_mode="none")
    assert embedded.manifest_hash == manifest_hash
    assert sorted(per_epoch) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        embedded.set_epoch(epoch)
        expected = [i for b in embedded for i in b.sample_ids.tolist()]
        assert Counter(per_epoch[epoch]) == Counter(expected) == Counter(range(SAMPLES))
    # Every payload is the bytes of a dataset file: the agent read the right objects.
    expected_payloads = Counter(sample_bytes(i) for i in range(SAMPLES) for _ in range(EPOCHS))
    assert Counter(payloads) == expected_payloads
    assert await agent.wait_exit(timeout_s=30) == 0
    await assert_eventually(lambda: coordinator.event("job_drained"), timeout_s=10)

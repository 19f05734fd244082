"""A same-size overwrite after the snapshot, served by real daemons: ``mx8-coordinator`` and
``mx8d-agent`` processes (rank-exact mode, the default) and an ``mx8.load`` trainer.

The coordinator lists the dataset (an S3 prefix on the S3-protocol server, or a local
folder), one object is then overwritten with other bytes of the same length, and the
trainer gets the same typed error embedded mode raises (``mx8.ObjectChangedError``,
advice ``@refresh``); the agent logs ``object_changed_since_snapshot`` and exits 2.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess
from support.api import make_local_dataset, make_s3_dataset
from support.eventually import assert_eventually
from support.s3_clock import server_time

import mx8
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow


def _consume(link: str, url: str) -> tuple[list[int], BaseException | None]:
    ids: list[int] = []
    try:
        for batch in mx8.load(link, agent=url, rank=0, world_size=1, batch_size=4):
            ids.extend(int(i) for i in batch.sample_ids)
    except mx8.Mx8Error as exc:
        return ids, exc
    return ids, None


async def _run_job(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess], link: str, overwrite: Any
) -> tuple[list[int], BaseException | None, DaemonProcess, int]:
    """Coordinator lists ``link``; ``overwrite(listed_at)`` runs; then agent and trainer."""
    coordinator = DaemonProcess(
        "mx8_coordinator",
        ["--dataset", link, "--listen", f"127.0.0.1:{free_port()}",
         "--store", str(tmp_path / "store"), "--heartbeat-interval-ms", "200"],
        tmp_path / "coordinator.log",
    )  # fmt: skip
    daemons.append(coordinator)
    address = (await coordinator.wait_event("coordinator_serving", 60))["address"]
    listed_at = (await coordinator.wait_event("snapshot_resolved"))["listed_at"]
    assert listed_at is not None
    await overwrite(listed_at)
    url = f"unix://{sock_dir}/host.sock"
    agent = DaemonProcess(
        "mx8_agent",
        ["--coordinator", address, "--node-id", "host", "--listen", url],
        tmp_path / "agent.log",
    )
    daemons.append(agent)
    registered = await agent.wait_event("node_registered", 60)
    assert registered["listed_at"] == listed_at
    assert registered["changed_objects"] == "size-or-modified"
    ids, error = await asyncio.to_thread(_consume, link, url)
    code = await agent.wait_exit(30)
    return ids, error, agent, code


def _assert_refused(
    ids: list[int], error: BaseException | None, agent: DaemonProcess, code: int, victim: str
) -> None:
    assert isinstance(error, mx8.ObjectChangedError), error
    assert error.location == victim
    assert "modified" in str(error) and "@refresh" in str(error)
    assert 3 not in ids  # the overwritten bytes never reached the trainer
    assert code == 2
    event = agent.event("object_changed_since_snapshot")
    assert event is not None and event["location"] == victim
    assert event["level"] == "error"
    assert "Traceback" not in agent.text()


async def test_processes_s3_same_size_overwrite_after_snapshot_reaches_the_trainer_as_changed(
    tmp_path: Path,
    s3_env: Any,
    s3_sync_client: Any,
    s3_bucket: str,
    sock_dir: Path,
    daemons: list[DaemonProcess],
) -> None:
    objects = make_s3_dataset(s3_sync_client, s3_bucket, "ds/", per_class=4)
    victim = sorted(objects)[3]

    async def overwrite(listed_at: float) -> None:
        # A second later on S3's clock: HTTP dates (and S3's comparison) have whole seconds.
        await assert_eventually(lambda: server_time(s3_sync_client, s3_bucket) > listed_at)
        key = victim.removeprefix(f"s3://{s3_bucket}/")
        s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=objects[victim].upper())

    result = await _run_job(tmp_path, sock_dir, daemons, f"s3://{s3_bucket}/ds/", overwrite)
    _assert_refused(*result, victim=victim)


async def test_processes_local_folder_same_size_overwrite_after_snapshot_reaches_the_trainer(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    root = tmp_path / "data"
    files = make_local_dataset(root, classes=("ant", "bee"), per_class=4)
    victim = sorted(files)[3]

    async def overwrite(listed_at: float) -> None:
        await assert_eventually(lambda: time.time() > listed_at + 0.05)
        Path(victim).write_bytes(files[victim].upper())

    result = await _run_job(tmp_path, sock_dir, daemons, str(root), overwrite)
    _assert_refused(*result, victim=victim)

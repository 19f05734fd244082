"""The distributed path over gs:// and az:// against the emulators: the coordinator indexes
the link, the agent's data plane reads through the same ObjectReader as S3 (ranged and whole
reads), a replaced object fails loudly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agent import run_trainer
from support.cloud_emulators import Azurite, GcsEmulator
from support.manifests import Row, write_manifest

from mx8_common.errors import ObjectChangedError
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.server import Coordinator


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest) -> tuple[str, Callable[[str, bytes], None]]:
    """(``scheme://bucket/``, put) for a fresh bucket or container."""
    if request.param == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        gcs: GcsEmulator = request.getfixturevalue("gcs_server")
        return f"gs://{bucket}/", lambda key, data: gcs.put(bucket, key, data)
    container = request.getfixturevalue("az_container")
    az: Azurite = request.getfixturevalue("azurite_server")
    return f"az://{container}/", lambda key, data: az.put(container, key, data)


async def test_agent_cloud_ranged_and_whole_reads_deliver_the_right_bytes(
    tmp_path: Path, cloud: tuple[str, Any], start_coordinator: Any, start_agent: Any
) -> None:
    root, put = cloud
    shard = b"".join(f"record-{k:03d};".encode() * 3 for k in range(30))
    put("shards/s0.tar", shard)
    rows: list[Row] = []
    expected: list[bytes] = []
    step = len(shard) // 30
    for k in range(30):  # 30 ranges of one object
        rows.append((f"{root}shards/s0.tar", k * step, step, ""))
        expected.append(shard[k * step : (k + 1) * step])
    for k in range(30):  # 30 whole objects, half without a known size
        body = f"whole object {k}".encode() * (k + 1)
        put(f"objs/{k:03d}", body)
        rows.append((f"{root}objs/{k:03d}", None, len(body) if k % 2 else None, ""))
        expected.append(body)
    coordinator = await start_coordinator(write_manifest(tmp_path, rows).path, block_size=25)
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=8, keep_batches=True)
    await agent.result()
    assert run.error is None, run.error
    got: dict[int, bytes] = {}
    for batch in run.batches:
        got.update(zip(batch.sample_ids.tolist(), batch.payloads, strict=True))
    assert [got[i] for i in range(60)] == expected


async def test_agent_cloud_object_replaced_after_snapshot_fails(
    tmp_path: Path, cloud: tuple[str, Any], start_coordinator: Any, start_agent: Any
) -> None:
    root, put = cloud
    rows: list[Row] = []
    for k in range(20):
        body = f"sample {k}".encode() * 10
        put(f"train/{k:03d}.bin", body)
        rows.append((f"{root}train/{k:03d}.bin", None, len(body), ""))
    coordinator = await start_coordinator(write_manifest(tmp_path, rows).path)
    put("train/011.bin", b"replaced")
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=5)
    with pytest.raises(ObjectChangedError, match=r"train/011\.bin"):
        await agent.result()
    assert isinstance(run.error, ObjectChangedError)
    assert f"{root}train/011.bin" in str(run.error)
    assert "expected 90 bytes, found 8 bytes" in str(run.error)


async def test_coordinator_indexes_cloud_link_and_agent_serves_every_object_once(
    tmp_path: Path, cloud: tuple[str, Any], start_agent: Any
) -> None:
    root, put = cloud
    contents = {f"{root}train/{k:02d}.bin": f"object {k};".encode() * (k + 1) for k in range(24)}
    for location, body in contents.items():
        put(location[len(root) :], body)
    put("elsewhere/skip.bin", b"not in the prefix")
    config = CoordinatorConfig(
        dataset=f"{root}train/",
        listen="127.0.0.1:0",
        store=str(tmp_path / "store"),
        block_size=5,
        label_mode="none",
        mode="dynamic",
    )
    async with Coordinator(config) as coordinator:
        agent = await start_agent(coordinator.address)
        run = await asyncio.to_thread(run_trainer, agent.url, batch_size=4, keep_batches=True)
        await agent.result()
    assert run.error is None, run.error
    got: dict[int, bytes] = {}
    for batch in run.batches:
        for sid, payload in zip(batch.sample_ids.tolist(), batch.payloads, strict=True):
            assert sid not in got
            got[sid] = bytes(payload)
    assert [got[i] for i in range(len(contents))] == [contents[k] for k in sorted(contents)]

"""The agent over the real S3-protocol server: ranged and whole reads, a replaced object."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.agent import run_trainer
from support.logs import Events
from support.manifests import Row, write_manifest

from mx8_common.errors import ObjectChangedError


async def test_agent_s3_ranged_and_whole_reads_deliver_the_right_bytes(
    tmp_path: Path, s3_sync_client: Any, s3_bucket: str, start_coordinator: Any, start_agent: Any
) -> None:
    shard = b"".join(f"record-{k:03d};".encode() * 3 for k in range(40))
    s3_sync_client.put_object(Bucket=s3_bucket, Key="shards/s0.tar", Body=shard)
    rows: list[Row] = []
    expected: list[bytes] = []
    step = len(shard) // 40
    for k in range(40):  # 40 ranges of one object
        rows.append((f"s3://{s3_bucket}/shards/s0.tar", k * step, step, ""))
        expected.append(shard[k * step : (k + 1) * step])
    for k in range(40):  # 40 whole objects, half without a known size
        body = f"whole object {k}".encode() * (k + 1)
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"objs/{k:03d}", Body=body)
        rows.append((f"s3://{s3_bucket}/objs/{k:03d}", None, len(body) if k % 2 else None, ""))
        expected.append(body)
    coordinator = await start_coordinator(write_manifest(tmp_path, rows).path, block_size=25)
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=8, keep_batches=True)
    await agent.result()
    assert run.error is None, run.error
    got: dict[int, bytes] = {}
    for batch in run.batches:
        got.update(zip(batch.sample_ids.tolist(), batch.payloads, strict=True))
    assert [got[i] for i in range(80)] == expected


async def test_agent_s3_object_replaced_after_snapshot_fails(
    tmp_path: Path,
    s3_sync_client: Any,
    s3_bucket: str,
    start_coordinator: Any,
    start_agent: Any,
    logs: Events,
) -> None:
    rows: list[Row] = []
    for k in range(30):
        body = f"sample {k}".encode() * 10
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"train/{k:03d}.bin", Body=body)
        rows.append((f"s3://{s3_bucket}/train/{k:03d}.bin", None, len(body), ""))
    coordinator = await start_coordinator(write_manifest(tmp_path, rows).path)
    # Replaced after the snapshot was taken: a different size than the manifest says.
    s3_sync_client.put_object(Bucket=s3_bucket, Key="train/017.bin", Body=b"replaced")
    logs.clear()
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=5)
    with pytest.raises(ObjectChangedError, match=r"train/017\.bin"):
        await agent.result()
    assert isinstance(run.error, ObjectChangedError)
    assert f"s3://{s3_bucket}/train/017.bin" in str(run.error)
    assert "expected 90 bytes, found 8 bytes" in str(run.error)
    changed = logs.named("object_changed_since_snapshot")
    assert changed and "017.bin" in changed[0]["error"]
    assert all(i < 17 for i in run.ids)

"""The coordinator resolving its dataset: S3 prefixes, S3 store, pinning on restart."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from support.logs import Events

from mx8_common.manifest.reader import parse_canonical_manifest_tsv_bytes
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.server import Coordinator

JOB = "default"


async def fetch_manifest(client: CoordinatorClient, manifest_hash: str) -> bytes:
    return b"".join([c.data async for c in client.get_manifest_stream(JOB, manifest_hash)])


async def test_coordinator_snapshot_from_s3_prefix_into_s3_store(
    s3_sync_client: Any, s3_bucket: str
) -> None:
    for i in range(30):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"train/{i:02d}.bin", Body=b"x" * (i + 1))
    s3_sync_client.put_object(Bucket=s3_bucket, Key="other/skip.bin", Body=b"no")
    config = CoordinatorConfig(
        dataset=f"s3://{s3_bucket}/train/",
        listen="127.0.0.1:0",
        store=f"s3://{s3_bucket}/mx8-store",
        block_size=8,
        label_mode="none",
        mode="dynamic",
    )
    async with Coordinator(config) as coord, CoordinatorClient(coord.address) as client:
        reg = await client.register_node(JOB, "a")
        data = await fetch_manifest(client, reg.manifest_hash)
        grant = await client.request_lease(JOB, "a", 10)
    assert reg.total_samples == 30 and reg.job_ready
    rows = list(parse_canonical_manifest_tsv_bytes(data, expected_hash=reg.manifest_hash))
    assert [r.location for r in rows] == [f"s3://{s3_bucket}/train/{i:02d}.bin" for i in range(30)]
    assert [r.byte_length for r in rows] == list(range(1, 31))
    assert [(le.range.start_id, le.range.end_id) for le in grant.leases] == [
        (0, 8), (8, 16), (16, 24), (24, 30)
    ]  # fmt: skip


async def test_coordinator_snapshot_restart_pins_logged_hash(tmp_path: Path, logs: Events) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for i in range(12):
        (data_dir / f"{i:02d}.bin").write_bytes(b"y" * (i + 1))
    config = CoordinatorConfig(
        dataset=str(data_dir),
        listen="127.0.0.1:0",
        store=str(tmp_path / "store"),
        state_dir=str(tmp_path / "state"),
        block_size=4,
        mode="dynamic",
    )
    async with Coordinator(config) as coord, CoordinatorClient(coord.address) as client:
        reg = await client.register_node(JOB, "a")
        (lease,) = (await client.request_lease(JOB, "a", 1)).leases
        await client.report_progress(JOB, "a", lease.lease_id, 2)
    first_hash = reg.manifest_hash

    # Someone re-indexes the grown folder: the link's intent pointer now names a new hash.
    (data_dir / "12.bin").write_bytes(b"new")
    moved = await resolve_snapshot(
        f"{data_dir}@refresh",
        SnapshotResolverConfig(store_root=config.store, materialize_manifest_bytes=False),
    )
    assert moved.manifest_hash != first_hash and moved.samples == 13

    logs.clear()
    async with Coordinator(config) as coord, CoordinatorClient(coord.address) as client:
        again = await client.register_node(JOB, "a")
        snap = await client.get_job_snapshot(JOB)
    # The lease log's positions belong to the first snapshot: the restart must keep it.
    assert again.manifest_hash == first_hash and again.total_samples == 12
    assert [(le.lease_id, le.cursor) for le in snap.live_leases] == [(lease.lease_id, 2)]
    (resolved,) = logs.named("snapshot_resolved")
    assert resolved["indexed"] is False
    assert not logs.named("snapshot_index_summary")


async def test_coordinator_registration_names_the_snapshots_listing_time(
    tmp_path: Path, s3_sync_client: Any, s3_bucket: str
) -> None:
    """A resolved link sends its stored listing time; a manifest file given directly and a
    snapshot stored before mx8 kept the time send 0 (unknown: agents check sizes only)."""
    for i in range(6):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"train/{i}.bin", Body=b"z" * (i + 1))
    store = tmp_path / "store"
    config = CoordinatorConfig(
        dataset=f"s3://{s3_bucket}/train/", listen="127.0.0.1:0", store=str(store), mode="dynamic"
    )
    async with Coordinator(config) as coord, CoordinatorClient(coord.address) as client:
        reg = await client.register_node(JOB, "a")
    meta_path = store / "by-hash" / f"{reg.manifest_hash}.meta.json"
    meta = json.loads(meta_path.read_text())
    assert reg.listed_at_unix_s == meta["listed_at"] > 0

    # An older snapshot: its meta has no listing time. The plain link reuses it.
    del meta["listed_at"]
    meta_path.write_text(json.dumps(meta))
    async with Coordinator(config) as coord, CoordinatorClient(coord.address) as client:
        old = await client.register_node(JOB, "a")
    assert old.manifest_hash == reg.manifest_hash and old.listed_at_unix_s == 0

    manifest = tmp_path / "pinned.tsv"
    manifest.write_bytes((store / "by-hash" / reg.manifest_hash).read_bytes())
    file_config = dataclasses.replace(config, dataset=str(manifest))
    async with Coordinator(file_config) as coord, CoordinatorClient(coord.address) as client:
        pinned = await client.register_node(JOB, "a")
    assert pinned.manifest_hash == reg.manifest_hash and pinned.listed_at_unix_s == 0

"""Indexing rate: mx8 resolving an S3 prefix vs raw paged ListObjectsV2 of the same prefix.

Both sides open their own client and list every key; mx8 also writes the canonical
manifest and stores it (a fresh store each repeat, so every repeat really indexes).
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.bench_env import BenchEnv, s3_object_keys
from benchmarks.report import Row, median_of
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot
from mx8_common.storage.s3_client import open_s3_client

__all__ = ["run"]

CASE = "indexing"


async def _raw_list(env: BenchEnv, bucket: str, prefix: str) -> int:
    count = 0
    async with open_s3_client(env.s3_settings()) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            count += len(page.get("Contents", ()))
    return count


def run(env: BenchEnv) -> list[Row]:
    n = env.size(600, 5000)
    bucket, prefix = env.new_bucket(), "train/"
    env.upload(bucket, s3_object_keys(prefix, n), 16)

    def mx8_side() -> float:
        cfg = SnapshotResolverConfig(
            store_root=str(env.scratch("index-store")),
            label_mode="none",
            materialize_manifest_bytes=False,
            show_progress=False,
            s3_endpoint_url=env.s3.endpoint_url,
        )
        t0 = time.perf_counter()
        snap = asyncio.run(resolve_snapshot(f"s3://{bucket}/{prefix}@refresh", cfg))
        seconds = time.perf_counter() - t0
        assert snap.indexed and snap.samples == n, snap
        return n / seconds

    def raw_side() -> float:
        t0 = time.perf_counter()
        count = asyncio.run(_raw_list(env, bucket, prefix))
        seconds = time.perf_counter() - t0
        assert count == n, count
        return n / seconds

    raw_side()  # warm-up: botocore loads its service model once per process
    # Alternate sides so a burst of load from other processes hits both alike.
    mx8_vals, raw_vals = [], []
    for _ in range(env.repeats):
        raw_vals.append(raw_side())
        mx8_vals.append(mx8_side())
    mx8, _ = median_of(iter(mx8_vals).__next__, len(mx8_vals))
    raw, _ = median_of(iter(raw_vals).__next__, len(raw_vals))
    return [
        Row(
            CASE,
            f"resolve S3 prefix, {n} keys ({env.s3.kind})",
            "keys/s",
            mx8,
            raw,
            "raw ListObjectsV2",
            target=0.9,
            samples=mx8_vals,
            baseline_samples=raw_vals,
        )
    ]

"""Data plane, S3: ``mx8.load`` vs raw aioboto3 concurrent GETs at the same concurrency.

The raw side is the ceiling of the client stack mx8 uses (one aiobotocore client, N GETs
in flight, bodies read whole); mx8 adds ordering, the byte budget and batching on top.
"""

from __future__ import annotations

import statistics

from benchmarks.baselines import mx8_load_rate, raw_concurrent_gets_rate
from benchmarks.bench_env import BenchEnv
from benchmarks.report import Row

__all__ = ["CONCURRENCY", "run"]

CASE = "data_plane_s3"
CONCURRENCY = 32
KiB = 1024


def run(env: BenchEnv) -> list[Row]:
    rows = []
    endpoint = env.s3.endpoint_url
    for size, count in ((64 * KiB, env.size(96, 600)), (1024 * KiB, env.size(24, 120))):
        bucket, prefix, keys = env.s3_dataset(count, size)
        link = f"s3://{bucket}/{prefix}"
        mx8_vals, raw_vals = [], []
        # Warm-ups: mx8 resolves the snapshot; both sides load botocore's models once.
        mx8_load_rate(link, concurrency=CONCURRENCY, expect=count)
        raw_concurrent_gets_rate(bucket, keys[:8], concurrency=CONCURRENCY, endpoint=endpoint)
        for _ in range(env.repeats):
            raw_vals.append(
                raw_concurrent_gets_rate(bucket, keys, concurrency=CONCURRENCY, endpoint=endpoint)
            )
            mx8_vals.append(mx8_load_rate(link, concurrency=CONCURRENCY, expect=count))
        mb = size / (1024 * KiB)
        rows.append(
            Row(
                CASE,
                f"mx8.load {size // KiB} KiB x {count}, c={CONCURRENCY} ({env.s3.kind})",
                "samples/s",
                statistics.median(mx8_vals),
                statistics.median(raw_vals),
                "raw aioboto3 GETs",
                target=0.9,
                samples=mx8_vals,
                baseline_samples=raw_vals,
                note=f"{statistics.median(mx8_vals) * mb:.1f} MiB/s mx8",
            )
        )
    return rows

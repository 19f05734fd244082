"""Data plane with S3-like latency: every GET's first byte delayed 20 ms by a local proxy.

mx8, the DataLoader(num_workers=2)+boto3 default, raw concurrent aioboto3 GETs and (where
it installs) s3torchconnector's S3IterableDataset all read the same objects through the
same proxy (``latency_proxy``). Unlike the bare local server, whose one Python process caps
every client at the same rate, this shows what each client does with S3's latency.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.baselines import (
    S3TORCH_NOTE,
    S3TORCH_SKIP_REASON,
    dataloader_boto3_rate,
    mx8_load_rate,
    raw_concurrent_gets_rate,
    s3torchconnector_rate,
)
from benchmarks.bench_env import BenchEnv
from benchmarks.case_data_plane_s3 import CONCURRENCY
from benchmarks.latency_proxy import latency_proxy
from benchmarks.report import Row

__all__ = ["run"]

CASE = "latency_proxy"
PAYLOAD = 64 * 1024
DELAY_MS = 20.0


@contextmanager
def _endpoint(url: str) -> Iterator[None]:
    """Point mx8 (which reads the environment) at ``url`` for the block."""
    old = os.environ.get("MX8_S3_ENDPOINT_URL")
    os.environ["MX8_S3_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MX8_S3_ENDPOINT_URL", None)
        else:
            os.environ["MX8_S3_ENDPOINT_URL"] = old


def run(env: BenchEnv) -> list[Row]:
    count = env.size(96, 600)
    bucket, prefix, keys = env.s3_dataset(count, PAYLOAD)
    link = f"s3://{bucket}/{prefix}"
    mx8_vals, dl_vals, raw_vals, s3t_vals = [], [], [], []
    with latency_proxy(env.s3.endpoint_url, DELAY_MS) as proxy, _endpoint(proxy):
        # Warm-ups: mx8 resolves the snapshot; both sides load botocore's models once.
        mx8_load_rate(link, concurrency=CONCURRENCY, expect=count)
        raw_concurrent_gets_rate(bucket, keys[:8], concurrency=CONCURRENCY, endpoint=proxy)
        for _ in range(env.repeats):
            dl_vals.append(dataloader_boto3_rate(bucket, keys, endpoint=proxy))
            raw_vals.append(
                raw_concurrent_gets_rate(bucket, keys, concurrency=CONCURRENCY, endpoint=proxy)
            )
            if not S3TORCH_SKIP_REASON:
                s3t_vals.append(s3torchconnector_rate(link, endpoint=proxy, expect=count))
            mx8_vals.append(mx8_load_rate(link, concurrency=CONCURRENCY, expect=count))
    mx8 = statistics.median(mx8_vals)
    metric = f"64 KiB x {count}, +{DELAY_MS:g} ms first byte, c={CONCURRENCY}"
    if s3t_vals:
        s3t = Row(
            CASE,
            metric,
            "samples/s",
            mx8,
            statistics.median(s3t_vals),
            "s3torchconnector",
            target=1.2,
            samples=mx8_vals,
            baseline_samples=s3t_vals,
            note=S3TORCH_NOTE,
        )
    else:
        s3t = Row(CASE, metric, "samples/s", mx8, note=S3TORCH_SKIP_REASON)
    return [
        Row(
            CASE,
            metric,
            "samples/s",
            mx8,
            statistics.median(dl_vals),
            "DataLoader(nw=2) + boto3",
            target=4.0,
            samples=mx8_vals,
            baseline_samples=dl_vals,
        ),
        Row(
            CASE,
            metric,
            "samples/s",
            mx8,
            statistics.median(raw_vals),
            "raw aioboto3 GETs",
            target=0.9,
            samples=mx8_vals,
            baseline_samples=raw_vals,
        ),
        s3t,
    ]

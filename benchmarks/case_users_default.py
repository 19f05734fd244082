"""Data plane vs what users write by default: torch DataLoader(num_workers=2).

Local folder: a Dataset that opens and reads one file per sample. S3: a Dataset calling
boto3 ``get_object`` per sample (one client per worker), and s3torchconnector's
``S3IterableDataset.from_prefix`` where it installs and reaches the endpoint.
"""

from __future__ import annotations

import statistics

from benchmarks.baselines import (
    S3TORCH_SKIP_REASON,
    dataloader_boto3_rate,
    dataloader_files_rate,
    mx8_load_rate,
    s3torchconnector_rate,
)
from benchmarks.bench_env import BenchEnv
from benchmarks.case_data_plane_s3 import CONCURRENCY
from benchmarks.report import Row

__all__ = ["run"]

CASE = "users_default"
PAYLOAD = 64 * 1024


def _row(metric: str, mx8: list[float], base: list[float], name: str, target: float) -> Row:
    return Row(
        CASE,
        metric,
        "samples/s",
        statistics.median(mx8),
        statistics.median(base),
        name,
        target=target,
        samples=mx8,
        baseline_samples=base,
    )


def run(env: BenchEnv) -> list[Row]:
    rows = []
    # Local folder (page-cached after the first read: this measures the loaders, not disk).
    n_local = env.size(1000, 10_000)
    folder = env.scratch("local")
    paths = [str(p) for p in env.write_files(folder, n_local, PAYLOAD)]
    mx8_load_rate(str(folder), concurrency=CONCURRENCY, expect=n_local)  # resolve + warm cache
    mx8_vals, dl_vals = [], []
    for _ in range(env.repeats):
        dl_vals.append(dataloader_files_rate(paths))
        mx8_vals.append(mx8_load_rate(str(folder), concurrency=CONCURRENCY, expect=n_local))
    rows.append(
        _row(
            f"local folder, 64 KiB x {n_local}",
            mx8_vals,
            dl_vals,
            "DataLoader(nw=2) + open/read",
            2.0,
        )
    )

    # S3.
    count = env.size(96, 600)
    bucket, prefix, keys = env.s3_dataset(count, PAYLOAD)
    link, endpoint = f"s3://{bucket}/{prefix}", env.s3.endpoint_url
    mx8_load_rate(link, concurrency=CONCURRENCY, expect=count)
    mx8_vals, dl_vals, s3t_vals = [], [], []
    for _ in range(env.repeats):
        dl_vals.append(dataloader_boto3_rate(bucket, keys, endpoint=endpoint))
        if not S3TORCH_SKIP_REASON:
            s3t_vals.append(s3torchconnector_rate(link, endpoint=endpoint, expect=count))
        mx8_vals.append(mx8_load_rate(link, concurrency=CONCURRENCY, expect=count))
    label = f"S3 64 KiB x {count} ({env.s3.kind})"
    rows.append(_row(label, mx8_vals, dl_vals, "DataLoader(nw=2) + boto3", 1.2))
    if s3t_vals:
        row = _row(label, mx8_vals, s3t_vals, "s3torchconnector", 1.2)
        row.note = "s3torchconnector lists the prefix each epoch: its time includes the listing"
        rows.append(row)
    else:
        rows.append(
            Row(CASE, label, "samples/s", statistics.median(mx8_vals), note=S3TORCH_SKIP_REASON)
        )
    return rows

"""Data plane vs what users write by default: torch DataLoader(num_workers=2).

Local folder: a Dataset that opens and reads one file per sample. S3: a Dataset calling
boto3 ``get_object`` per sample (one client per worker), and s3torchconnector's
``S3IterableDataset.from_prefix`` where it installs and reaches the endpoint.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from benchmarks.baselines import (
    S3TORCH_NOTE,
    S3TORCH_SKIP_REASON,
    dataloader_boto3_rate,
    dataloader_files_rate,
    mx8_load_rate,
    s3torchconnector_rate,
)
from benchmarks.bench_env import BenchEnv, ServerCpu
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
    busy: dict[str, list[float]] = {"mx8": [], "DataLoader": [], "s3torchconnector": []}

    def timed(side: str, rate: Callable[[], float], into: list[float]) -> None:
        with ServerCpu(env.s3.pid) as server:
            into.append(rate())
        if server.busy is not None:
            busy[side].append(server.busy)

    for _ in range(env.repeats):
        timed("DataLoader", lambda: dataloader_boto3_rate(bucket, keys, endpoint=endpoint), dl_vals)
        if not S3TORCH_SKIP_REASON:
            timed(
                "s3torchconnector",
                lambda: s3torchconnector_rate(link, endpoint=endpoint, expect=count),
                s3t_vals,
            )
        timed("mx8", lambda: mx8_load_rate(link, concurrency=CONCURRENCY, expect=count), mx8_vals)
    # The server's CPU per second while each side ran: ~1.0 is one core, moto's ceiling.
    cores = "its one core" if env.s3.kind == "moto" else "one core"
    server_note = ", ".join(
        f"{side} {statistics.median(vals):.2f}" for side, vals in busy.items() if vals
    )
    server_note = f"{env.s3.kind} CPU s/s during each side (1.00 = {cores}): {server_note}"
    label = f"S3 64 KiB x {count} ({env.s3.kind})"
    row = _row(label, mx8_vals, dl_vals, "DataLoader(nw=2) + boto3", 1.2)
    row.note = server_note if busy["mx8"] else ""
    rows.append(row)
    if s3t_vals:
        row = _row(label, mx8_vals, s3t_vals, "s3torchconnector", 1.2)
        row.note = S3TORCH_NOTE
        rows.append(row)
    else:
        rows.append(
            Row(CASE, label, "samples/s", statistics.median(mx8_vals), note=S3TORCH_SKIP_REASON)
        )
    return rows

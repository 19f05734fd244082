"""Indexing where S3's latency is: a LIST endpoint that answers each page after 100 ms.

moto answers a LIST page in ~2 ms of its own CPU, so against it listing is CPU-bound and
concurrency cannot show; real S3 takes ~50-150 ms per page. Here the endpoint is
``mx8_common.testing.list_endpoint`` in its own process, serving generated keys (flat,
``obj-00000042.bin``) from memory after a fixed per-request latency.

- **rate**: ``resolve_snapshot`` (``list_concurrency`` default, partitioned listing)
  against plain sequential ``list_objects_v2`` paging (aiobotocore's paginator) through
  the same endpoint, same run. The baseline's keys are written into a manifest too, and
  its hash must equal mx8's: concurrency must not change a byte.
- **memory**: peak RSS growth of resolving 1M keys over resolving 100k keys (each in its
  own process, concurrency on, 20 ms per page so it runs in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from benchmarks.bench_env import BenchEnv, RssSampler, mib, run_child
from benchmarks.report import Row, median_of
from mx8_common.manifest.format import ManifestWriter
from mx8_common.snapshot.config import SnapshotResolverConfig
from mx8_common.snapshot.resolver import resolve_snapshot
from mx8_common.storage.s3_client import S3Settings, open_s3_client
from mx8_common.testing.list_endpoint import list_endpoint_process

__all__ = ["run"]

CASE = "index_latency"
BUCKET, PREFIX = "bench-list", "data/"


def _credentials() -> None:
    # The endpoint does not check signatures, but botocore signs only with credentials.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "mx8bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mx8bench")


def _resolve(url: str, store: str, concurrency: int | None = None) -> tuple[str, int, float]:
    overrides = {"list_concurrency": concurrency} if concurrency else {}
    cfg = SnapshotResolverConfig(
        store_root=store,
        label_mode="none",
        materialize_manifest_bytes=False,
        show_progress=False,
        s3_endpoint_url=url,
        **overrides,  # type: ignore[arg-type]
    )
    t0 = time.perf_counter()
    snap = asyncio.run(resolve_snapshot(f"s3://{BUCKET}/{PREFIX}@refresh", cfg))
    return snap.manifest_hash, snap.samples, time.perf_counter() - t0


async def _paged(url: str, scratch: str) -> tuple[str, int, float]:
    """Sequential ListObjectsV2 paging; the keys go into a manifest (untimed) for its hash."""
    pages: list[list[tuple[str, int]]] = []
    async with open_s3_client(S3Settings(endpoint_url=url, region="us-east-1")) as client:
        t0 = time.perf_counter()
        async for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=PREFIX
        ):
            pages.append([(o["Key"], o["Size"]) for o in page.get("Contents", ())])
        seconds = time.perf_counter() - t0
    with ManifestWriter(scratch) as writer:
        for page in pages:
            writer.write_page([f"s3://{BUCKET}/{key}" for key, _ in page], [s for _, s in page])
        written = writer.finish()
    return written.manifest_hash, written.samples, seconds


def _rate_row(env: BenchEnv) -> Row:
    n = env.size(5_000, 100_000)
    with list_endpoint_process(BUCKET, "flat", n, prefix=PREFIX, latency_s=0.1) as url:
        mx8_vals, raw_vals = [], []
        for _ in range(env.repeats):
            raw_hash, raw_n, raw_s = asyncio.run(_paged(url, str(env.scratch("paged"))))
            mx8_hash, mx8_n, mx8_s = _resolve(url, str(env.scratch("index-store")))
            assert raw_n == mx8_n == n, (raw_n, mx8_n, n)
            assert mx8_hash == raw_hash, "concurrent listing changed the manifest"
            raw_vals.append(n / raw_s)
            mx8_vals.append(n / mx8_s)
    mx8, _ = median_of(iter(mx8_vals).__next__, len(mx8_vals))
    raw, _ = median_of(iter(raw_vals).__next__, len(raw_vals))
    return Row(
        CASE,
        f"index {n // 1000}k keys, 100 ms per LIST page",
        "keys/s",
        mx8,
        raw,
        "sequential list_objects_v2 paging",
        target=8,
        samples=mx8_vals,
        baseline_samples=raw_vals,
        note=f"same manifest hash as the paged listing ({mx8_hash[:12]}...)",
    )


def _memory_row(env: BenchEnv) -> Row:
    small, big = env.size(20_000, 100_000), env.size(100_000, 1_000_000)
    growths, details = [], []
    for _ in range(env.repeats):
        res = {}
        for n in (small, big):
            with list_endpoint_process(BUCKET, "flat", n, prefix=PREFIX, latency_s=0.02) as url:
                res[n] = run_child(__name__, ["--child", url, str(env.scratch("mem-store"))])
            assert res[n]["keys"] == n, res[n]
        growths.append(mib(int(res[big]["peak_rss"] - res[small]["peak_rss"])))
        details.append(res)
    last = details[-1]
    return Row(
        CASE,
        f"peak RSS growth, {big // 1000}k vs {small // 1000}k keys, concurrency on",
        "MiB",
        statistics.median(growths),
        target=32,
        higher_is_better=False,
        samples=growths,
        note=(
            f"peak RSS {mib(int(last[small]['peak_rss'])):.0f} MiB at {small} keys, "
            f"{mib(int(last[big]['peak_rss'])):.0f} MiB at {big} keys; "
            f"{big / last[big]['seconds']:,.0f} keys/s at 20 ms per page"
        ),
    )


def run(env: BenchEnv) -> list[Row]:
    _credentials()
    return [_rate_row(env), _memory_row(env)]


def _child(url: str, store: str) -> dict[str, float]:
    _credentials()
    with RssSampler() as rss:
        _hash, keys, seconds = _resolve(url, store)
    return {"keys": keys, "peak_rss": rss.peak_rss, "growth": rss.growth, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, help="the LIST endpoint's URL")
    parser.add_argument("store")
    args = parser.parse_args()
    print(json.dumps(_child(args.child, args.store)))

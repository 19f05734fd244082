"""Indexing memory: peak RSS growth resolving 20k vs 1M keys from a synthetic lister.

The real S3 server cannot hold a million objects in a benchmark, so a page source
generates keys page by page. Each size runs in its own process (RSS is per process);
the row is the growth of the big run's peak RSS over the small run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from benchmarks.bench_env import BenchEnv, RssSampler, mib, run_child
from benchmarks.report import Row
from mx8_common.snapshot.page_source import PageSource

__all__ = ["SyntheticPages", "run"]

CASE = "index_memory"


class SyntheticPages(PageSource):
    """``n`` keys in sorted pages of 1000, generated on demand (never a list of all keys)."""

    def __init__(self, n: int, bucket: str = "synthetic-bucket", prefix: str = "data/") -> None:
        self.n = n
        self.base = f"s3://{bucket}/{prefix}"

    async def pages(self):  # type: ignore[no-untyped-def]
        for start in range(0, self.n, 1000):
            yield [
                (f"part-{i // 1000:05d}/obj-{i:08d}.bin", 1 + i % 4096)
                for i in range(start, min(start + 1000, self.n))
            ]

    def location(self, key: str) -> str:
        return self.base + key


def _child(n: int, store: str) -> dict[str, float]:
    from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot

    cfg = SnapshotResolverConfig(
        store_root=store, label_mode="none", materialize_manifest_bytes=False, show_progress=False
    )
    with RssSampler() as rss:
        t0 = time.perf_counter()
        snap = asyncio.run(
            resolve_snapshot("s3://synthetic-bucket/data/", cfg, page_source=SyntheticPages(n))
        )
        seconds = time.perf_counter() - t0
    assert snap.samples == n
    return {"keys": n, "peak_rss": rss.peak_rss, "growth": rss.growth, "seconds": seconds}


def run(env: BenchEnv) -> list[Row]:
    small, big = 20_000, env.size(200_000, 1_000_000)
    growths, details = [], []
    for _ in range(env.repeats):
        res = {
            n: run_child(__name__, ["--child", str(n), str(env.scratch("mem-store"))])
            for n in (small, big)
        }
        growths.append(mib(int(res[big]["peak_rss"] - res[small]["peak_rss"])))
        details.append(res)
    last = details[-1]
    rate = big / last[big]["seconds"]
    return [
        Row(
            CASE,
            f"peak RSS growth, {big // 1000}k vs {small // 1000}k keys",
            "MiB",
            statistics.median(growths),
            target=32,
            higher_is_better=False,
            samples=growths,
            note=(
                f"peak RSS {mib(int(last[small]['peak_rss'])):.0f} MiB at {small} keys, "
                f"{mib(int(last[big]['peak_rss'])):.0f} MiB at {big} keys; "
                f"{rate:,.0f} keys/s synthetic"
            ),
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("store")
    args = parser.parse_args()
    print(json.dumps(_child(args.child, args.store)))

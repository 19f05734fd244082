"""Indexing memory stays bounded: 1M keys from a synthetic page source, measured.

The real S3 server is far too slow to hold a million objects in a test, so a synthetic page
source generates keys page by page (never a list of them). Each scenario runs in its own
Python process under ``tracemalloc`` and reports the peak growth of traced memory during
``resolve_snapshot``; both processes start together so the two scenarios overlap on 2 cores.

For scale: the same 1M keys held as a Python list of ``(key, size)`` tuples take ~170 MiB.
Measured on the dev box: ~0.9 MiB in order, ~17 MiB with external sort at the default
100000 keys per run (one run buffer plus merge buffers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

N_KEYS = 1_000_000

_SCENARIO = r"""
import asyncio, json, sys, time, tracemalloc
from mx8_common.snapshot.page_source import PageSource
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot

N, SHUFFLED, STORE = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]


class SyntheticPages(PageSource):
    '''N keys in pages of 1000; shuffled = a fixed permutation, generated page by page.'''

    def __init__(self, n, shuffled):
        self.n, self.shuffled = n, shuffled

    async def pages(self):
        for start in range(0, self.n, 1000):
            idx = range(start, min(start + 1000, self.n))
            if self.shuffled:
                idx = [(i * 7_919_993) % self.n for i in idx]  # coprime with n: a permutation
            yield [(f"part-{i // 1000:05d}/obj-{i:08d}.bin", 1 + i % 4096) for i in idx]

    def location(self, key):
        return "s3://synthetic-bucket/data/" + key


async def main():
    cfg = SnapshotResolverConfig(
        store_root=STORE, label_mode="none", materialize_manifest_bytes=False,
        external_sort=SHUFFLED, show_progress=False,
    )
    source = SyntheticPages(N, SHUFFLED)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    resolved = await resolve_snapshot("s3://synthetic-bucket/data/", cfg, page_source=source)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({
        "hash": resolved.manifest_hash, "samples": resolved.samples,
        "manifest_bytes": resolved.manifest_bytes, "peak_growth": peak - base,
        "seconds": time.monotonic() - t0,
    }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, float]]]:
    env = {**os.environ, "MX8_LOG_FORMAT": "json"}
    procs = {}
    for name, shuffled in (("in_order", "0"), ("external_sort", "1")):
        store = tmp_path_factory.mktemp(f"store-{name}")
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _SCENARIO, str(N_KEYS), shuffled, str(store)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    results: dict[str, dict[str, float]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err.decode()[-3000:]
            results[name] = json.loads(out.decode().strip().splitlines()[-1])
        yield results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_snapshot_memory_in_order_listing_is_bounded(
    scenarios: dict[str, dict[str, float]],
) -> None:
    r = scenarios["in_order"]
    assert r["samples"] == N_KEYS
    # Pages stream into the writer: growth is one page plus write buffers, not 1M keys.
    assert r["peak_growth"] < 8 * 1024 * 1024, r


def test_snapshot_memory_external_sort_is_bounded_and_matches(
    scenarios: dict[str, dict[str, float]],
) -> None:
    r = scenarios["external_sort"]
    assert r["samples"] == N_KEYS
    # One run of 100000 keys in memory (~17 MiB), far from the ~170 MiB of all keys.
    assert r["peak_growth"] < 48 * 1024 * 1024, r
    assert r["hash"] == scenarios["in_order"]["hash"]
    assert r["manifest_bytes"] == scenarios["in_order"]["manifest_bytes"]


def test_snapshot_memory_scenario_reports_written_manifest(
    scenarios: dict[str, dict[str, float]],
) -> None:
    # Every row is "<id>\ts3://synthetic-bucket/data/part-XXXXX/obj-XXXXXXXX.bin\t\t<size>\t\n".
    expected = len(b"schema_version=0\n") + sum(
        len(str(i))
        + len("\ts3://synthetic-bucket/data/part-00000/obj-00000000.bin\t\t")
        + len(str(1 + i % 4096))
        + len("\t\n")
        for i in range(N_KEYS)
    )
    assert scenarios["in_order"]["manifest_bytes"] == expected

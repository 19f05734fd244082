"""Manifest stream: coordinator GetManifestStream -> agent-side parse, vs raw read+split.

The coordinator serves a 1M-row manifest from its own process. A measuring child takes
the agent's path (``CoordinatorClient.get_manifest_stream`` -> ``ingest_chunk_stream`` ->
``ManifestTable.from_block_reader``, the block-vectorized parser) and, in the same
process, the baseline: read the same file and split it into lines and fields, the least
any Python parser must do.
RSS growth of the mx8 side is reported against the manifest size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.bench_env import BenchEnv, RssSampler, mib, run_child
from benchmarks.coordinator_child import serve_coordinator
from benchmarks.report import Row

__all__ = ["run", "write_manifest"]

CASE = "manifest_stream"


def write_manifest(directory: Path, samples: int) -> Path:
    """A canonical manifest of ``samples`` S3 rows at ``directory/manifest.tsv``."""
    from mx8_common.manifest.format import ManifestWriter

    with ManifestWriter(directory) as writer:
        for i in range(samples):
            writer.write(
                f"s3://bench-bucket/train/part-{i // 1000:05d}/obj-{i:08d}.jpg",
                byte_length=50_000 + i % 9973,
            )
        written = writer.finish()
    path = directory / "manifest.tsv"
    os.replace(written.path, path)
    return path


async def _ingest(address: str, manifest_hash: str) -> int:
    from mx8_agent.ingest.adapter import StreamChunk, ingest_chunk_stream
    from mx8_common.manifest.chunk_codec import ENCODINGS, decode_chunk
    from mx8_common.manifest.table import ManifestTable
    from mx8_common.rpc.coordinator_client import CoordinatorClient

    async with CoordinatorClient(address, tls=None, token="") as client:
        stream = client.get_manifest_stream("default", manifest_hash, accept_encodings=ENCODINGS)

        async def chunks():  # type: ignore[no-untyped-def]
            async for c in stream:
                data = bytes(c.data)
                if c.encoding:  # as the agent does (manifest_ingest._checked_chunks)
                    data = await asyncio.to_thread(
                        decode_chunk,
                        data,
                        encoding=c.encoding,
                        raw_length=int(c.raw_length),
                        offset=int(c.offset),
                    )
                yield StreamChunk(int(c.offset), data, int(c.schema_version))

        def build(reader) -> ManifestTable:  # type: ignore[no-untyped-def]
            # What the agent's direct ingest does (manifest_ingest._build_table).
            return ManifestTable.from_block_reader(reader, expected_hash=manifest_hash)

        table = await ingest_chunk_stream(chunks(), build)
    return len(table)


def _raw_split(path: Path) -> int:
    rows = 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n")[1:]:
        if line:
            line.split(b"\t")
            rows += 1
    return rows


def _child(address: str, manifest_hash: str, path: Path, samples: int) -> dict[str, float]:
    import uvloop

    # Import everything the ingest uses before sampling RSS: code is not manifest data.
    import mx8_agent.ingest.adapter  # noqa: F401
    import mx8_common.manifest.chunk_codec
    import mx8_common.manifest.table
    import mx8_common.rpc.coordinator_client  # noqa: F401

    size = path.stat().st_size
    with RssSampler() as rss:
        t0 = time.perf_counter()
        rows = uvloop.run(_ingest(address, manifest_hash))
        mx8_s = time.perf_counter() - t0
    assert rows == samples, rows
    t0 = time.perf_counter()
    rows = _raw_split(path)
    raw_s = time.perf_counter() - t0
    assert rows == samples, rows
    return {"mx8_mbps": mib(size) / mx8_s, "raw_mbps": mib(size) / raw_s, "growth": rss.growth}


def run(env: BenchEnv) -> list[Row]:
    samples = env.size(100_000, 1_000_000)
    path = write_manifest(env.scratch("manifest"), samples)
    size = path.stat().st_size
    results = []
    with serve_coordinator(path) as info:
        for _ in range(env.repeats):
            args = ["--child", info["address"], info["manifest_hash"], str(path), str(samples)]
            results.append(run_child(__name__, args))
    mx8 = [r["mx8_mbps"] for r in results]
    raw = [r["raw_mbps"] for r in results]
    growth = [mib(int(r["growth"])) for r in results]
    return [
        Row(
            CASE,
            f"stream+parse {samples // 1000}k rows ({mib(size):.0f} MiB)",
            "MB/s",
            statistics.median(mx8),
            statistics.median(raw),
            "raw read+split",
            target=0.5,
            samples=mx8,
            baseline_samples=raw,
        ),
        Row(
            CASE,
            f"agent RSS growth while ingesting {mib(size):.0f} MiB",
            "MiB",
            statistics.median(growth),
            # Bounded: the table plus a few chunks, never a second copy of the manifest.
            target=round(mib(size), 1),
            higher_is_better=False,
            samples=growth,
            note="target: under the manifest size (the parsed table, no raw copy held)",
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, required=True)
    a = parser.parse_args().child
    print(json.dumps(_child(a[0], a[1], Path(a[2]), int(a[3]))))

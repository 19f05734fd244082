"""The agent's table at scale: file-backed ingest memory, lookups, and the stream's wire bytes.

* **RSS growth** of a child ingesting a 10M-row manifest (quick: 200k) into the file-backed
  table through the agent's adapter (``ingest_chunk_stream``, 1 MiB chunks as the
  coordinator sends them, read from the manifest file so the coordinator's CPU is out of
  the measurement) into ``build_file_table``. Target: < 128 MiB, whatever the row count.
* **Lookups/s** of ``record(i)`` at random ids, file-backed vs the in-memory table of the
  same manifest (both warm: the files were just written, so they are in the page cache).
  Target: within 2x.
* **Bytes on the wire** of ``GetManifestStream`` for a 1M-row manifest (quick: 100k), zlib
  chunks (the default) vs ``--manifest-stream-compression none``, counted by a loopback TCP proxy
  between the coordinator child and the client (gRPC framing included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_env import BenchEnv, RssSampler, mib, run_child
from benchmarks.coordinator_child import serve_coordinator
from benchmarks.report import Row

__all__ = ["run"]

CASE = "table_file"


def _write_manifest(directory: Path, samples: int) -> tuple[Path, str]:
    from mx8_common.manifest.format import ManifestWriter

    with ManifestWriter(directory) as writer:
        for start in range(0, samples, 10_000):
            ids = range(start, min(start + 10_000, samples))
            writer.write_page(
                [f"s3://bench-bucket/train/part-{i // 1000:05d}/obj-{i:08d}.jpg" for i in ids],
                [50_000 + i % 9973 for i in ids],
            )
        written = writer.finish()
    path = directory / "manifest.tsv"
    written.path.replace(path)
    return path, written.manifest_hash


def _ingest(path: Path, manifest_hash: str, root: Path | None) -> Any:
    from mx8_agent.ingest.adapter import StreamChunk, ingest_chunk_stream
    from mx8_common.manifest.table import ManifestTable
    from mx8_common.manifest.table_file import build_file_table

    async def chunks():  # type: ignore[no-untyped-def]
        offset = 0
        with open(path, "rb") as f:
            while data := f.read(1 << 20):
                yield StreamChunk(offset, data)
                offset += len(data)

    def build(reader):  # type: ignore[no-untyped-def]
        if root is not None:
            return build_file_table(reader, root=root, expected_hash=manifest_hash)
        return ManifestTable.from_block_reader(reader, expected_hash=manifest_hash)

    return asyncio.run(ingest_chunk_stream(chunks(), build))


def _lookup_rate(table: Any, ids: list[int]) -> float:
    t0 = time.perf_counter()
    for i in ids:
        table.record(i)
    return len(ids) / (time.perf_counter() - t0)


def _child(path: Path, manifest_hash: str, samples: int, root: Path) -> dict[str, float]:
    # Import everything the ingest uses before sampling RSS: code is not manifest data.
    import mx8_agent.ingest.adapter  # noqa: F401
    import mx8_common.manifest.table_file  # noqa: F401

    with RssSampler() as rss:
        t0 = time.perf_counter()
        disk = _ingest(path, manifest_hash, root)
        seconds = time.perf_counter() - t0
    assert len(disk) == samples
    ids = random.Random(0).choices(range(samples), k=200_000)
    disk_rate = _lookup_rate(disk, ids)
    mem = _ingest(path, manifest_hash, None)
    mem_rate = _lookup_rate(mem, ids)
    assert disk.record(ids[0]) == mem.record(ids[0])
    return {
        "growth": rss.growth,
        "seconds": seconds,
        "disk_rate": disk_rate,
        "mem_rate": mem_rate,
        "mem_nbytes": mem.nbytes,
    }


async def _count_wire(upstream: str, manifest_hash: str) -> tuple[int, int]:
    """Stream the manifest through a counting proxy; (bytes on the wire, manifest bytes)."""
    from mx8_common.rpc.coordinator_client import CoordinatorClient

    host, _, port = upstream.rpartition(":")
    down = 0

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        nonlocal down
        try:
            while data := await src.read(1 << 16):
                if count:
                    down += len(data)
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    links: list[asyncio.Task[Any]] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))
        link = asyncio.ensure_future(
            asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))
        )
        links.append(link)
        await link

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    proxy = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    received = 0
    try:
        async with CoordinatorClient(proxy, tls=None, token="") as client:
            # What the agent asks for; a raw chunk's raw_length is 0.
            stream = client.get_manifest_stream(
                "default", manifest_hash, accept_encodings=("zlib",)
            )
            async for chunk in stream:
                received += chunk.raw_length or len(chunk.data)
    finally:
        # The client closed its channel: let each link see EOF both ways, then stop.
        _, pending = await asyncio.wait(links, timeout=5) if links else ((), ())
        for link in pending:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)
        server.close()
        await server.wait_closed()
    return down, received


def run(env: BenchEnv) -> list[Row]:
    samples = env.size(200_000, 10_000_000)
    path, manifest_hash = _write_manifest(env.scratch("table-file"), samples)
    results = []
    for _ in range(env.repeats):
        root = env.scratch("tables")
        args = ["--child", str(path), manifest_hash, str(samples), str(root)]
        results.append(run_child(__name__, args, timeout_s=1800))
    growth = [mib(int(r["growth"])) for r in results]
    disk = [r["disk_rate"] for r in results]
    mem = [r["mem_rate"] for r in results]
    rows = [
        Row(
            CASE,
            f"agent RSS growth ingesting {samples / 1e6:g}M rows ({mib(path.stat().st_size):.0f}"
            " MiB) into the file-backed table",
            "MiB",
            statistics.median(growth),
            target=128,
            higher_is_better=False,
            samples=growth,
            note=f"the in-memory table of the same rows holds "
            f"{mib(int(results[0]['mem_nbytes'])):.0f} MiB",
        ),
        Row(
            CASE,
            f"record(i) lookups at random ids, file-backed ({samples / 1e6:g}M rows)",
            "lookups/s",
            statistics.median(disk),
            statistics.median(mem),
            "in-memory table",
            target=0.5,
            samples=disk,
            baseline_samples=mem,
            note="target: within 2x of the in-memory table (page cache warm)",
        ),
    ]
    wire_samples = env.size(100_000, 1_000_000)
    wire_path, wire_hash = _write_manifest(env.scratch("wire"), wire_samples)
    wire: dict[str, int] = {}
    for compression in ("zlib", "none"):
        with serve_coordinator(wire_path, manifest_stream_compression=compression) as info:
            down, received = asyncio.run(_count_wire(info["address"], wire_hash))
        assert received == wire_path.stat().st_size, (received, compression)
        wire[compression] = down
    rows.append(
        Row(
            CASE,
            f"GetManifestStream bytes on the wire, {wire_samples // 1000}k rows "
            f"({mib(wire_path.stat().st_size):.0f} MiB raw)",
            "MiB",
            mib(wire["zlib"]),
            mib(wire["none"]),
            "uncompressed stream",
            target=2.0,
            higher_is_better=False,
            note="zlib chunks (--manifest-stream-compression, the default) vs none; "
            "target: at least 2x fewer bytes",
        )
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, required=True)
    a = parser.parse_args().child
    print(json.dumps(_child(Path(a[0]), a[1], int(a[2]), Path(a[3]))))

"""GetManifestStream of a multi-MiB manifest: equal bytes, server memory bounded by a chunk."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

from support.manifests import PADDED_LOCATION, write_manifest

from mx8_common.rpc.coordinator_client import CoordinatorClient

MiB = 1 << 20


async def test_manifest_stream_memory_stays_bounded(tmp_path: Path, start_coordinator) -> None:
    path = write_manifest(tmp_path / "m", 100_000, location=PADDED_LOCATION).path
    size = path.stat().st_size
    assert size > 20 * MiB
    stored_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    coord = await start_coordinator(path)

    async with CoordinatorClient(coord.address) as client:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            sha, received, offsets = hashlib.sha256(), 0, []
            async for chunk in client.get_manifest_stream("default", stored_digest):
                assert len(chunk.data) <= MiB
                offsets.append(chunk.offset)
                sha.update(chunk.data)
                received += len(chunk.data)
            _, stream_peak = tracemalloc.get_traced_memory()

            # Control: the whole-manifest RPC does hold it all, and the measurement sees it.
            tracemalloc.reset_peak()
            whole = await client.get_manifest("default", stored_digest)
            _, whole_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert received == size and sha.hexdigest() == stored_digest
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert len(whole.manifest_bytes) == size
    stream_growth, whole_growth = stream_peak - base, whole_peak - base
    print(
        f"manifest {size / MiB:.1f} MiB: stream peak +{stream_growth / MiB:.2f} MiB, "
        f"whole peak +{whole_growth / MiB:.2f} MiB"
    )
    # Server and client share this process: a few chunks in flight at most, never the file.
    assert stream_growth < 6 * MiB
    assert whole_growth > size

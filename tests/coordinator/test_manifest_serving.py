"""Manifest sources and chunking: file and store sources, chunk bounds, refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.manifests import write_manifest

from mx8_common.errors import (
    ManifestHashMismatch,
    ManifestNonSequentialId,
    ManifestTooLargeError,
    ManifestTruncated,
)
from mx8_common.store import open_manifest_store
from mx8_coordinator.rpc.manifest_serving import (
    FileManifestSource,
    ManifestSource,
    StoreManifestSource,
    iter_manifest_chunks,
    read_whole_manifest,
)


async def test_file_manifest_source_counts_and_hashes(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, 321).path
    data = path.read_bytes()
    src = await FileManifestSource.open(path)
    assert isinstance(src, ManifestSource)
    assert src.total_samples == 321 and src.manifest_hash == hashlib.sha256(data).hexdigest()
    pieces = [p async for p in iter_manifest_chunks(src, chunk_bytes=1000)]
    assert all(len(p.data) <= 1000 for p in pieces) and len(pieces) == -(-len(data) // 1000)
    assert b"".join(p.data for p in pieces) == data
    assert await read_whole_manifest(src, len(data)) == data
    with pytest.raises(ManifestTooLargeError, match=r"over the \d+-byte gRPC message cap"):
        await read_whole_manifest(src, len(data) - 1)


async def test_file_manifest_source_rejects_bad_files(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, 5).path
    with pytest.raises(ManifestHashMismatch, match="not the pinned"):
        await FileManifestSource.open(path, expected_hash="0" * 64)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(path.read_bytes().replace(b"\n3\t", b"\n7\t"))
    with pytest.raises(ManifestNonSequentialId):
        await FileManifestSource.open(bad)


async def test_manifest_chunks_fail_closed_when_source_shrinks(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, 100).path
    src = await FileManifestSource.open(path)
    path.write_bytes(path.read_bytes()[:500])  # the file lost its tail after it was opened
    with pytest.raises(ManifestTruncated, match="ended at byte 500"):
        async for _ in iter_manifest_chunks(src, chunk_bytes=256):
            pass


async def test_store_manifest_source_reads_ranges_from_fs_store(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m", 2000).path
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    async with open_manifest_store(str(tmp_path / "store")) as store:
        await store.put_manifest_file(path, digest)
        src = StoreManifestSource(store, manifest_hash=digest, total_samples=2000)
        assert await src.manifest_len() == len(data)
        pieces = [p async for p in iter_manifest_chunks(src, chunk_bytes=4096)]
    assert b"".join(p.data for p in pieces) == data
    assert [p.offset for p in pieces] == list(range(0, len(data), 4096))

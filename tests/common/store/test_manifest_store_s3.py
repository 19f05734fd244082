"""S3 manifest store against the real S3-protocol server of the fixtures."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from support.manifests import write_manifest

from mx8_common.errors import (
    IntegrityError,
    ManifestHashMismatch,
    SnapshotNotFoundError,
)
from mx8_common.store import ManifestMeta
from mx8_common.store.s3 import S3ManifestStore


@pytest.fixture
async def store(s3_bucket: str) -> Any:
    async with S3ManifestStore(f"s3://{s3_bucket}/stores/a") as s:
        yield s


async def test_s3_store_put_and_read_back(store: S3ManifestStore, tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 40, name=None)
    data = m.path.read_bytes()
    assert not await store.has(m.manifest_hash)
    await store.put_manifest_file(m.path, m.manifest_hash)
    assert await store.has(m.manifest_hash)
    assert await store.manifest_len(m.manifest_hash) == len(data)
    assert await store.read_range(m.manifest_hash, 7, 30) == data[7:37]
    assert await store.read_range(m.manifest_hash, len(data) - 2, 50) == data[-2:]
    assert await store.read_range(m.manifest_hash, len(data), 50) == b""
    assert await store.read_manifest_bytes(m.manifest_hash) == data
    dest = await store.download_manifest(m.manifest_hash, tmp_path / "dl" / "m.tsv")
    assert dest.read_bytes() == data
    assert await store.local_path(m.manifest_hash) is None
    assert store.manifest_location(m.manifest_hash) == (
        f"s3://{store.bucket}/stores/a/by-hash/{m.manifest_hash}"
    )
    await store.put_manifest_file(m.path, m.manifest_hash)  # equal bytes: verified no-op
    assert await store.manifest_samples(m.manifest_hash) == 40


async def test_s3_store_collision_verify_catches_different_stored_object(
    store: S3ManifestStore, s3_sync_client: Any, tmp_path: Path
) -> None:
    m = write_manifest(tmp_path, 30, name=None)
    data = bytearray(m.path.read_bytes())
    data[-4] ^= 1
    s3_sync_client.put_object(
        Bucket=store.bucket, Key=f"stores/a/by-hash/{m.manifest_hash}", Body=bytes(data)
    )
    with pytest.raises(IntegrityError):
        await store.put_manifest_file(m.path, m.manifest_hash)
    with pytest.raises(ManifestHashMismatch):
        await store.read_manifest_bytes(m.manifest_hash)


async def test_s3_store_server_rejects_file_under_wrong_hash(
    store: S3ManifestStore, tmp_path: Path
) -> None:
    a = write_manifest(tmp_path / "a", 3, location="s3://bucket/a/{i:05d}.bin", name=None)
    b = write_manifest(tmp_path / "b", 3, location="s3://bucket/b/{i:05d}.bin", name=None)
    with pytest.raises(IntegrityError):
        await store.put_manifest_file(a.path, b.manifest_hash)
    assert not await store.has(b.manifest_hash)


async def test_s3_store_multipart_upload_is_conditional(s3_bucket: str, tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 160_000, name=None)  # ~6 MiB: two 5 MiB-minimum parts
    assert m.manifest_bytes > 5 * 1024 * 1024
    async with S3ManifestStore(
        f"s3://{s3_bucket}/mp", multipart_threshold=1024 * 1024, part_size=5 * 1024 * 1024
    ) as store:
        await store.put_manifest_file(m.path, m.manifest_hash)
        assert await store.manifest_len(m.manifest_hash) == m.manifest_bytes
        stored = await store.read_manifest_bytes(m.manifest_hash)
        assert hashlib.sha256(stored).hexdigest() == m.manifest_hash
        await store.put_manifest_file(m.path, m.manifest_hash)  # exists: verify path


async def test_s3_store_missing_hash_is_not_found(store: S3ManifestStore) -> None:
    missing = "0" * 64
    with pytest.raises(SnapshotNotFoundError):
        await store.manifest_len(missing)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_range(missing, 0, 10)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_manifest_bytes(missing)


async def test_s3_store_intent_labels_meta(store: S3ManifestStore, tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 4, name=None)
    assert await store.read_intent("k" * 64) is None
    rec = await store.write_intent("k" * 64, m.manifest_hash)
    assert await store.read_intent_record("k" * 64) == rec
    await store.put_labels(m.manifest_hash, ["a", "b", "c"])
    await store.put_labels(m.manifest_hash, ["a", "b", "c"])
    with pytest.raises(IntegrityError):
        await store.put_labels(m.manifest_hash, ["x"])
    assert await store.get_labels(m.manifest_hash) == ["a", "b", "c"]
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes))
    assert await store.get_meta(m.manifest_hash) == ManifestMeta(4, m.manifest_bytes)
    # A listing time replaces the meta (a later listing of the same content vouches for
    # it); counts alone never clobber it.
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1700000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1800000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes))
    meta = await store.get_meta(m.manifest_hash)
    assert meta == ManifestMeta(4, m.manifest_bytes, 1800000000.0)


async def test_s3_store_lock_primitives_compare_and_swap(store: S3ManifestStore) -> None:
    v1 = await store.lock_create("key", b"one")
    assert v1 is not None
    assert await store.lock_create("key", b"two") is None
    state = await store.lock_read("key")
    assert state is not None and state.body == b"one" and state.version == v1
    assert await store.lock_replace("key", '"0000"', b"x") is None
    v2 = await store.lock_replace("key", v1, b"three")
    assert v2 is not None and v2 != v1
    assert not await store.lock_delete("key", v1)
    assert (await store.lock_read("key")).body == b"three"  # type: ignore[union-attr]
    assert await store.lock_delete("key", v2)
    assert await store.lock_read("key") is None

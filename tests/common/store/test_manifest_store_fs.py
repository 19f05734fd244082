"""Filesystem manifest store: conditional create, collision verify, reads, intents, locks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.manifests import write_manifest

from mx8_common.errors import (
    ConfigError,
    IntegrityError,
    ManifestHashMismatch,
    SnapshotNotFoundError,
    StoreError,
)
from mx8_common.store import ManifestMeta, open_manifest_store
from mx8_common.store.fs import FsManifestStore


@pytest.fixture
def store(tmp_path: Path) -> FsManifestStore:
    return FsManifestStore(tmp_path / "store")


def test_open_manifest_store_picks_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MX8_MANIFEST_STORE_ROOT", str(tmp_path / "env"))
    assert open_manifest_store().root == str(tmp_path / "env")
    assert open_manifest_store(f"file://{tmp_path}/x").root == f"{tmp_path}/x"
    monkeypatch.delenv("MX8_MANIFEST_STORE_ROOT")
    assert open_manifest_store().root == os.path.expanduser("~/.mx8/manifests")
    assert type(open_manifest_store("s3://bkt/pre")).__name__ == "S3ManifestStore"


def test_open_manifest_store_unknown_scheme_names_every_kind_of_root() -> None:
    with pytest.raises(ConfigError) as info:
        open_manifest_store("hdfs://x/m")
    message = str(info.value)
    assert "'hdfs://x/m' has an unknown scheme" in message and "\n" not in message
    assert "a folder" in message and "s3://bucket/prefix" in message
    assert "az://container/prefix" in message


async def test_fs_store_put_and_read_back(store: FsManifestStore, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "src", 50, name=None)
    assert not await store.has(m.manifest_hash)
    await store.put_manifest_file(m.path, m.manifest_hash)
    data = m.path.read_bytes()
    assert await store.has(m.manifest_hash)
    assert await store.manifest_len(m.manifest_hash) == len(data) == m.manifest_bytes
    assert await store.read_range(m.manifest_hash, 10, 25) == data[10:35]
    assert await store.read_range(m.manifest_hash, len(data) - 3, 100) == data[-3:]
    assert await store.read_manifest_bytes(m.manifest_hash) == data
    dest = await store.download_manifest(m.manifest_hash, tmp_path / "dl" / "m.tsv")
    assert dest.read_bytes() == data
    local = await store.local_path(m.manifest_hash)
    assert local is not None and local.read_bytes() == data
    assert store.manifest_location(m.manifest_hash) == str(local)
    # A second put of equal bytes is a verified no-op.
    await store.put_manifest_file(m.path, m.manifest_hash)
    assert await store.manifest_samples(m.manifest_hash) == 50  # counted: no meta stored


async def test_fs_store_links_own_temp_files(store: FsManifestStore) -> None:
    m = write_manifest(store.scratch_dir(), 5, name=None)
    await store.put_manifest_file(m.path, m.manifest_hash)
    stored = Path(store.manifest_location(m.manifest_hash))
    assert os.stat(stored).st_ino == os.stat(m.path).st_ino  # hard link, no copy
    assert not os.access(stored, os.W_OK) or os.geteuid() == 0
    assert stored.stat().st_mode & 0o222 == 0  # read-only


async def test_fs_store_collision_verify_catches_different_stored_file(
    store: FsManifestStore, tmp_path: Path
) -> None:
    m = write_manifest(tmp_path / "src", 20, name=None)
    final = Path(store.manifest_location(m.manifest_hash))
    final.parent.mkdir(parents=True)
    data = bytearray(m.path.read_bytes())
    data[-5] ^= 1  # one flipped bit in a stored copy of the same length
    final.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="different bytes"):
        await store.put_manifest_file(m.path, m.manifest_hash)
    with pytest.raises(ManifestHashMismatch):
        await store.read_manifest_bytes(m.manifest_hash)
    with pytest.raises(ManifestHashMismatch):
        await store.local_path(m.manifest_hash)


async def test_fs_store_refuses_file_under_wrong_hash(
    store: FsManifestStore, tmp_path: Path
) -> None:
    a = write_manifest(tmp_path / "a", 3, location="s3://bucket/a/{i:05d}.bin", name=None)
    b = write_manifest(tmp_path / "b", 3, location="s3://bucket/b/{i:05d}.bin", name=None)
    with pytest.raises(IntegrityError, match="hashes to"):
        await store.put_manifest_file(a.path, b.manifest_hash)
    assert not await store.has(b.manifest_hash)


async def test_fs_store_missing_hash_is_not_found(store: FsManifestStore) -> None:
    missing = "0" * 64
    with pytest.raises(SnapshotNotFoundError, match="has no snapshot"):
        await store.manifest_len(missing)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_range(missing, 0, 10)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_manifest_bytes(missing)
    with pytest.raises(StoreError, match="not a manifest hash"):
        await store.has("../../etc/passwd")


async def test_fs_store_intent_labels_meta(store: FsManifestStore, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "src", 4, name=None)
    assert await store.read_intent("k" * 64) is None
    first = await store.write_intent("k" * 64, m.manifest_hash)
    second = await store.write_intent("k" * 64, m.manifest_hash)
    assert first.token != second.token
    assert await store.read_intent("k" * 64) == m.manifest_hash
    assert (await store.read_intent_record("k" * 64)) == second
    assert await store.get_labels(m.manifest_hash) is None
    await store.put_labels(m.manifest_hash, ["cat", "dog"])
    await store.put_labels(m.manifest_hash, ["cat", "dog"])  # same content: fine
    with pytest.raises(IntegrityError):
        await store.put_labels(m.manifest_hash, ["cat", "emu"])
    assert await store.get_labels(m.manifest_hash) == ["cat", "dog"]
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes))
    assert await store.get_meta(m.manifest_hash) == ManifestMeta(4, m.manifest_bytes)
    # A listing time replaces the meta (a later listing of the same content vouches for
    # it); counts alone never clobber it.
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1700000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1800000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes))
    meta = await store.get_meta(m.manifest_hash)
    assert meta == ManifestMeta(4, m.manifest_bytes, 1800000000.0)


async def test_fs_store_lock_primitives_compare_and_swap(store: FsManifestStore) -> None:
    v1 = await store.lock_create("key", b"one")
    assert v1 is not None
    assert await store.lock_create("key", b"two") is None
    state = await store.lock_read("key")
    assert state is not None and state.body == b"one" and state.version == v1
    assert await store.lock_replace("key", "stale-version", b"x") is None
    v2 = await store.lock_replace("key", v1, b"three")
    assert v2 is not None and v2 != v1
    assert not await store.lock_delete("key", v1)  # old version: refused, lock kept
    assert (await store.lock_read("key")).body == b"three"  # type: ignore[union-attr]
    assert await store.lock_delete("key", v2)
    assert await store.lock_read("key") is None
    assert not await store.lock_delete("key", v2)

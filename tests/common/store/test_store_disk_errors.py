"""Disk faults under a manifest store (a full disk, a directory where a lock file belongs)
are one ``StoreError`` naming the path and the fix, never a bare ``OSError``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.mounts import tmpfs

from mx8_common.errors import StoreError
from mx8_common.snapshot.config import SnapshotResolverConfig
from mx8_common.snapshot.resolver import resolve_snapshot
from mx8_common.store.fs import FsManifestStore


async def test_fs_store_lock_path_that_is_a_directory_is_a_store_error_naming_it(
    tmp_path: Path,
) -> None:
    store = FsManifestStore(tmp_path / "store")
    lock = tmp_path / "store" / "locks" / "k.lock"
    lock.mkdir(parents=True)
    with pytest.raises(StoreError, match=r"(?i)is a directory") as caught:
        await store.lock_read("k")
    assert str(lock) in str(caught.value) and "remove it" in str(caught.value)


async def test_resolve_into_a_store_on_a_full_disk_is_a_store_error_naming_the_path(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3000):
        (data / f"object-with-a-longish-name-{i:06d}.bin").write_bytes(b"x")
    with tmpfs(tmp_path / "full", "size=64k") as root:
        cfg = SnapshotResolverConfig(store_root=str(root), show_progress=False)
        with pytest.raises(StoreError) as caught:
            await resolve_snapshot(str(data), cfg)
    message = str(caught.value)
    assert "No space left on device" in message and str(root) in message
    assert "free space" in message

"""Azure manifest store against azurite: conditional creates, verified reads, lock CAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.cloud_emulators import Azurite
from support.logs import Events
from support.manifests import write_manifest

import mx8
from mx8_common.errors import IntegrityError, ManifestHashMismatch, SnapshotNotFoundError
from mx8_common.store import ManifestMeta, open_manifest_store
from mx8_common.store.azure import AzureManifestStore


@pytest.fixture
async def store(az_container: str) -> AsyncIterator[AzureManifestStore]:
    async with AzureManifestStore(f"az://{az_container}/stores/a") as s:
        yield s


async def test_azure_store_put_and_read_back(store: AzureManifestStore, tmp_path: Path) -> None:
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
    assert store.manifest_location(m.manifest_hash) == (
        f"az://{store.container}/stores/a/by-hash/{m.manifest_hash}"
    )
    await store.put_manifest_file(m.path, m.manifest_hash)  # equal bytes: verified no-op
    assert await store.manifest_samples(m.manifest_hash) == 40


async def test_azure_store_collision_verify_catches_different_stored_blob(
    store: AzureManifestStore, azurite_server: Azurite, tmp_path: Path
) -> None:
    m = write_manifest(tmp_path, 30, name=None)
    data = bytearray(m.path.read_bytes())
    data[-4] ^= 1
    azurite_server.put(store.container, f"stores/a/by-hash/{m.manifest_hash}", bytes(data))
    with pytest.raises(IntegrityError):
        await store.put_manifest_file(m.path, m.manifest_hash)
    with pytest.raises(ManifestHashMismatch):
        await store.read_manifest_bytes(m.manifest_hash)


async def test_azure_store_refuses_file_under_wrong_hash(
    store: AzureManifestStore, tmp_path: Path
) -> None:
    a = write_manifest(tmp_path / "a", 3, location="az://c/a/{i:05d}.bin", name=None)
    b = write_manifest(tmp_path / "b", 3, location="az://c/b/{i:05d}.bin", name=None)
    with pytest.raises(IntegrityError):
        await store.put_manifest_file(a.path, b.manifest_hash)
    assert not await store.has(b.manifest_hash)


async def test_azure_store_missing_hash_is_not_found(store: AzureManifestStore) -> None:
    missing = "0" * 64
    with pytest.raises(SnapshotNotFoundError):
        await store.manifest_len(missing)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_range(missing, 0, 10)
    with pytest.raises(SnapshotNotFoundError):
        await store.read_manifest_bytes(missing)


async def test_azure_store_intent_labels_meta(store: AzureManifestStore, tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 4, name=None)
    assert await store.read_intent("k" * 64) is None
    rec = await store.write_intent("k" * 64, m.manifest_hash)
    assert await store.read_intent_record("k" * 64) == rec
    await store.put_labels(m.manifest_hash, ["a", "b", "c"])
    await store.put_labels(m.manifest_hash, ["a", "b", "c"])
    with pytest.raises(IntegrityError):
        await store.put_labels(m.manifest_hash, ["x"])
    assert await store.get_labels(m.manifest_hash) == ["a", "b", "c"]
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1700000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes, 1800000000.0))
    await store.put_meta(m.manifest_hash, ManifestMeta(4, m.manifest_bytes))
    assert await store.get_meta(m.manifest_hash) == ManifestMeta(4, m.manifest_bytes, 1800000000.0)


async def test_azure_store_lock_primitives_compare_and_swap(store: AzureManifestStore) -> None:
    v1 = await store.lock_create("key", b"one")
    assert v1 is not None
    assert await store.lock_create("key", b"two") is None
    state = await store.lock_read("key")
    assert state is not None and state.body == b"one" and state.version == v1
    assert await store.lock_replace("key", '"0x0000"', b"x") is None
    v2 = await store.lock_replace("key", v1, b"three")
    assert v2 is not None and v2 != v1
    assert not await store.lock_delete("key", v1)  # stale version: not ours to delete
    assert (await store.lock_read("key")).body == b"three"  # type: ignore[union-attr]
    assert await store.lock_delete("key", v2)
    assert await store.lock_read("key") is None
    assert not await store.lock_delete("key", v2)  # already gone


def test_open_manifest_store_az_root_is_the_azure_store() -> None:
    assert isinstance(open_manifest_store("az://cont/m"), AzureManifestStore)


def test_load_with_the_manifest_store_on_azure_reuses_the_snapshot(
    az_container: str, azurite_server: Azurite, logs: Events
) -> None:
    for i in range(9):
        azurite_server.put(az_container, f"ds/{i}.bin", bytes([i]) * (i + 1))
    store = f"az://{az_container}/mx8-store"
    first = mx8.load(f"az://{az_container}/ds/", batch_size=4, label_mode="none", store=store)
    again = mx8.load(f"az://{az_container}/ds/", batch_size=4, label_mode="none", store=store)
    assert first.manifest_hash == again.manifest_hash
    assert len(logs.named("snapshot_index_summary")) == 1  # the second load reused it
    got = {bytes(p) for b in again for p in b.payloads}
    assert got == {bytes([i]) * (i + 1) for i in range(9)}
    first.close()


def test_snapshot_cli_concurrent_processes_on_an_azure_store_elect_one_indexer(
    az_container: str, azurite_server: Azurite
) -> None:
    for i in range(20):
        azurite_server.put(az_container, f"ds/{i:02d}.bin", b"x" * (i + 1))
    cmd = [sys.executable, "-m", "mx8_common.snapshot.cli", f"az://{az_container}/ds/"]
    cmd += ["--store", f"az://{az_container}/store", "--json", "--label-mode", "none"]
    env = {**os.environ, "MX8_LOG_FORMAT": "json"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    failed = [err[-1500:] for p, (_out, err) in zip(procs, outputs, strict=True) if p.returncode]
    assert not failed, failed
    hashes = {json.loads(out)["manifest_hash"] for out, _ in outputs}
    events = [
        json.loads(line)["event"]
        for _, err in outputs
        for line in err.splitlines()
        if line.startswith("{")
    ]
    assert len(hashes) == 1
    assert events.count("snapshot_indexer_elected") == 1, events
    assert events.count("snapshot_index_summary") == 1, events


async def test_azure_store_object_primitives_and_listing(store: AzureManifestStore) -> None:
    assert await store.create_object("log/b", b"2")
    assert await store.create_object("log/a", b"1")
    assert not await store.create_object("log/a", b"again")
    await store.replace_object("log/c", b"3")
    await store.replace_object("log/c", b"33")
    assert await store.create_object("log/sub/x", b"deeper")
    assert await store.read_object("log/c") == b"33"
    assert await store.read_object("log/none") is None
    assert await store.list_objects("log") == ["a", "b", "c"]
    assert await store.list_objects("empty") == []

"""Single-writer lock: election, waiting, heartbeats, stale takeover and wait timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.eventually import assert_eventually
from support.logs import Events

from mx8_common.errors import LockTimeoutError
from mx8_common.link import parse_dataset_link
from mx8_common.snapshot.lock import SnapshotLock, run_single_writer
from mx8_common.snapshot.resolver import SnapshotResolverConfig, intent_key, resolve_snapshot
from mx8_common.store import ManifestStore, open_manifest_store

_HOLDER = """
import asyncio, sys
from mx8_common.store import open_manifest_store
from mx8_common.snapshot.lock import SnapshotLock

async def main():
    store = open_manifest_store(sys.argv[1])
    lock = SnapshotLock(store, sys.argv[2], link="holder", stale_ms=int(sys.argv[3]))
    assert await lock.try_acquire()
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.bin").write_bytes(b"x" * (i + 1))
    return root


async def test_snapshot_lock_stale_lock_of_killed_holder_is_recovered(
    store_root_any: str, tmp_path: Path, logs: Events
) -> None:
    root = _dataset(tmp_path)
    cfg = SnapshotResolverConfig(store_root=store_root_any, lock_stale_ms=500, label_mode="none")
    key = intent_key(parse_dataset_link(str(root)), cfg)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, store_root_any, key, "500"],
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: no release
        holder.wait(10)
        async with open_manifest_store(store_root_any) as store:
            assert await store.lock_read(key) is not None
            logs.clear()
            resolved = await resolve_snapshot(str(root), cfg, store=store)
            assert resolved.indexed and resolved.samples == 5
            events = logs.names()
            assert "snapshot_lock_stale_takeover" in events
            assert events.count("snapshot_indexer_elected") == 1
            assert await store.lock_read(key) is None  # released after indexing
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


async def test_snapshot_lock_wait_times_out_while_live_holder_heartbeats(
    store_root_any: str, tmp_path: Path, logs: Events
) -> None:
    root = _dataset(tmp_path)
    cfg = SnapshotResolverConfig(
        store_root=store_root_any, lock_stale_ms=3000, wait_timeout_ms=4000, label_mode="none"
    )
    key = intent_key(parse_dataset_link(str(root)), cfg)
    async with open_manifest_store(store_root_any) as store:
        # Margins wide enough for a loaded 2-core box (a moto PUT can take a second):
        # 60 heartbeats per stale period.
        holder = SnapshotLock(store, key, link="holder", stale_ms=3000, heartbeat_ms=50)
        assert await holder.try_acquire()
        try:
            logs.clear()
            with pytest.raises(LockTimeoutError) as info:
                # Longer than stale_ms: only the heartbeat keeps the lock from a takeover.
                await resolve_snapshot(str(root), cfg, store=store)
            assert "MX8_SNAPSHOT_WAIT_TIMEOUT_MS" in str(info.value)
            events = logs.names()
            assert events.count("snapshot_index_waiting") == 1
            assert "snapshot_lock_stale_takeover" not in events
            assert holder.held
        finally:
            await holder.release()
        assert await store.lock_read(key) is None


async def test_run_single_writer_elects_one_and_others_reuse(tmp_path: Path, logs: Events) -> None:
    store: ManifestStore = open_manifest_store(str(tmp_path / "store"))
    result: dict[str, str] = {}
    started = asyncio.Event()
    finish = asyncio.Event()

    async def find_done() -> str | None:
        return result.get("value")

    async def index() -> str:
        started.set()
        await finish.wait()
        result["value"] = "hash-1"
        return "hash-1"

    first = asyncio.create_task(
        run_single_writer(store, "k", link="L", find_done=find_done, index=index)
    )
    await started.wait()
    others = [
        asyncio.create_task(
            run_single_writer(store, "k", link="L", find_done=find_done, index=index)
        )
        for _ in range(3)
    ]

    async def all_waiting() -> bool:
        return len(logs.named("snapshot_index_waiting")) == 3

    await assert_eventually(all_waiting)
    finish.set()
    results = await asyncio.gather(first, *others)
    assert results[0] == ("hash-1", True)
    assert all(r == ("hash-1", False) for r in results[1:])
    assert len(logs.named("snapshot_indexer_elected")) == 1
    assert await store.lock_read("k") is None


async def test_snapshot_lock_release_is_idempotent(tmp_path: Path) -> None:
    store = open_manifest_store(str(tmp_path / "store"))
    lock = SnapshotLock(store, "k", link="L", stale_ms=1000)
    assert await lock.try_acquire()
    assert not await SnapshotLock(store, "k", link="L", stale_ms=1000).try_acquire()
    await lock.release()
    await lock.release()
    assert await store.lock_read("k") is None

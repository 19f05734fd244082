"""Waiting on a live indexer: progress in the lock body, no give-up, stall warning, cap, death."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.eventually import assert_eventually
from support.logs import Events
from support.snapshot import cfg as make_cfg

from mx8_common.errors import ConfigError, LockTimeoutError
from mx8_common.link import parse_dataset_link
from mx8_common.snapshot.lock import LockHolder, SnapshotLock, parse_lock_body, run_single_writer
from mx8_common.snapshot.page_source import PageSource
from mx8_common.snapshot.progress import IndexProgress
from mx8_common.snapshot.resolver import SnapshotResolverConfig, intent_key, resolve_snapshot
from mx8_common.store import ManifestStore, open_manifest_store

# A holder in another process that heartbeats a progress count that keeps rising.
_HOLDER = """
import asyncio, itertools, sys
from mx8_common.store import open_manifest_store
from mx8_common.snapshot.lock import SnapshotLock

async def main():
    count = itertools.count(1)
    store = open_manifest_store(sys.argv[1])
    lock = SnapshotLock(
        store, sys.argv[2], link="holder", stale_ms=int(sys.argv[3]),
        progress=lambda: {"objects_indexed": next(count), "phase": "listing"},
    )
    assert await lock.try_acquire()
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""

# Small enough for quick tests, with room for a loaded 2-core box running moto: at 600 ms a
# holder's heartbeat write to moto missed the window under load and a waiter took over.
_STALE_MS = 1200


def _waiter(store: ManifestStore, result: dict[str, str], **options: Any) -> Any:
    """``run_single_writer`` as a waiter on key "k": reuses ``result["value"]``, never indexes."""

    async def find_done() -> str | None:
        return result.get("value")

    async def index() -> str:
        raise AssertionError("the waiter indexed instead of waiting for the live holder")

    return run_single_writer(
        store, "k", link="L", find_done=find_done, index=index, stale_ms=_STALE_MS, **options
    )


async def _body_count(store: ManifestStore, key: str) -> int | None:
    state = await store.lock_read(key)
    holder = parse_lock_body(state.body) if state is not None else None
    return holder.objects_indexed if holder is not None else None


class _GatedSource(PageSource):
    """A listing that yields one page of ``per_page`` keys each time the test allows it."""

    def __init__(self, per_page: int = 5) -> None:
        self.per_page = per_page
        self._gate: asyncio.Queue[bool] = asyncio.Queue()

    def allow(self) -> None:
        self._gate.put_nowait(True)

    def end(self) -> None:
        self._gate.put_nowait(False)

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        i = 0
        while await self._gate.get():
            yield [(f"{i:05d}/{j:02d}.bin", j + 1) for j in range(self.per_page)]
            i += 1

    def location(self, key: str) -> str:
        return f"s3://bkt/ds/{key}"


class _MustNotList(PageSource):
    """The waiter's listing: touching it means the waiter indexed, which it must not."""

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        raise AssertionError("the waiter indexed instead of waiting for the live holder")
        yield []  # pragma: no cover  (makes this an async generator)

    def location(self, key: str) -> str:
        return key


async def test_snapshot_waiter_outlasts_stale_periods_while_holder_progresses(
    store_root_any: str, tmp_path: Path, logs: Events
) -> None:
    link = str(tmp_path / "ds")
    cfg = make_cfg(store_root_any, lock_stale_ms=_STALE_MS, label_mode="none")
    assert cfg.wait_timeout_ms == 0  # the default: no overall cap
    key = intent_key(parse_dataset_link(link), cfg)
    source = _GatedSource()
    async with open_manifest_store(store_root_any) as store:
        logs.clear()
        holder = asyncio.create_task(resolve_snapshot(link, cfg, store=store, page_source=source))
        await assert_eventually(lambda: logs.named("snapshot_indexer_elected"))
        # The waiter runs its progress display too (a no-op off a TTY, but exercised).
        waiter_cfg = dataclasses.replace(cfg, show_progress=True)
        waiter = asyncio.create_task(
            resolve_snapshot(link, waiter_cfg, store=store, page_source=_MustNotList())
        )
        await assert_eventually(lambda: logs.named("snapshot_index_waiting"))
        waiting_since = time.monotonic()
        # One page at a time, each step ending when a heartbeat has published it,
        # until the waiter has waited through several stale periods.
        published: list[int] = []
        while time.monotonic() - waiting_since < 4 * _STALE_MS / 1000:
            source.allow()
            want = (len(published) + 1) * source.per_page
            await assert_eventually(lambda w=want: _is(store, key, w))
            published.append(want)
            assert not waiter.done()
        source.end()
        held, waited = await asyncio.gather(holder, waiter)
    assert len(published) >= 2
    assert held.indexed and not waited.indexed
    assert waited.manifest_hash == held.manifest_hash
    assert waited.samples == held.samples == published[-1]
    assert len(logs.named("snapshot_indexer_elected")) == 1
    assert not logs.named("snapshot_lock_stale_takeover")
    assert not logs.named("snapshot_index_stalled")
    (first,) = logs.named("snapshot_index_waiting")
    assert first["holder"] and first["intent_key"] == key
    async with open_manifest_store(store_root_any) as store:
        assert await store.lock_read(key) is None  # released


async def _is(store: ManifestStore, key: str, want: int) -> bool:
    return await _body_count(store, key) == want


async def test_run_single_writer_reports_progress_and_one_stall_of_live_holder(
    store_root_any: str,
    logs: Events,
) -> None:
    async with open_manifest_store(store_root_any) as store:
        count = [0]
        holder = SnapshotLock(
            store,
            "k",
            link="L",
            stale_ms=_STALE_MS,
            heartbeat_ms=30,
            progress=lambda: {"objects_indexed": count[0], "phase": "listing"},
        )
        assert await holder.try_acquire()
        result: dict[str, str] = {}
        try:
            logs.clear()
            waiter = asyncio.create_task(_waiter(store, result, report_every_ms=100))

            def reported() -> set[Any]:
                return {e["objects_indexed"] for e in logs.named("snapshot_index_wait_progress")}

            # Progress moves: the waiter's periodic events follow the lock body.
            for n in (1, 2, 3):
                count[0] = n * 100
                await assert_eventually(lambda n=n: n * 100 in reported())
            assert not logs.named("snapshot_index_stalled")
            # The heartbeat goes on but the count stops: one warning, no takeover.
            await assert_eventually(lambda: logs.named("snapshot_index_stalled"))
            (stall,) = logs.named("snapshot_index_stalled")
            assert stall["log_level"] == "warning"
            assert stall["holder"] == holder.owner and stall["objects_indexed"] == 300
            assert stall["stalled_s"] >= _STALE_MS / 1000
            # Two more stale periods of a live, stuck holder: still one warning.
            await assert_eventually(
                lambda: any(
                    e["waited_s"] > stall["waited_s"] + 2 * _STALE_MS / 1000
                    for e in logs.named("snapshot_index_wait_progress")
                )
            )
            assert len(logs.named("snapshot_index_stalled")) == 1
            assert holder.held and not waiter.done()
            # The holder moves again, then finishes: the waiter reuses its result.
            count[0] = 400
            await assert_eventually(lambda: 400 in reported())
            result["value"] = "hash-1"
            assert await waiter == ("hash-1", False)
        finally:
            await holder.release()
    assert not logs.named("snapshot_lock_stale_takeover")
    assert not logs.named("snapshot_indexer_elected")
    waited = [e["waited_s"] for e in logs.named("snapshot_index_wait_progress")]
    assert waited == sorted(waited) and waited[-1] > 2 * _STALE_MS / 1000
    assert all(e["holder"] == holder.owner for e in logs.named("snapshot_index_wait_progress"))


async def test_run_single_writer_cap_still_times_out_on_live_progressing_holder(
    tmp_path: Path,
    logs: Events,
) -> None:
    async with open_manifest_store(str(tmp_path / "store")) as store:
        holder = SnapshotLock(
            store,
            "k",
            link="L",
            stale_ms=_STALE_MS,
            heartbeat_ms=30,
            progress=lambda: {"objects_indexed": 1234},
        )
        assert await holder.try_acquire()
        try:
            logs.clear()
            with pytest.raises(LockTimeoutError) as info:
                await _waiter(store, {}, wait_timeout_ms=3 * _STALE_MS)
            assert holder.held
        finally:
            await holder.release()
    message = str(info.value)
    assert "MX8_SNAPSHOT_WAIT_TIMEOUT_MS" in message and "set it to 0" in message
    assert holder.owner in message and "1,234 objects indexed so far" in message
    assert not logs.named("snapshot_lock_stale_takeover")


def test_snapshot_resolver_config_wait_timeout_zero_means_no_cap() -> None:
    assert SnapshotResolverConfig.from_env({}).wait_timeout_ms == 0
    assert (
        SnapshotResolverConfig.from_env({"MX8_SNAPSHOT_WAIT_TIMEOUT_MS": "900000"}).wait_timeout_ms
        == 900_000
    )
    with pytest.raises(ConfigError, match="wait_timeout_ms must be >= 0"):
        SnapshotResolverConfig(wait_timeout_ms=-1)


def test_parse_lock_body_reads_old_and_new_bodies() -> None:
    old = parse_lock_body(b'{"owner": "h1:42:abc", "seq": 3, "heartbeat_ms": 1000}')
    assert old is not None and old.progress is None and old.objects_indexed is None
    assert (old.owner, old.host, old.seq, old.heartbeat_ms) == ("h1:42:abc", "h1", 3, 1000)
    body = {"owner": "h2:7:x", "seq": 1, "heartbeat_ms": 5, "progress": {"objects_indexed": 9}}
    new = parse_lock_body(json.dumps(body).encode())
    assert new is not None and new.objects_indexed == 9
    assert parse_lock_body(b"not json") is None
    assert parse_lock_body(b'{"owner": "x"}') is None


async def test_run_single_writer_waits_on_old_holder_without_progress(
    tmp_path: Path, logs: Events
) -> None:
    async with open_manifest_store(str(tmp_path / "store")) as store:
        # No progress callable: the body has the pre-progress format.
        holder = SnapshotLock(store, "k", link="L", stale_ms=_STALE_MS, heartbeat_ms=30)
        assert await holder.try_acquire()
        state = await store.lock_read("k")
        assert state is not None and "progress" not in json.loads(state.body)
        result: dict[str, str] = {}
        try:
            logs.clear()
            waiter = asyncio.create_task(_waiter(store, result, report_every_ms=100))
            await assert_eventually(
                lambda: any(
                    e["waited_s"] > 3 * _STALE_MS / 1000
                    for e in logs.named("snapshot_index_wait_progress")
                )
            )
            result["value"] = "hash-old"
            assert await waiter == ("hash-old", False)
        finally:
            await holder.release()
    (first,) = logs.named("snapshot_index_waiting")
    assert first["holder"] == holder.owner and first["objects_indexed"] is None
    assert not logs.named("snapshot_index_stalled")  # nothing to judge progress by
    assert not logs.named("snapshot_lock_stale_takeover")


async def test_snapshot_waiter_takes_over_when_progressing_holder_dies(
    store_root_any: str, tmp_path: Path, logs: Events
) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.bin").write_bytes(b"x" * (i + 1))
    cfg = make_cfg(store_root_any, lock_stale_ms=_STALE_MS, label_mode="none")
    key = intent_key(parse_dataset_link(str(root)), cfg)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, store_root_any, key, str(_STALE_MS)],
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        async with open_manifest_store(store_root_any) as store:
            logs.clear()
            waiter = asyncio.create_task(resolve_snapshot(str(root), cfg, store=store))
            # Alive and advancing: the waiter waits and sees the count in the body.
            await assert_eventually(lambda: logs.named("snapshot_index_waiting"))
            first = await _body_count(store, key)
            assert first is not None
            await assert_eventually(lambda: _gt(store, key, first))
            assert not waiter.done()
            holder.send_signal(signal.SIGKILL)  # dies holding the lock: no release
            holder.wait(10)
            resolved = await asyncio.wait_for(waiter, 8)
            assert resolved.indexed and resolved.samples == 5
            assert len(logs.named("snapshot_lock_stale_takeover")) == 1
            assert len(logs.named("snapshot_indexer_elected")) == 1
            assert await store.lock_read(key) is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


async def _gt(store: ManifestStore, key: str, than: int) -> bool:
    count = await _body_count(store, key)
    return count is not None and count > than


def test_snapshot_progress_waiting_shows_holder_and_count() -> None:
    bar = IndexProgress(True, "s3://b/big/")
    try:
        progress = {"objects_indexed": 1_500_000}
        bar.waiting("s3://b/big/", LockHolder("node7:42:ab", 3, 0, progress))
        (task,) = bar._progress.tasks
        assert task.description == "waiting for node7 to index s3://b/big/:"
        assert task.completed == 1_500_000
        bar.waiting("s3://b/big/", None)  # an unreadable body leaves the line as it was
        assert bar._progress.tasks[0].completed == 1_500_000
    finally:
        bar.close()
    IndexProgress(False, "x").waiting("x", LockHolder("h:1:a", 1, 0))  # off: a no-op

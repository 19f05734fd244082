"""The lease log in a store and the leader election, against moto S3 and a folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.clock import FakeClock

from mx8_common.errors import (
    CoordinatorFencedError,
    LeaseLogError,
    StoreError,
    TransientStorageError,
)
from mx8_common.store import ManifestStore
from mx8_common.store.fs import FsManifestStore
from mx8_common.store.s3 import S3ManifestStore
from mx8_coordinator.state.leader import LeaderElection
from mx8_coordinator.state.lease_log import LeaseLogHeader
from mx8_coordinator.state.lease_records import IssueRecord, ProgressRecord, RankRecord
from mx8_coordinator.state.store_log import (
    Segment,
    StoreLeaseLog,
    read_store_log_manifest_hash,
)

pytestmark = pytest.mark.timeout(60)

HEADER = LeaseLogHeader(
    job_id="j", manifest_hash="ab" * 32, total=100, block_size=10, shuffle=False, seed=0, epochs=1
)


@pytest.fixture(params=["s3", "folder"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[ManifestStore]:
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        async with S3ManifestStore(f"s3://{bucket}/state") as s:
            yield s
    else:
        async with FsManifestStore(tmp_path / "state") as s:
            yield s


def election(store: ManifestStore, name: str, clock: FakeClock, ttl_ms: int = 1000) -> Any:
    return LeaderElection(store, "j", holder=name, address=f"{name}:1", ttl_ms=ttl_ms, clock=clock)


async def take_over(store: ManifestStore, name: str, clock: FakeClock) -> Any:
    """A standby ``name`` that claims the next term once the TTL passed on ``clock``."""
    e = election(store, name, clock)
    claim = asyncio.create_task(e.claim(standby=True))
    async with asyncio.timeout(10):
        while not claim.done():
            await asyncio.sleep(0.005)
            clock.advance(100)
    await claim
    await e.renew()  # the fake clock ran on while the claim's writes were in flight
    return e


def issue(seq: int, start: int, end: int) -> IssueRecord:
    return IssueRecord(lease_id=f"x-L{seq}", seq=seq, node_id="n", epoch=0, start=start, end=end)


async def test_store_list_objects_names_direct_children_sorted(store: ManifestStore) -> None:
    assert await store.list_objects("a") == []
    assert await store.create_object("a/2", b"x")
    assert await store.create_object("a/1", b"y")
    assert not await store.create_object("a/1", b"z")  # conditional create
    assert await store.create_object("a/b/3", b"")
    assert await store.list_objects("a") == ["1", "2"]
    assert await store.read_object("a/1") == b"y"


async def test_leader_first_claim_takes_term_one_without_waiting(store: ManifestStore) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    assert await a.claim(standby=False) == 1
    assert a.valid()
    rec = await a.read_record()
    assert rec is not None and rec.term == 1 and rec.holder == "a"
    clock.advance(a.valid_window_ms)
    assert not a.valid()  # no renewal: stops leasing before a standby's TTL runs out
    await a.renew()
    assert a.valid()


async def test_leader_standby_takes_next_term_only_after_ttl_without_renewal(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    b = election(store, "b", clock)
    claim = asyncio.create_task(b.claim(standby=True))
    for _ in range(30):  # a keeps renewing: b keeps waiting
        await asyncio.sleep(0.01)
        clock.advance(100)
        await a.renew()
    assert not claim.done()
    while not claim.done():  # a stopped: after one TTL b takes term 2
        await asyncio.sleep(0.01)
        clock.advance(100)
    assert claim.result() == 2
    assert b.previous is not None and b.previous.holder == "a"
    with pytest.raises(CoordinatorFencedError, match="another coordinator owns job 'j'"):
        await a.renew()
    assert not a.valid()


async def test_leader_without_standby_refuses_while_the_record_is_renewed(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    b = election(store, "b", clock)
    claim = asyncio.create_task(b.claim(standby=False))
    await asyncio.sleep(0.05)
    await a.renew()
    with pytest.raises(CoordinatorFencedError, match=r"since .*--standby"):
        async with asyncio.timeout(10):
            while not claim.done():
                await asyncio.sleep(0.01)
                clock.advance(10)
            await claim


async def test_store_log_appends_replays_and_batches_into_segments(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, state = await StoreLeaseLog.open(store, a, HEADER, flush_ms=50)
    synced: list[float] = []
    log.on_sync = synced.append
    assert state.empty and state.incarnation
    await log.append([RankRecord(node_id="n", rank=0)])
    # Concurrent appends share one segment (one PUT), each answered once durable.
    before = log.segments_written
    await asyncio.gather(
        log.append([issue(1, 0, 10)]),
        log.append([issue(2, 10, 20)]),
        log.append([ProgressRecord(lease_id="x-L1", cursor=10)]),
    )
    assert log.segments_written == before + 1
    # Each segment write timed once (the coordinator's lease_log_sync histogram).
    assert len(synced) == 2 and all(s > 0 for s in synced)
    await log.close()
    assert await read_store_log_manifest_hash(store, "j") == HEADER.manifest_hash

    # The next term replays every record and keeps the incarnation.
    b = await take_over(store, "b", clock)
    assert b.term == 2
    log2, state2 = await StoreLeaseLog.open(store, b, HEADER)
    assert state2.incarnation == state.incarnation
    assert state2.ranks == {"n": 0}
    assert {le.lease_id: (le.cursor, le.state) for le in state2.leases} == {
        "x-L1": (10, "done"),
        "x-L2": (10, "live"),
    }
    await log2.close()


async def test_store_log_deposed_leader_write_conflicts_and_is_fenced(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log_a, _ = await StoreLeaseLog.open(store, a, HEADER, flush_ms=1)
    await log_a.append([issue(1, 0, 10)])
    # a stalls past the TTL (as under SIGSTOP); b takes over and writes its first segment.
    b = await take_over(store, "b", clock)
    log_b, state_b = await StoreLeaseLog.open(store, b, HEADER, flush_ms=1)
    assert [le.lease_id for le in state_b.leases] == ["x-L1"]
    # a wakes with a renewal that raced the takeover: it believes it may write, but the
    # segment number it needs is taken by the newer term.
    a._valid_until_ms = clock.now + 1000  # the race, made certain
    with pytest.raises(CoordinatorFencedError, match=r"term 1.*deposed"):
        await log_a.append([issue(2, 10, 20)])
    assert log_a.fenced is not None and log_a.deposed.is_set()
    with pytest.raises(CoordinatorFencedError):
        await log_a.append([issue(3, 20, 30)])  # and every later one, without a write
    await log_b.append([issue(2, 10, 20)])
    await log_b.close()
    await log_a.close()
    c = await take_over(store, "c", clock)
    _, state_c = await StoreLeaseLog.open(store, c, HEADER)
    assert [le.lease_id for le in state_c.leases] == ["x-L1", "x-L2"]  # no x-L3


async def test_store_log_refuses_appends_once_the_term_is_not_renewed(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER, flush_ms=1)
    clock.advance(a.valid_window_ms)
    with pytest.raises(LeaseLogError, match="hands out no lease"):
        await log.append([issue(1, 0, 10)])
    await log.close()


async def test_store_log_new_term_compacts_into_a_snapshot_segment(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER, flush_ms=0)
    await log.append([issue(1, 0, 10)])
    for cursor in range(1, 11):
        await log.append([ProgressRecord(lease_id="x-L1", cursor=cursor)])
    await log.close()
    b = await take_over(store, "b", clock)
    log_b, state = await StoreLeaseLog.open(store, b, HEADER, compact_after=4)
    assert log_b.compacted_from == 11
    assert await store.list_objects("j/snapshots") == [f"{13:012d}"]
    data = await store.read_object(f"j/log/{13:012d}")
    assert data is not None
    snap = Segment.from_bytes(data, "snap")
    assert snap.kind == "snapshot" and len(snap.records) == 2  # issue + last progress
    await log_b.append([issue(2, 10, 20)])
    await log_b.close()
    c = await take_over(store, "c", clock)
    _, again = await StoreLeaseLog.open(store, c, HEADER)
    assert [(le.lease_id, le.cursor) for le in again.leases] == [
        ("x-L1", 10),
        ("x-L2", 10),
    ]
    assert [le.state for le in state.leases] == ["done"]
    # Nothing was deleted: a reader holding an older listing still finds every segment.
    assert len(await store.list_objects("j/log")) == 16


async def test_store_log_refuses_another_job_setup(store: ManifestStore) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER)
    await log.close()
    other = LeaseLogHeader(**{**HEADER.__dict__, "total": 99})
    with pytest.raises(LeaseLogError, match="another job setup"):
        await StoreLeaseLog.open(store, a, other)


async def test_leader_released_record_lets_a_standby_take_over_without_waiting(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    await a.release()
    assert not a.valid()
    b = election(store, "b", clock)  # the clock never moves: no TTL is waited out
    assert await asyncio.wait_for(b.claim(standby=True), 10) == 2
    assert b.previous is not None and b.previous.released


async def test_store_log_failed_segment_lands_before_any_later_one(
    store: ManifestStore, tmp_path: Path
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER, flush_ms=0)
    real_create = store.create_object
    failures = 2
    lapse = False

    async def flaky_create(rel: str, data: bytes) -> bool:
        nonlocal failures
        if failures:
            failures -= 1
            if lapse:
                clock.advance(a.valid_window_ms)  # the term lapses while the write fails
            raise StoreError("store away")
        return await real_create(rel, data)

    store.create_object = flaky_create  # type: ignore[method-assign]
    await log.append([issue(1, 0, 10)])  # retried while the term is valid
    assert failures == 0
    failures, lapse = 1, True
    with pytest.raises(LeaseLogError, match=r"store away"):
        await log.append([issue(2, 10, 20)])
    with pytest.raises(LeaseLogError, match="hands out no lease"):
        await log.append([issue(3, 20, 30)])  # refused up front, nothing made
    await a.renew()
    await log.append([issue(4, 30, 40)])  # lands the kept segment first, then this one
    await log.close()
    b = await take_over(store, "b", clock)
    _, state = await StoreLeaseLog.open(store, b, HEADER)
    assert [le.lease_id for le in state.leases] == ["x-L1", "x-L2", "x-L4"]


async def test_store_log_group_commit_appends_during_a_write_share_the_next_segment(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER)  # no gather window
    before = log.segments_written
    first = asyncio.create_task(log.append([issue(1, 0, 10)]))
    await asyncio.sleep(0)
    while log._pending:  # the writer took it: its segment write is in flight
        await asyncio.sleep(0)
    assert not first.done()
    await asyncio.gather(*(log.append([issue(i, 10 * i, 10 * i + 10)]) for i in range(2, 8)))
    await first
    assert log.segments_written - before == 2  # 7 appends, 2 PUTs
    await log.close()


async def test_leader_restart_without_standby_takes_over_a_stale_record_after_the_ttl(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)  # then killed: its record is never renewed again
    b = election(store, "b", clock)
    claim = asyncio.create_task(b.claim(standby=False))
    waited = 0
    async with asyncio.timeout(10):
        while not claim.done():
            await asyncio.sleep(0.005)
            clock.advance(50)
            waited += 50
    assert await claim == 2 and waited >= b.ttl_ms


async def test_store_log_long_term_writes_snapshots_so_replay_reads_few_segments(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    log, _ = await StoreLeaseLog.open(store, a, HEADER, compact_after=5)
    await log.append([issue(1, 0, 50)])
    for cursor in range(1, 13):
        await log.append([ProgressRecord(lease_id="x-L1", cursor=cursor)])
    await log.close()
    hints = await store.list_objects("j/snapshots")
    assert len(hints) == 2  # every 5th segment of the term is a snapshot
    last_snapshot = await store.read_object(f"j/log/{hints[-1]}")
    assert last_snapshot is not None
    assert Segment.from_bytes(last_snapshot, "s").kind == "snapshot"
    b = await take_over(store, "b", clock)
    _, state = await StoreLeaseLog.open(store, b, HEADER, compact_after=5)
    assert [(le.lease_id, le.cursor) for le in state.leases] == [("x-L1", 12)]


async def test_leader_standby_survives_a_store_blip_and_restarts_its_wait(
    store: ManifestStore,
) -> None:
    clock = FakeClock()
    a = election(store, "a", clock)
    await a.claim(standby=False)
    b = election(store, "b", clock)
    real_list = store.list_objects
    blips = 3

    async def flaky_list(folder: str) -> list[str]:
        nonlocal blips
        if blips:
            blips -= 1
            raise TransientStorageError("cannot connect to the S3 endpoint")
        return await real_list(folder)

    store.list_objects = flaky_list  # type: ignore[method-assign]
    claim = asyncio.create_task(b.claim(standby=True))
    async with asyncio.timeout(10):
        while blips:
            await asyncio.sleep(0.005)
            clock.advance(b.ttl_ms)  # unseen time never counts toward the TTL
        assert not claim.done()
        assert "cannot connect" in b.last_error
        while not claim.done():
            await asyncio.sleep(0.005)
            clock.advance(100)
    assert await claim == 2

"""LeaseLog: header check, fsync'd appends in order, torn tails, replay, compaction on open."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mx8_common.errors import LeaseLogError
from mx8_coordinator.state.lease_log import (
    LeaseLog,
    LeaseLogHeader,
    compact_records,
    lease_log_path,
    read_log_manifest_hash,
    replay_records,
)

HEADER = LeaseLogHeader(
    job_id="j", manifest_hash="ab" * 32, total=100, block_size=10, shuffle=True, seed=1, epochs=2
)


async def test_lease_log_appends_and_replays(tmp_path: Path) -> None:
    path = lease_log_path(tmp_path, "job/1")
    assert path.name == "job_1.lease-log.jsonl"
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    assert state.empty
    await log.append(
        [
            {"ev": "rank", "node": "a", "rank": 0},
            {"ev": "deal", "epoch": 0, "world": 1},
            {
                "ev": "issue",
                "lease": "L1",
                "seq": 1,
                "node": "a",
                "epoch": 0,
                "start": 0,
                "end": 10,
            },
            {
                "ev": "issue",
                "lease": "L2",
                "seq": 2,
                "node": "a",
                "epoch": 0,
                "start": 10,
                "end": 20,
            },
            {
                "ev": "issue",
                "lease": "L3",
                "seq": 3,
                "node": "a",
                "epoch": 0,
                "start": 20,
                "end": 30,
            },
        ]
    )
    await asyncio.gather(
        log.append([{"ev": "progress", "lease": "L1", "cursor": 10}]),
        log.append([{"ev": "progress", "lease": "L2", "cursor": 15}]),
        log.append([{"ev": "progress", "lease": "L3", "cursor": 22}]),
    )
    await log.append([{"ev": "expire", "lease": "L3"}])
    await log.close()
    await log.close()
    assert read_log_manifest_hash(path) == HEADER.manifest_hash

    log2, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log2.close()
    assert state.ranks == {"a": 0} and state.dealt == {0: 1} and state.next_seq == 3
    by_id = {le.lease_id: (le.cursor, le.state) for le in state.leases}
    assert by_id == {"L1": (10, "done"), "L2": (15, "live"), "L3": (22, "expired")}


async def test_lease_log_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    log, _ = await asyncio.to_thread(LeaseLog.open, tmp_path / "l.jsonl", HEADER)
    await log.append(
        [{"ev": "issue", "lease": "L1", "seq": 1, "node": "a", "epoch": 0, "start": 0, "end": 100}]
    )
    await asyncio.gather(
        *(log.append([{"ev": "progress", "lease": "L1", "cursor": c}]) for c in range(1, 101))
    )
    await log.close()
    lines = (tmp_path / "l.jsonl").read_bytes().splitlines()
    cursors = [json.loads(x)["cursor"] for x in lines[2:]]
    assert cursors == list(range(1, 101))  # the order the appends were made in
    assert log.fsyncs < 101  # group commit: fewer fsyncs than appends


async def test_lease_log_cuts_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([{"ev": "rank", "node": "a", "rank": 0}])
    await log.close()
    intact = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"ev":"deal","epo')
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    assert state.records == 1 and path.stat().st_size == intact
    await log.append([{"ev": "deal", "epoch": 0, "world": 1}])
    await log.close()
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert state.dealt == {0: 1}


async def test_lease_log_refuses_other_job_setup(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    other = LeaseLogHeader(**{**HEADER.__dict__, "seed": 2})
    with pytest.raises(LeaseLogError, match=r"another job setup .*'seed': \(1, 2\)"):
        LeaseLog.open(path, other)


async def test_lease_log_refuses_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(LeaseLogError, match="damaged line"):
        LeaseLog.open(path, HEADER)
    path.write_bytes(path.read_bytes().replace(b"garbage", b'{"ev":"progress","lease":"L9"}'))
    with pytest.raises(LeaseLogError, match="line 2 is not a record"):
        LeaseLog.open(path, HEADER)


async def test_lease_log_compacts_superseded_progress_on_open(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    issue = {"ev": "issue", "node": "a", "epoch": 0}
    await log.append(
        [
            {"ev": "rank", "node": "a", "rank": 0},
            {"ev": "deal", "epoch": 0, "world": 1},
            {**issue, "lease": "L1", "seq": 1, "start": 0, "end": 10},
            {**issue, "lease": "L2", "seq": 2, "start": 10, "end": 20},
        ]
    )
    for cursor in range(1, 11):  # L1 to its end: done
        await log.append([{"ev": "progress", "lease": "L1", "cursor": cursor}])
    for cursor in (12, 14, 16):  # L2 part way, then expired
        await log.append([{"ev": "progress", "lease": "L2", "cursor": cursor}])
    await log.append([{"ev": "expire", "lease": "L2"}])
    await log.append([{**issue, "lease": "L3", "seq": 3, "start": 16, "end": 20}])
    await log.append([{"ev": "progress", "lease": "L3", "cursor": 18}])
    await log.close()
    before = path.read_bytes()
    uncompacted = replay_records(iter(json.loads(x) for x in before.splitlines()[1:]))

    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    assert log.compacted_from == 20 and state == uncompacted
    lines = path.read_bytes().splitlines()
    assert lines[0] == before.splitlines()[0]  # the header, unchanged
    progress = [json.loads(x) for x in lines[1:] if b'"progress"' in x]
    assert progress == [
        {"ev": "progress", "lease": "L1", "cursor": 10},
        {"ev": "progress", "lease": "L2", "cursor": 16},
        {"ev": "progress", "lease": "L3", "cursor": 18},
    ]
    assert not list(tmp_path.glob("*.tmp"))
    # Appends continue on the compacted copy, and the next open replays both.
    await log.append([{"ev": "progress", "lease": "L3", "cursor": 20}])
    await log.close()
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    by_id = {le.lease_id: (le.cursor, le.state) for le in state.leases}
    assert by_id == {"L1": (10, "done"), "L2": (16, "expired"), "L3": (20, "done")}
    assert state.ranks == {"a": 0} and state.dealt == {0: 1} and state.next_seq == 3


async def test_lease_log_open_leaves_a_compact_log_alone(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([{"ev": "rank", "node": "a", "rank": 0}])
    await log.close()
    inode = path.stat().st_ino
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert log.compacted_from == 0 and state.ranks == {"a": 0}
    assert path.stat().st_ino == inode  # not rewritten


def test_compact_records_keeps_only_each_leases_last_progress() -> None:
    records = [
        {"ev": "issue", "lease": "L1"},
        {"ev": "progress", "lease": "L1", "cursor": 1},
        {"ev": "issue", "lease": "L2"},
        {"ev": "progress", "lease": "L2", "cursor": 5},
        {"ev": "progress", "lease": "L1", "cursor": 2},
        {"ev": "expire", "lease": "L2"},
    ]
    assert compact_records(records) == [records[0], records[2], records[3], records[4], records[5]]
    assert compact_records([]) == []

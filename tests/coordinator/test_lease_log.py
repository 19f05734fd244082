"""LeaseLog: header check, fsync'd appends in order, write failures, torn tails, replay,
compaction on open, and the typed records' JSON-line form (the same bytes logs have always
held)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mx8_common.errors import LeaseLogError
from mx8_coordinator.state import lease_log
from mx8_coordinator.state.lease_log import (
    LeaseLog,
    LeaseLogHeader,
    LeaseLogState,
    compact_records,
    lease_log_path,
    read_log_manifest_hash,
    replay_records,
)
from mx8_coordinator.state.lease_records import (
    DealRecord,
    ExpireRecord,
    IssueRecord,
    LeaseRecord,
    ProgressRecord,
    RankRecord,
    decode_record,
)

HEADER = LeaseLogHeader(
    job_id="j", manifest_hash="ab" * 32, total=100, block_size=10, shuffle=True, seed=1, epochs=2
)


def _issue(lease_id: str, start: int, end: int, *, node: str = "a", epoch: int = 0) -> IssueRecord:
    seq = int(lease_id[1:])
    return IssueRecord(lease_id=lease_id, seq=seq, node_id=node, epoch=epoch, start=start, end=end)


async def test_lease_log_appends_and_replays(tmp_path: Path) -> None:
    path = lease_log_path(tmp_path, "job/1")
    assert path.name == "job_1.lease-log.jsonl"
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    assert state.empty
    await log.append(
        [
            RankRecord(node_id="a", rank=0),
            DealRecord(epoch=0, world_size=1),
            _issue("L1", 0, 10),
            _issue("L2", 10, 20),
            _issue("L3", 20, 30),
        ]
    )
    await asyncio.gather(
        log.append([ProgressRecord(lease_id="L1", cursor=10)]),
        log.append([ProgressRecord(lease_id="L2", cursor=15)]),
        log.append([ProgressRecord(lease_id="L3", cursor=22)]),
    )
    await log.append([ExpireRecord(lease_id="L3")])
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
    await log.append([_issue("L1", 0, 100)])
    await asyncio.gather(
        *(log.append([ProgressRecord(lease_id="L1", cursor=c)]) for c in range(1, 101))
    )
    await log.close()
    lines = (tmp_path / "l.jsonl").read_bytes().splitlines()
    cursors = [json.loads(x)["cursor"] for x in lines[2:]]
    assert cursors == list(range(1, 101))  # the order the appends were made in
    assert log.fsyncs < 101  # group commit: fewer fsyncs than appends


async def test_lease_log_times_each_sync_and_warns_once_while_the_disk_stalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    synced: list[float] = []
    log.on_sync = synced.append
    await log.append([_issue("L1", 0, 100)])  # a fast disk: timed, no warning
    real_sync = os.fdatasync

    def stalling_sync(fd: int) -> None:  # the disk holds each sync past SLOW_SYNC_S
        time.sleep(lease_log.SLOW_SYNC_S + 0.02)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", stalling_sync)  # the os module the log calls
    with capture_logs() as logs:
        for cursor in (10, 20, 30):
            await log.append([ProgressRecord(lease_id="L1", cursor=cursor)])
        await log.close()
    assert len(synced) == 4 and synced[0] < lease_log.SLOW_SYNC_S
    assert all(s > lease_log.SLOW_SYNC_S for s in synced[1:])
    warned = [
        e for e in logs if e["event"] == "lease_log_sync_slow" and e["log_level"] == "warning"
    ]
    assert len(warned) == 1  # one line for the stall: the next syncs within 30 s are folded
    first = warned[0]
    assert first["path"] == str(path) and first["seconds"] > lease_log.SLOW_SYNC_S
    assert first["answers_waiting"] == 1 and "--state-dir" in first["fix"]
    assert len(path.read_bytes().splitlines()) == 5  # every append is on disk all the same


async def test_lease_log_failed_write_fails_its_appends_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([_issue("L1", 0, 10)])
    # The disk refuses writes from now on (a descriptor that cannot write: EBADF).
    log._file.close()
    log._file = open(path, "rb")  # noqa: SIM115 (closed by log.close)
    results = await asyncio.gather(
        log.append([ProgressRecord(lease_id="L1", cursor=5)]),
        log.append([ProgressRecord(lease_id="L1", cursor=6)]),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, LeaseLogError)
        assert str(result).startswith(f"cannot write lease log {path}: ")
        assert str(result).endswith("check the disk of --state-dir")
        assert "\n" not in str(result)
    await log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2  # the header and the issue: nothing acknowledged, nothing half-written


async def test_lease_log_cuts_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([RankRecord(node_id="a", rank=0)])
    await log.close()
    intact = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"ev":"deal","epo')
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    assert state.records == 1 and path.stat().st_size == intact
    await log.append([DealRecord(epoch=0, world_size=1)])
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
    await log.append(
        [
            RankRecord(node_id="a", rank=0),
            DealRecord(epoch=0, world_size=1),
            _issue("L1", 0, 10),
            _issue("L2", 10, 20),
        ]
    )
    for cursor in range(1, 11):  # L1 to its end: done
        await log.append([ProgressRecord(lease_id="L1", cursor=cursor)])
    for cursor in (12, 14, 16):  # L2 part way, then expired
        await log.append([ProgressRecord(lease_id="L2", cursor=cursor)])
    await log.append([ExpireRecord(lease_id="L2")])
    await log.append([_issue("L3", 16, 20)])
    await log.append([ProgressRecord(lease_id="L3", cursor=18)])
    await log.close()
    before = path.read_bytes()
    uncompacted = replay_records(decode_record(json.loads(x)) for x in before.splitlines()[1:])

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
    await log.append([ProgressRecord(lease_id="L3", cursor=20)])
    await log.close()
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    by_id = {le.lease_id: (le.cursor, le.state) for le in state.leases}
    assert by_id == {"L1": (10, "done"), "L2": (16, "expired"), "L3": (20, "done")}
    assert state.ranks == {"a": 0} and state.dealt == {0: 1} and state.next_seq == 3


async def test_lease_log_open_leaves_a_compact_log_alone(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([RankRecord(node_id="a", rank=0)])
    await log.close()
    inode = path.stat().st_ino
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert log.compacted_from == 0 and state.ranks == {"a": 0}
    assert path.stat().st_ino == inode  # not rewritten


def test_compact_records_keeps_only_each_leases_last_progress() -> None:
    records = [
        _issue("L1", 0, 10),
        ProgressRecord(lease_id="L1", cursor=1),
        _issue("L2", 10, 20),
        ProgressRecord(lease_id="L2", cursor=15),
        ProgressRecord(lease_id="L1", cursor=2),
        ExpireRecord(lease_id="L2"),
    ]
    assert compact_records(records) == [records[0], records[2], records[3], records[4], records[5]]
    assert compact_records([]) == []


# A log as the coordinator has always written it (header, then compact JSON lines).
_OLD_LOG = (
    b'{"block_size": 10, "epochs": 2, "job_id": "j", "manifest_hash": "'
    + b"ab" * 32
    + b'", "mx8_lease_log": 1, "seed": 1, "shuffle": true, "total": 100}\n'
    b'{"ev":"rank","node":"a","rank":0}\n'
    b'{"ev":"rank","node":"b","rank":1}\n'
    b'{"ev":"deal","epoch":0,"world":2}\n'
    b'{"ev":"issue","lease":"L1","seq":1,"node":"a","epoch":0,"start":0,"end":10}\n'
    b'{"ev":"issue","lease":"L2","seq":2,"node":"b","epoch":0,"start":10,"end":20}\n'
    b'{"ev":"progress","lease":"L1","cursor":10}\n'
    b'{"ev":"progress","lease":"L2","cursor":13}\n'
    b'{"ev":"expire","lease":"L2"}\n'
    b'{"ev":"issue","lease":"L3","seq":3,"node":"a","epoch":0,"start":13,"end":20}\n'
)


async def test_lease_log_replays_a_log_written_before_records_were_typed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.jsonl"
    path.write_bytes(_OLD_LOG)
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert log.compacted_from == 0 and path.read_bytes() == _OLD_LOG
    assert state.ranks == {"a": 0, "b": 1} and state.dealt == {0: 2} and state.next_seq == 3
    by_id = {le.lease_id: (le.node_id, le.cursor, le.state) for le in state.leases}
    assert by_id == {"L1": ("a", 10, "done"), "L2": ("b", 13, "expired"), "L3": ("a", 13, "live")}

    # The typed records of that history are written as the very same bytes.
    fresh = tmp_path / "new.jsonl"
    log, _ = await asyncio.to_thread(LeaseLog.open, fresh, HEADER)
    await log.append([decode_record(json.loads(x)) for x in _OLD_LOG.splitlines()[1:]])
    await log.close()
    header, records = fresh.read_bytes().split(b"\n", 1)
    old_header, old_records = _OLD_LOG.split(b"\n", 1)
    assert records == old_records
    # The header only gained the job incarnation.
    assert len(json.loads(header)["incarnation"]) == 8
    assert {k: v for k, v in json.loads(header).items() if k != "incarnation"} == json.loads(
        old_header
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"ev":"rank","node":"a","rank":"0"}', "line 2 is not a record"),
        (b'{"ev":"teleport"}', "line 2 is not a record"),
        (b"[1]", "line 2 is not a record"),
        (b'{"ev":"progress","lease":"L9","cursor":3}', "line 2 names lease 'L9'"),
    ],
)
def test_lease_log_refuses_lines_that_are_no_record(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(_OLD_LOG.splitlines(keepends=True)[0] + line + b"\n")
    with pytest.raises(LeaseLogError, match=problem):
        LeaseLog.open(path, HEADER)


@st.composite
def _histories(draw: st.DrawFn) -> list[LeaseRecord]:
    """A history the job could have logged: ranks, a deal, then leases issued, advanced,
    completed or expired in any interleaving."""
    nodes = draw(st.integers(min_value=1, max_value=3))
    out: list[LeaseRecord] = [RankRecord(node_id=f"n{i}", rank=i) for i in range(nodes)]
    out.append(DealRecord(epoch=0, world_size=nodes))
    live: dict[str, tuple[int, int]] = {}  # lease -> (cursor, end)
    seq = 0
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        op = draw(st.sampled_from(["issue", "progress", "progress", "expire"]))
        if op == "issue" or not live:
            seq += 1
            start = draw(st.integers(min_value=0, max_value=1000))
            end = start + draw(st.integers(min_value=1, max_value=20))
            node = f"n{draw(st.integers(min_value=0, max_value=nodes - 1))}"
            out.append(_issue(f"L{seq}", start, end, node=node))
            live[f"L{seq}"] = (start, end)
            continue
        lease = draw(st.sampled_from(sorted(live)))
        cursor, end = live[lease]
        if op == "expire":
            out.append(ExpireRecord(lease_id=lease))
            del live[lease]
            continue
        cursor = draw(st.integers(min_value=cursor + 1, max_value=end))
        out.append(ProgressRecord(lease_id=lease, cursor=cursor))
        if cursor == end:
            del live[lease]
        else:
            live[lease] = (cursor, end)
    return out


@settings(max_examples=60, deadline=None)
@given(_histories())
def test_lease_log_compaction_keeps_what_a_replay_sees(history: list[LeaseRecord]) -> None:
    compacted = compact_records(history)
    # Only superseded progress lines go; the state a replay builds is the same.
    assert [r for r in history if not isinstance(r, ProgressRecord)] == [
        r for r in compacted if not isinstance(r, ProgressRecord)
    ]
    assert replace(replay_records(compacted), records=0) == replace(
        replay_records(history), records=0
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories(), st.integers(min_value=1, max_value=7))
def test_lease_log_file_round_trip_replays_the_appended_history(
    history: list[LeaseRecord], batch: int
) -> None:
    async def write_and_reopen(path: Path) -> tuple[LeaseLogState, LeaseLogState]:
        log, _ = await asyncio.to_thread(LeaseLog.open, path, HEADER)
        for i in range(0, len(history), batch):
            await log.append(history[i : i + batch])
        await log.close()
        log, first = await asyncio.to_thread(LeaseLog.open, path, HEADER)  # may compact
        await log.close()
        log, second = await asyncio.to_thread(LeaseLog.open, path, HEADER)
        await log.close()
        return first, second

    with tempfile.TemporaryDirectory() as tmp:
        first, second = asyncio.run(write_and_reopen(Path(tmp) / "l.jsonl"))
    expected = replay_records(history)
    assert first == expected
    # The second open reads the compacted copy: fewer lines, the same state.
    assert replace(second, records=0) == replace(expected, records=0)


async def test_lease_log_keeps_its_job_incarnation_across_reopen_and_compaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.jsonl"
    log, first = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.append([_issue("L1", 0, 10)])
    await log.append([ProgressRecord(lease_id="L1", cursor=c) for c in (3, 6)])
    await log.close()
    assert len(first.incarnation) == 8
    # The header holds it, and a reopen (which compacts the progress lines here) keeps it.
    assert json.loads(path.read_text().splitlines()[0])["incarnation"] == first.incarnation
    log, again = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert log.compacted_from == 3 and again.incarnation == first.incarnation
    log, third = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert third.incarnation == first.incarnation
    # Another log (a coordinator started without this one) is another incarnation.
    log, other = await asyncio.to_thread(LeaseLog.open, tmp_path / "other.jsonl", HEADER)
    await log.close()
    assert other.incarnation != first.incarnation


async def test_lease_log_written_before_incarnations_gets_a_stable_one(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(HEADER.to_json(), sort_keys=True) + "\n")
    log, state = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    log, again = await asyncio.to_thread(LeaseLog.open, path, HEADER)
    await log.close()
    assert state.incarnation and again.incarnation == state.incarnation

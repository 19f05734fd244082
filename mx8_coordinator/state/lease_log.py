"""The coordinator's lease log: append-only, fsync'd JSON lines, replayed on restart.

    {"mx8_lease_log": 1, "manifest_hash": ..., "total": ..., "block_size": ..., ...}  header
    then one typed record per line (``lease_records``: rank, deal, issue, progress, expire)

The header also holds the job's incarnation: a random id made when the log is created
and kept by every reopen (``LeaseLogState.incarnation``). Agents compare it across
re-registrations: a coordinator restarted without its log has a new one, so they know
the job's progress is gone instead of taking its leases again (logs written before it
existed get one derived from their header line, stable across reopens).

The header names the manifest hash and every setting that positions depend on, so a log
is never replayed against another snapshot or order. A write is acknowledged only after
``fdatasync`` (enough for appends: it also flushes the file size); concurrent appends
share one sync (group commit) in a single writer thread, so the event loop never blocks
on the disk and lines stay in the order the job produced them. A torn last line (crash
mid-write, never acknowledged) is cut off on open.

Opening an existing log compacts it when that drops anything: only the last ``progress``
line of each lease matters to a replay (cursors only move forward), so the earlier ones
are left out of a rewritten copy (temp file, fsync, rename, directory fsync) and appends
continue on the copy. A crash mid-compaction leaves the original log in place.

Every lease and progress answer waits for its sync, so the disk's sync latency is the
coordinator's: each sync's seconds go to ``on_sync`` (the coordinator's
``mx8_coordinator_lease_log_sync_seconds``), and one slower than ``SLOW_SYNC_S`` is a
warning, ``lease_log_sync_slow`` (at most one per ``_SLOW_EVERY_S``, with how many were
folded into it), naming the path and the fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mx8_common.errors import LeaseLogError
from mx8_common.obs.events import Throttled
from mx8_coordinator.state.lease_records import (
    DealRecord,
    ExpireRecord,
    IssueRecord,
    LeaseRecord,
    ProgressRecord,
    RankRecord,
    decode_record,
    encode_record,
)
from mx8_coordinator.state.lease_scheduler import RestoredLease

__all__ = [
    "LeaseLog",
    "LeaseLogHeader",
    "LeaseLogState",
    "compact_records",
    "lease_log_path",
    "new_incarnation",
    "read_log_manifest_hash",
    "replay_records",
]

_FORMAT = 1
#: A sync slower than this holds every answer behind it past what agents expect of a
#: coordinator (milliseconds): warned about as ``lease_log_sync_slow``.
SLOW_SYNC_S = 0.1
#: Seconds between two ``lease_log_sync_slow`` warnings (a stalling disk stalls often).
_SLOW_EVERY_S = 30.0
#: The header key of the job incarnation (not a setting: never compared on open).
_INCARNATION_KEY = "incarnation"


def new_incarnation() -> str:
    """A fresh job incarnation id (8 hex digits: short enough to prefix lease ids)."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class LeaseLogHeader:
    """What a lease log belongs to: positions only mean something for these values."""

    job_id: str
    manifest_hash: str
    total: int
    block_size: int
    shuffle: bool
    seed: int
    epochs: int

    def to_json(self) -> dict[str, Any]:
        return {"mx8_lease_log": _FORMAT, **asdict(self)}

    def line(self, incarnation: str) -> bytes:
        """The header line of a log of this job incarnation."""
        obj = {**self.to_json(), _INCARNATION_KEY: incarnation}
        return json.dumps(obj, sort_keys=True).encode() + b"\n"


@dataclass
class LeaseLogState:
    """What replaying a log yields, ready for ``NodeRegistry.restore`` / ``LeaseScheduler``."""

    ranks: dict[str, int] = field(default_factory=dict)
    dealt: dict[int, int] = field(default_factory=dict)
    leases: list[RestoredLease] = field(default_factory=list)
    next_seq: int = 0
    records: int = 0
    #: The job incarnation the log's header holds ("" before a log is opened).
    incarnation: str = field(default="", compare=False)

    @property
    def empty(self) -> bool:
        return self.records == 0


def lease_log_path(state_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<state_dir>/<job_id>.lease-log.jsonl`` (job id made file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)
    return Path(state_dir) / f"{safe}.lease-log.jsonl"


def read_log_manifest_hash(path: str | os.PathLike[str]) -> str | None:
    """The manifest hash a lease log's header names (None if there is no readable log)."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    value = header.get("manifest_hash") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


def replay_records(records: Iterable[LeaseRecord], path: str = "") -> LeaseLogState:
    """Fold log records (after the header) into the state they describe."""
    state = LeaseLogState()
    issued: dict[str, IssueRecord] = {}
    cursors: dict[str, int] = {}
    states: dict[str, Literal["live", "done", "expired"]] = {}
    for n, rec in enumerate(records, start=2):
        if isinstance(rec, ProgressRecord | ExpireRecord) and rec.lease_id not in issued:
            raise LeaseLogError(
                f"lease log {path} line {n} names lease {rec.lease_id!r}, which no earlier "
                "line issued; it is not a log this coordinator wrote: move the file away to "
                "start the job over",
                path=path,
            )
        match rec:
            case RankRecord():
                state.ranks[rec.node_id] = rec.rank
            case DealRecord():
                state.dealt[rec.epoch] = rec.world_size
            case IssueRecord():
                issued[rec.lease_id] = rec
                cursors[rec.lease_id] = rec.start
                states[rec.lease_id] = "live"
                state.next_seq = max(state.next_seq, rec.seq)
            case ProgressRecord():
                cursors[rec.lease_id] = rec.cursor
                if rec.cursor == issued[rec.lease_id].end:
                    states[rec.lease_id] = "done"
            case ExpireRecord():
                states[rec.lease_id] = "expired"
        state.records += 1
    state.leases = [
        RestoredLease(
            lease_id=lid,
            node_id=le.node_id,
            epoch=le.epoch,
            start=le.start,
            end=le.end,
            cursor=cursors[lid],
            state=states[lid],
        )
        for lid, le in issued.items()
    ]
    return state


def compact_records(records: Sequence[LeaseRecord]) -> list[LeaseRecord]:
    """``records`` without the ``progress`` lines a later one of the same lease supersedes.

    Replaying the result gives the same state: a lease's cursor is its last progress
    line's (cursors only move forward, so only the last can complete it), and every other
    line is kept in its order.
    """
    last: dict[str, int] = {}
    for i, rec in enumerate(records):
        if isinstance(rec, ProgressRecord):
            last[rec.lease_id] = i
    return [
        rec
        for i, rec in enumerate(records)
        if not isinstance(rec, ProgressRecord) or last[rec.lease_id] == i
    ]


def _encode(record: LeaseRecord) -> bytes:
    return json.dumps(encode_record(record), separators=(",", ":")).encode() + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LeaseLog:
    """An open lease log. Build with ``LeaseLog.open`` (blocking: call it off the loop)."""

    def __init__(self, path: Path, file: Any, *, compacted_from: int = 0) -> None:
        self.path = path
        self._file = file
        #: Records the log held before open compacted it (0 when it was not compacted).
        self.compacted_from = compacted_from
        # Appends hand bytes to one writer thread: a lock-guarded list and a condition,
        # answered with one call_soon_threadsafe per batch (an executor hop per append
        # cost more CPU than the sync itself at a few thousand appends/s).
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.fsyncs = 0
        #: Called on the writer thread with each write + sync's seconds (thread-safe only).
        self.on_sync: Callable[[float], None] | None = None
        self._slow = Throttled(_SLOW_EVERY_S)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], header: LeaseLogHeader
    ) -> tuple[LeaseLog, LeaseLogState]:
        """Open (creating with ``header``) the log at ``path`` and replay what it holds.

        Returns ``(log, LeaseLogState)``. A log whose header differs from ``header`` is
        refused: its positions belong to another snapshot or order.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = LeaseLogState()
        compacted_from = 0
        if path.exists() and path.stat().st_size > 0:
            records, incarnation = cls._read_existing(path, header)
            state = replay_records(iter(records), str(path))
            kept = compact_records(records)
            if len(kept) < len(records):
                cls._rewrite(path, header, incarnation, kept)
                compacted_from = len(records)
            state.incarnation = incarnation
        else:
            state.incarnation = new_incarnation()
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(header.line(state.incarnation))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        return cls(path, open(path, "ab"), compacted_from=compacted_from), state

    @staticmethod
    def _rewrite(
        path: Path, header: LeaseLogHeader, incarnation: str, records: Sequence[LeaseRecord]
    ) -> None:
        # The copy is complete and synced before it replaces the log, so a crash at any
        # point leaves either the old log or the whole new one.
        tmp = path.with_name(path.name + ".compact.tmp")
        with open(tmp, "wb") as f:
            f.write(header.line(incarnation))
            f.writelines(_encode(r) for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    @staticmethod
    def _read_existing(path: Path, header: LeaseLogHeader) -> tuple[list[LeaseRecord], str]:
        with open(path, "rb") as f:
            first = f.readline()
            try:
                found = json.loads(first)
            except ValueError as exc:
                raise LeaseLogError(
                    f"lease log {path} has no readable header; it is not an mx8 lease log "
                    "or is damaged: move it away to start the job over",
                    path=str(path),
                ) from exc
            found_incarnation = (
                found.pop(_INCARNATION_KEY, None) if isinstance(found, dict) else None
            )
            if not isinstance(found, dict) or found != header.to_json():
                got = found if isinstance(found, dict) else {}
                diff = {k: (got.get(k), v) for k, v in header.to_json().items() if got.get(k) != v}
                raise LeaseLogError(
                    f"lease log {path} belongs to another job setup (logged vs now: {diff}); "
                    "start with the same dataset snapshot and settings, or use another "
                    "--state-dir / --job-id to start over",
                    path=str(path),
                )
            if not isinstance(found_incarnation, str) or not found_incarnation:
                # A log from before incarnations: the same id on every reopen.
                found_incarnation = hashlib.sha256(first.strip()).hexdigest()[:8]
            good_end = f.tell()
            records: list[LeaseRecord] = []
            for n, line in enumerate(f, start=2):
                if not line.endswith(b"\n"):
                    break  # torn tail: never fsync'd, never acknowledged
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise LeaseLogError(
                        f"lease log {path} has a damaged line at byte {good_end}; move the "
                        "file away to start the job over",
                        path=str(path),
                    ) from exc
                try:
                    records.append(decode_record(obj))
                except ValueError as exc:
                    raise LeaseLogError(
                        f"lease log {path} line {n} is not a record this coordinator wrote "
                        f"({exc}); move the file away to start the job over",
                        path=str(path),
                    ) from None
                good_end += len(line)
        if good_end < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return records, found_incarnation

    def _write(self, data: bytes) -> float:
        """Write ``data`` and sync it; the seconds that took."""
        started = time.perf_counter()
        fd = self._file.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
        self.fsyncs += 1
        return time.perf_counter() - started

    def _timed(self, seconds: float, answers: int) -> None:
        """After the ``answers`` went: report one sync's time, warn when it was slow."""
        if self.on_sync is not None:
            self.on_sync(seconds)
        if seconds > SLOW_SYNC_S:
            self._slow.emit(
                "coordinator",
                "lease_log_sync_slow",
                seconds=round(seconds, 3),
                answers_waiting=answers,
                path=str(self.path),
                fix="every lease and progress answer waits for this sync: put --state-dir "
                "on a disk with fast fsync that checkpoints and other writers do not share",
            )

    def _run_writer(self) -> None:
        """The writer thread: take everything pending, write it, sync once, answer."""
        assert self._loop is not None
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                batch, self._pending = self._pending, []
            error: OSError | None = None
            seconds = 0.0
            try:
                seconds = self._write(b"".join(d for d, _ in batch))
            except OSError as exc:
                error = exc
            try:
                self._loop.call_soon_threadsafe(self._settle, batch, error)
            except RuntimeError:
                return  # the loop is closed: nobody waits for these answers any more
            if error is None:
                self._timed(seconds, len(batch))

    def _settle(
        self, batch: list[tuple[bytes, asyncio.Future[None]]], error: OSError | None
    ) -> None:
        err = None
        if error is not None:
            err = LeaseLogError(
                f"cannot write lease log {self.path}: {error}; check the disk of --state-dir",
                path=str(self.path),
            )
        for _, fut in batch:
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)

    async def append(self, records: Sequence[LeaseRecord]) -> None:
        """Append ``records`` and return once they are on disk."""
        if not records:
            return
        if self._closed:
            raise LeaseLogError(f"lease log {self.path} is closed", path=str(self.path))
        if self._writer is None:
            self._loop = asyncio.get_running_loop()
            self._writer = threading.Thread(
                target=self._run_writer, name="mx8-lease-log", daemon=True
            )
            self._writer.start()
        assert self._loop is not None
        data = b"".join(_encode(r) for r in records)
        done: asyncio.Future[None] = self._loop.create_future()
        with self._cond:  # held by the writer only to swap the list: never blocks the loop
            self._pending.append((data, done))
            self._cond.notify()
        await done

    async def close(self) -> None:
        """Wait for pending appends, then close the file. Safe to call twice."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
            await asyncio.sleep(0)  # let the last batch's answers run
        self._file.close()

"""The coordinator's lease log: append-only, fsync'd JSON lines, replayed on restart.

    {"mx8_lease_log": 1, "manifest_hash": ..., "total": ..., "block_size": ..., ...}  header
    {"ev": "rank", "node": "n1", "rank": 0}                       world freeze / late joiner
    {"ev": "deal", "epoch": 0, "world": 3}                        epoch dealt over 3 ranks
    {"ev": "issue", "lease": "L7", "seq": 7, "node": "n1", "epoch": 0, "start": 0, "end": 64}
    {"ev": "progress", "lease": "L7", "cursor": 32}               cursor == end completes it
    {"ev": "expire", "lease": "L7"}                               remainder was re-queued

The header names the manifest hash and every setting that positions depend on, so a log
is never replayed against another snapshot or order. A write is acknowledged only after
fsync; concurrent appends share one fsync (group commit) in a single writer thread, so
the event loop never blocks on the disk and lines stay in the order the job produced
them. A torn last line (crash mid-write, never acknowledged) is cut off on open.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mx8_common.errors import LeaseLogError
from mx8_coordinator.lease_scheduler import RestoredLease

__all__ = [
    "LeaseLog",
    "LeaseLogHeader",
    "LeaseLogState",
    "lease_log_path",
    "read_log_manifest_hash",
    "replay_records",
]

_FORMAT = 1


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


@dataclass
class LeaseLogState:
    """What replaying a log yields, ready for ``NodeRegistry.restore`` / ``LeaseScheduler``."""

    ranks: dict[str, int] = field(default_factory=dict)
    dealt: dict[int, int] = field(default_factory=dict)
    leases: list[RestoredLease] = field(default_factory=list)
    next_seq: int = 0
    records: int = 0

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


def replay_records(records: Iterator[dict[str, Any]], path: str = "") -> LeaseLogState:
    """Fold log records (after the header) into the state they describe."""
    state = LeaseLogState()
    leases: dict[str, dict[str, Any]] = {}
    for n, rec in enumerate(records, start=2):
        try:
            ev = rec["ev"]
            if ev == "rank":
                state.ranks[rec["node"]] = int(rec["rank"])
            elif ev == "deal":
                state.dealt[int(rec["epoch"])] = int(rec["world"])
            elif ev == "issue":
                leases[rec["lease"]] = {**rec, "cursor": int(rec["start"]), "state": "live"}
                state.next_seq = max(state.next_seq, int(rec["seq"]))
            elif ev == "progress":
                lease = leases[rec["lease"]]
                lease["cursor"] = int(rec["cursor"])
                if lease["cursor"] == int(lease["end"]):
                    lease["state"] = "done"
            elif ev == "expire":
                leases[rec["lease"]]["state"] = "expired"
            else:
                raise KeyError(ev)
        except (KeyError, TypeError, ValueError) as exc:
            raise LeaseLogError(
                f"lease log {path} line {n} is not a record this coordinator wrote "
                f"({exc!r}); move the file away to start the job over",
                path=path,
            ) from exc
        state.records += 1
    state.leases = [
        RestoredLease(
            lease_id=lid,
            node_id=le["node"],
            epoch=int(le["epoch"]),
            start=int(le["start"]),
            end=int(le["end"]),
            cursor=le["cursor"],
            state=le["state"],
        )
        for lid, le in leases.items()
    ]
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LeaseLog:
    """An open lease log. Build with ``LeaseLog.open`` (blocking: call it off the loop)."""

    def __init__(self, path: Path, file: Any) -> None:
        self.path = path
        self._file = file
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mx8-lease-log")
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.fsyncs = 0

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
        if path.exists() and path.stat().st_size > 0:
            state = cls._read_existing(path, header)
        else:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(json.dumps(header.to_json(), sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        return cls(path, open(path, "ab")), state

    @staticmethod
    def _read_existing(path: Path, header: LeaseLogHeader) -> LeaseLogState:
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
            if found != header.to_json():
                diff = {
                    k: (found.get(k), v) for k, v in header.to_json().items() if found.get(k) != v
                }
                raise LeaseLogError(
                    f"lease log {path} belongs to another job setup (logged vs now: {diff}); "
                    "start with the same dataset snapshot and settings, or use another "
                    "--state-dir / --job-id to start over",
                    path=str(path),
                )
            good_end = f.tell()
            records: list[dict[str, Any]] = []
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn tail: never fsync'd, never acknowledged
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise LeaseLogError(
                        f"lease log {path} has a damaged line at byte {good_end}; move the "
                        "file away to start the job over",
                        path=str(path),
                    ) from exc
                good_end += len(line)
        if good_end < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return replay_records(iter(records), str(path))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.fsyncs += 1

    async def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append ``records`` and return once they are on disk."""
        if not records:
            return
        if self._closed:
            raise LeaseLogError(f"lease log {self.path} is closed", path=str(self.path))
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_pending())
        await done

    async def _flush_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(
                    self._executor, self._write, b"".join(d for d, _ in batch)
                )
            except OSError as exc:
                err = LeaseLogError(
                    f"cannot write lease log {self.path}: {exc}; check the disk of --state-dir",
                    path=str(self.path),
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def close(self) -> None:
        """Wait for pending appends, then close the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        self._file.close()
        self._executor.shutdown(wait=True)

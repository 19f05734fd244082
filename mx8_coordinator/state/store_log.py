"""The lease log in a store (``--state-dir s3://bucket/prefix/`` or ``file:///shared/dir``).

    <job>/log/000000000000        header segment: the ``LeaseLogHeader`` and incarnation
    <job>/log/<seq, 12 digits>    one segment per flush: a meta line, then record lines
    <job>/snapshots/<seq>         hint: segment <seq> is a snapshot (replay starts there)

A segment is an immutable object created with a conditional create under its sequence
number alone, so of two coordinators that both try to append segment ``k`` exactly one
succeeds: the log stays one linear history. Its meta line names the term of the writer
(``leader``). A writer that loses segment ``k`` to a newer term was deposed
(``CoordinatorFencedError``); a new leader that loses it while opening reads it and
tries again one further.

Appends are batched (group commit): one writer task takes what is pending, waits up to
``flush_ms`` more (0 by default; less once ``max_records`` are pending), writes one
segment and answers every waiting append; appends made during a write share the next
segment, so there is at most one PUT in flight and never one PUT per RPC under load.

Durability rule: ``append`` returns only after the segment holding its records
exists in the store *and* this coordinator's term was still valid when the write
returned, so a lease is handed out only after the record saying so is durable and while
no other coordinator may lead. A failed write is not given up:
the segment keeps its number and is written again, before any later one, until it
lands; its appends wait while the term is valid and are answered with the reason once it
lapses, and the job's gate (``check_writable``) then refuses new changes, so memory
never runs ahead of the log; refused RPCs get UNAVAILABLE and agents retry.

Each new term starts with a segment of its own: a snapshot (every record so far,
compacted) when ``compact_after`` segments followed the last one, else an empty one; a
long term writes a snapshot in place of every ``compact_after``-th segment, so a replay
never reads more than that many segments after the last snapshot (read concurrently).
Nothing is ever deleted, so a reader that listed the log earlier can still read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mx8_common.errors import CoordinatorFencedError, LeaseLogError, Mx8Error
from mx8_common.store import ManifestStore
from mx8_coordinator.state.leader import LeaderElection, job_prefix
from mx8_coordinator.state.lease_log import (
    LeaseLogHeader,
    LeaseLogState,
    compact_records,
    new_incarnation,
    replay_records,
)
from mx8_coordinator.state.lease_records import LeaseRecord, decode_record, encode_record

__all__ = ["Segment", "StoreLeaseLog", "read_store_log_manifest_hash"]

_FORMAT = 1
#: Segments read at once while replaying.
_READ_CONCURRENCY = 16
_INCARNATION_KEY = "incarnation"


@dataclass(frozen=True)
class Segment:
    """One segment object: who wrote it, what kind, and its records."""

    seq: int
    term: int
    kind: str  # "records", "snapshot" or "term" (a new term's empty first segment)
    records: tuple[LeaseRecord, ...] = ()

    def to_bytes(self) -> bytes:
        meta = {"mx8_segment": _FORMAT, "seq": self.seq, "term": self.term, "kind": self.kind}
        lines = [json.dumps(meta, sort_keys=True)]
        lines += [json.dumps(encode_record(r), separators=(",", ":")) for r in self.records]
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Segment:
        lines = data.decode(errors="replace").splitlines()
        try:
            meta = json.loads(lines[0])
            seg = cls(int(meta["seq"]), int(meta["term"]), str(meta["kind"]))
            records = tuple(decode_record(json.loads(line)) for line in lines[1:])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise LeaseLogError(
                f"lease log segment {where} is unreadable ({exc}); it is not one an mx8 "
                "coordinator wrote: use another --state-dir or --job-id to start over",
                path=where,
            ) from None
        return cls(seg.seq, seg.term, seg.kind, records)


def _seg_name(seq: int) -> str:
    return f"{seq:012d}"


def _parse_header(data: bytes, where: str) -> tuple[dict[str, Any], str]:
    try:
        found = json.loads(data)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise LeaseLogError(
            f"lease log header {where} is unreadable; use another --state-dir or --job-id",
            path=where,
        )
    incarnation = found.pop(_INCARNATION_KEY, "")
    return found, str(incarnation)


async def read_store_log_manifest_hash(store: ManifestStore, job_id: str) -> str | None:
    """The manifest hash the job's log header in ``store`` names (None: no log yet)."""
    rel = f"{job_prefix(job_id)}/log/{_seg_name(0)}"
    data = await store.read_object(rel)
    if data is None:
        return None
    found, _ = _parse_header(data, store.object_location(rel))
    value = found.get("manifest_hash")
    return value if isinstance(value, str) else None


class StoreLeaseLog:
    """An open lease log in a store, written by the leader of ``election``'s term."""

    def __init__(
        self,
        store: ManifestStore,
        election: LeaderElection,
        *,
        next_seq: int,
        flush_ms: int,
        max_records: int,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> None:
        self.store = store
        self.election = election
        self._prefix = job_prefix(election.job_id)
        self.path = store.object_location(f"{self._prefix}/log")
        self._next_seq = next_seq
        self._flush_s = flush_ms / 1000
        self._max_records = max_records
        self._on_segment = on_segment
        self._pending: list[tuple[Sequence[LeaseRecord], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        #: The error once this coordinator is deposed (it must exit); ``deposed`` is set
        #: with it (an event, so a cancelled waiter cannot cancel it).
        self.fenced: CoordinatorFencedError | None = None
        self.deposed = asyncio.Event()
        self.segments_written = 0
        #: Called with each segment write's seconds (its retries included), as a local
        #: log's ``on_sync``: every append of the batch waited that long.
        self.on_sync: Callable[[float], None] | None = None
        self.compacted_from = 0
        #: Segments made but not yet stored (a failed write), landed in order first.
        self._unlanded: list[Segment] = []
        #: Every record so far (compacted at each snapshot): the next snapshot's content.
        self._records: list[LeaseRecord] = []
        self._since_snapshot = 0
        self._compact_after = 64

    def _rel(self, seq: int) -> str:
        return f"{self._prefix}/log/{_seg_name(seq)}"

    # -- open ------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        store: ManifestStore,
        election: LeaderElection,
        header: LeaseLogHeader,
        *,
        flush_ms: int = 0,
        max_records: int = 1000,
        compact_after: int = 64,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> tuple[StoreLeaseLog, LeaseLogState]:
        """Replay the job's log and write this term's first segment (``election`` leads).

        A header that differs from ``header`` is refused, as on disk.
        """
        log = cls(
            store,
            election,
            next_seq=1,
            flush_ms=flush_ms,
            max_records=max_records,
            on_segment=on_segment,
        )
        incarnation = await log._open_header(header)
        while True:
            last, records = await log._read_all()
            state = replay_records(iter(records), log.path)
            state.incarnation = incarnation
            snapshot_at = await log._last_snapshot()
            if last - snapshot_at >= compact_after and records:
                kept = tuple(compact_records(records))
                first = Segment(last + 1, election.term, "snapshot", kept)
            else:
                first = Segment(last + 1, election.term, "term")
            if await store.create_object(log._rel(first.seq), first.to_bytes()):
                break
            # A deposed leader's last write landed after our listing: read it too, or
            # find that an even newer term owns the log.
            await log._check_not_newer(first.seq)
        if first.kind == "snapshot":
            log.compacted_from = len(records)
            await log._hint_snapshot(first.seq)
        log._next_seq = first.seq + 1
        log._written(first)
        log._compact_after = compact_after
        log._records = list(compact_records(records))
        log._since_snapshot = 0 if first.kind == "snapshot" else last + 1 - snapshot_at
        return log, state

    async def _open_header(self, header: LeaseLogHeader) -> str:
        rel = self._rel(0)
        where = self.store.object_location(rel)
        data = await self.store.read_object(rel)
        if data is None:
            obj = {**header.to_json(), _INCARNATION_KEY: new_incarnation()}
            created = json.dumps(obj, sort_keys=True).encode() + b"\n"
            if await self.store.create_object(rel, created):
                return str(obj[_INCARNATION_KEY])
            data = await self.store.read_object(rel)
            assert data is not None
        found, incarnation = _parse_header(data, where)
        if found != header.to_json():
            want = header.to_json()
            diff = {k: (found.get(k), v) for k, v in want.items() if found.get(k) != v}
            raise LeaseLogError(
                f"lease log {where} belongs to another job setup (logged vs now: {diff}); "
                "start with the same dataset snapshot and settings, or use another "
                "--state-dir / --job-id to start over",
                path=where,
            )
        return incarnation

    async def _last_snapshot(self) -> int:
        names = await self.store.list_objects(f"{self._prefix}/snapshots")
        return max((int(n) for n in names if n.isdigit()), default=0)

    async def _read_all(self) -> tuple[int, list[LeaseRecord]]:
        """The last segment's number and the records to replay (from the last snapshot)."""
        names = await self.store.list_objects(f"{self._prefix}/log")
        seqs = sorted(int(n) for n in names if n.isdigit())
        last = seqs[-1] if seqs else 0
        if seqs != list(range(last + 1)):
            missing = sorted(set(range(last + 1)) - set(seqs))[:5]
            raise LeaseLogError(
                f"lease log {self.path} lacks segments {missing}: it was edited or "
                "partly deleted; use another --state-dir or --job-id to start over",
                path=self.path,
            )
        start = max(await self._last_snapshot(), 1)
        records: list[LeaseRecord] = []
        term = 0
        gate = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(seq: int) -> Segment | None:
            async with gate:
                return await self._read(seq)

        # Read concurrently (a takeover waits on this), fold in order.
        segments = await asyncio.gather(*(read(seq) for seq in range(start, last + 1)))
        for seq, seg in zip(range(start, last + 1), segments, strict=True):
            if seg is None or seg.seq != seq or seg.term < term:
                raise LeaseLogError(
                    f"lease log segment {self.store.object_location(self._rel(seq))} is out "
                    "of order (sequence or term); use another --state-dir or --job-id",
                    path=self.path,
                )
            term = seg.term
            if seg.kind == "snapshot":
                records = list(seg.records)
            else:
                records += seg.records
        if term > self.election.term:
            raise self.election.fenced_error(None, "found a newer term's segment")
        return last, records

    async def _read(self, seq: int) -> Segment | None:
        data = await self.store.read_object(self._rel(seq))
        where = self.store.object_location(self._rel(seq))
        return None if data is None else Segment.from_bytes(data, where)

    async def _check_not_newer(self, seq: int) -> None:
        seg = await self._read(seq)
        if seg is not None and seg.term > self.election.term:
            raise self.election.fenced_error(
                await self.election.read_term(seg.term), f"lost segment {seq} to it"
            )

    def _written(self, seg: Segment) -> None:
        self.segments_written += 1
        if self._on_segment is not None:
            self._on_segment(seg)

    # -- append ------------------------------------------------------------------------
    async def append(self, records: Sequence[LeaseRecord]) -> None:
        """Append ``records``; returns once they are durable in the store (module doc)."""
        if not records:
            return
        if self._closed:
            raise LeaseLogError(f"lease log {self.path} is closed", path=self.path)
        self.check_writable()
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_writer(), name="mx8-store-log")
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((records, done))
        self._wake.set()
        await done

    def check_writable(self) -> None:
        """Raise unless this coordinator may change the job now (its term is valid)."""
        if self.fenced is not None:
            raise self.fenced
        if not self.election.valid():
            raise self._not_leading()

    def _not_leading(self) -> LeaseLogError:
        why = self.election.last_error or "the store did not answer in time"
        return LeaseLogError(
            f"job {self.election.job_id!r}: this coordinator could not renew its leader "
            f"record (term {self.election.term}) in time ({why}), so it hands out no lease "
            "and records no registration or progress until the store answers again",
            path=self.path,
        )

    def _pending_records(self) -> int:
        return sum(len(r) for r, _ in self._pending)

    async def _run_writer(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if (
                self._flush_s > 0
                and not self._closed
                and self._pending_records() < self._max_records
            ):
                # Gather more appends for one segment, but never hold one longer.
                try:
                    async with asyncio.timeout(self._flush_s):
                        while self._pending_records() < self._max_records and not self._closed:
                            await self._wake.wait()
                            self._wake.clear()
                except TimeoutError:
                    pass
            batch, self._pending = self._pending, []
            started = time.perf_counter()
            error = await self._write_batch([r for recs, _ in batch for r in recs])
            if error is None and self.on_sync is not None:
                self.on_sync(time.perf_counter() - started)
            for _, fut in batch:
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
            if isinstance(error, CoordinatorFencedError):
                return

    async def _write_batch(self, records: list[LeaseRecord]) -> Mx8Error | None:
        """Store ``records`` as the next segment; the error to answer with, or None.

        Memory already holds these changes, so a segment is never given up: one that
        cannot be written stays queued (with its number) and lands, in order, before any
        later one. While the term is valid the write is retried; once it lapses the
        appends are answered with the reason, and the job's gate refuses new changes.
        """
        if self.fenced is not None:
            return self.fenced
        self._records += records
        self._since_snapshot += 1
        if self._since_snapshot >= self._compact_after:
            # A long term compacts too, so a takeover never replays more than
            # ``compact_after`` segments (made in sequence order, so it holds everything
            # before it, including segments still waiting to land).
            self._records = compact_records(self._records)
            seg = Segment(self._next_seq, self.election.term, "snapshot", tuple(self._records))
            self._since_snapshot = 0
        else:
            seg = Segment(self._next_seq, self.election.term, "records", tuple(records))
        self._next_seq += 1
        self._unlanded.append(seg)
        delay = 0.05
        while self._unlanded:
            head = self._unlanded[0]
            try:
                landed = await self._land(head)
            except Mx8Error as exc:
                where = self.store.object_location(self._rel(head.seq))
                self.election.last_error = f"cannot write lease log segment {where}: {exc}"
                if not self.election.valid():
                    return self._not_leading()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if landed is not None:
                return self._fence(landed)
            self._unlanded.pop(0)
            self._written(head)
            if head.kind == "snapshot":
                await self._hint_snapshot(head.seq)
        if not self.election.valid():
            # Durable, but the term may be over by now: answer nothing as leader.
            return self._not_leading()
        return None

    async def _hint_snapshot(self, seq: int) -> None:
        # Only a hint (replay finds the log without it, just reads more): best effort.
        with contextlib.suppress(Mx8Error):
            await self.store.create_object(f"{self._prefix}/snapshots/{_seg_name(seq)}", b"")

    async def _land(self, seg: Segment) -> CoordinatorFencedError | None:
        """Create ``seg``; None once it exists with our bytes, else the fencing error."""
        rel = self._rel(seg.seq)
        data = seg.to_bytes()
        if await self.store.create_object(rel, data):
            return None
        raw = await self.store.read_object(rel)
        if raw == data:
            return None  # our own earlier write, whose answer was lost
        found = None if raw is None else Segment.from_bytes(raw, self.store.object_location(rel))
        newer = None
        if found is not None and found.term > self.election.term:
            newer = await self._safe_read_term(found.term)
        return self.election.fenced_error(newer, f"lost segment {seg.seq}")

    async def _safe_read_term(self, term: int) -> Any:
        try:
            return await self.election.read_term(term)
        except Mx8Error:
            return None

    def _fence(self, error: CoordinatorFencedError) -> CoordinatorFencedError:
        self.election.stop()
        if self.fenced is None:
            self.fenced = error
            self.deposed.set()
        return error

    def fence(self, error: CoordinatorFencedError) -> None:
        """Another part (the renewal) found this coordinator deposed: refuse all appends."""
        self._fence(error)

    async def close(self) -> None:
        """Write what is pending, then stop the writer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

"""The agent's ready batches, shared fairly by the trainers of this host.

The lease runner ``put``s batches; each trainer stream asks ``next_for(session)``. Waiting
trainers are served first-come first-served, so trainers that keep up get batches in
turn. A trainer may hold at most ``window`` sent-but-unacknowledged batches; its ``ack``
hands the batches to ``on_acked`` (the ack tracker: only acknowledged samples are ever
reported to the coordinator). A trainer that disconnects with unacknowledged batches has
them put back at the front of the queue, in order, for the others, after ``resume_grace_s``
(parked until then, so a quick reconnect gets them all back instead of racing the others).

A trainer that reconnects with the same ``trainer_id`` resumes its place (``attach`` with
``resume_after``): its batches up to ``resume_after`` count as acknowledged (consumed; the
ack was lost with the old stream), the rest of its old unacknowledged batches that no other
trainer took yet are re-sent to it first with their old ``batch_seq``, and its numbering
continues. A second stream with a live ``trainer_id`` replaces the first (a reconnect the
agent noticed before the break). Resuming a ``trainer_id`` this hub never served is a
``TrainerResumeError``: the agent restarted and cannot tell what the trainer consumed.

A ``deliverable`` predicate (dynamic mode: the lease fence) is asked before each batch
is handed to a trainer; a batch it refuses stays queued (its lease may be renewed, then
``redispatch`` hands it out) until ``discard_lease`` drops it.

The hub also accounts bytes: queued + unacknowledged (``held_bytes``). The runner waits
for ``wait_room`` before it grows a batch, which is the back-pressure from slow trainers
to the fetcher. The end of the job reaches every trainer as ``None`` from ``next_for``
once the producer called ``finish()`` and nothing is queued or unacknowledged anywhere.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mx8_common.errors import RequestError, TrainerResumeError

__all__ = ["ReadyBatch", "TrainerHub", "TrainerSession"]


@dataclass(slots=True, eq=False)
class ReadyBatch:
    """Consecutive positions ``[first_pos, first_pos + len)`` of one lease, fetched.

    ``parts`` are the samples' bytes as the fetcher returned them: they are joined only
    once, into the wire message, when the batch is sent (``batch_wire``).
    """

    lease_id: str
    epoch: int
    first_pos: int
    sample_ids: np.ndarray
    parts: list[bytes]
    offsets: np.ndarray
    labels: np.ndarray | None
    #: The trainer this batch was last sent to and its ``batch_seq`` there (for resumes).
    owner: str | None = None
    owner_seq: int = 0
    #: Rank-exact mode: the step of ``epoch`` this batch is.
    step: int = 0
    #: Rank-exact mode: the bytes are already in this stream's shared memory (a
    #: ``ShmSlot``; ``parts`` is empty).
    shared: Any = None
    #: Rank-exact mode: batches after this one the trainer may consume before it
    #: acknowledges (``Batch.ack_slack``; 0: acknowledge this one).
    ack_slack: int = 0
    #: Rank-exact mode: the trainer reads these whole local files itself (``parts`` is
    #: empty), checked against the snapshot's listing time ``listed_at``.
    local_files: list[str] | None = None
    listed_at: float | None = None
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = self.shared.length if self.shared is not None else sum(map(len, self.parts))

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def payload(self) -> bytes:
        """The samples' bytes joined (a copy: the send path uses ``parts``)."""
        return b"".join(self.parts)


@dataclass(eq=False)
class TrainerSession:
    """One connected trainer stream."""

    trainer_id: str
    window: int
    local_rank: int = 0
    want_locations: bool = False
    next_seq: int = 1
    unacked: collections.deque[tuple[int, ReadyBatch]] = field(default_factory=collections.deque)
    #: A resumed trainer's old batches, sent again before anything else.
    resend: collections.deque[tuple[int, ReadyBatch]] = field(default_factory=collections.deque)
    batches_sent: int = 0
    samples_acked: int = 0
    #: Set when a newer stream with the same trainer_id replaced this one.
    replaced: BaseException | None = None

    @property
    def has_room(self) -> bool:
        return len(self.unacked) < self.window


class TrainerHub:
    """Shared queue of ready batches for several local trainers (see the module docstring)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        on_acked: Callable[[ReadyBatch], None],
        resume_grace_s: float = 0.0,
        deliverable: Callable[[ReadyBatch], bool] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        #: Asked before a batch goes to a trainer; None: every batch may go.
        self.deliverable = deliverable
        self._on_acked = on_acked
        self.resume_grace_s = resume_grace_s
        self.batch_size: int | None = None
        self._queue: collections.deque[ReadyBatch] = collections.deque()
        self._waiters: collections.deque[tuple[TrainerSession, asyncio.Future[object]]] = (
            collections.deque()
        )
        self._sessions: dict[str, TrainerSession] = {}
        # Detached trainers: their unacknowledged batches waiting out the grace, and where
        # their numbering continues (kept for the agent's life: a few ints per trainer).
        self._parked: dict[str, list[tuple[int, ReadyBatch]]] = {}
        self._park_timers: dict[str, asyncio.TimerHandle] = {}
        self._next_seq_of: dict[str, int] = {}
        #: Batches parked or waiting in a session's ``resend`` (held, not queued, not sent).
        self.reserved_batches = 0
        self._finished = False
        self._error: BaseException | None = None
        self.held_bytes = 0
        self.unacked_batches = 0
        self.requeued_batches = 0
        self._room = asyncio.Event()
        self._batch_size_set = asyncio.Event()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._has_sessions = asyncio.Event()

    # -- batch size ---------------------------------------------------------------------

    def set_batch_size(self, batch_size: int) -> None:
        """The first trainer's batch size wins; another one is a ``RequestError``."""
        if batch_size <= 0:
            raise RequestError(
                f"batch_size is {batch_size}; open the stream with a batch_size > 0",
                field="batch_size",
            )
        if self.batch_size is None:
            self.batch_size = batch_size
            self._batch_size_set.set()
        elif batch_size != self.batch_size:
            raise RequestError(
                f"batch_size {batch_size} differs from {self.batch_size}, which the first "
                "trainer of this job on this host chose; every trainer sharing an agent must "
                f"use batch_size={self.batch_size}",
                field="batch_size",
            )

    async def wait_batch_size(self) -> int:
        """Wait until a trainer opened a stream (batches are only cut once this is known)."""
        await self._batch_size_set.wait()
        assert self.batch_size is not None
        return self.batch_size

    # -- producer side ------------------------------------------------------------------

    @property
    def queued_batches(self) -> int:
        return len(self._queue)

    @property
    def sessions(self) -> list[TrainerSession]:
        return list(self._sessions.values())

    async def wait_room(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more fit under ``max_bytes`` (always true when empty)."""
        while self.held_bytes > 0 and self.held_bytes + nbytes > self.max_bytes:
            self._room.clear()
            await self._room.wait()

    def put(self, batch: ReadyBatch) -> None:
        """Queue a batch (the caller reserved room with ``wait_room``)."""
        if self._finished:
            raise RuntimeError("put() after finish()")
        self._queue.append(batch)
        self.held_bytes += batch.nbytes
        self._dispatch()

    def finish(self) -> None:
        """No more batches will be put; trainers get the end of the job once all are acked."""
        self._finished = True
        self._dispatch()

    def fail(self, error: BaseException) -> None:
        """The producer failed for good: every waiting and later ``next_for`` raises ``error``."""
        self._error = error
        while self._waiters:
            _session, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)

    def discard_lease(self, lease_id: str) -> int:
        """Drop queued, parked and to-be-resent batches of a lease the coordinator took
        back; returns how many."""
        kept = [b for b in self._queue if b.lease_id != lease_id]
        dropped = len(self._queue) - len(kept)
        self.held_bytes -= sum(b.nbytes for b in self._queue if b.lease_id == lease_id)
        self._queue = collections.deque(kept)
        reserved = [*self._parked.values(), *(s.resend for s in self._sessions.values())]
        for held in reserved:
            gone = [(q, b) for q, b in held if b.lease_id == lease_id]
            if gone:
                mine = [(q, b) for q, b in held if b.lease_id != lease_id]
                held.clear()
                held.extend(mine)
                dropped += len(gone)
                self.reserved_batches -= len(gone)
                self.held_bytes -= sum(b.nbytes for _q, b in gone)
        if dropped:
            self._room.set()
            self._dispatch()
        return dropped

    @property
    def drained(self) -> bool:
        """Finished, and nothing queued or waiting for an acknowledgement."""
        return (
            self._finished
            and not self._queue
            and self.unacked_batches == 0
            and self.reserved_batches == 0
        )

    # -- trainer side -------------------------------------------------------------------

    def attach(
        self,
        trainer_id: str,
        *,
        window: int,
        local_rank: int = 0,
        resume_after: int = 0,
        want_locations: bool = False,
    ) -> TrainerSession:
        """A new stream of ``trainer_id``; ``resume_after`` > 0 resumes its previous one
        (see the module docstring). Raises ``TrainerResumeError`` for an unknown trainer."""
        old = self._sessions.get(trainer_id)
        if old is not None:
            self._replace(old)
        if resume_after > 0 and trainer_id not in self._next_seq_of:
            raise TrainerResumeError(
                f"trainer {trainer_id!r} asks to resume after batch {resume_after}, but this "
                "agent never sent it a batch: the agent restarted, so what the trainer consumed "
                "is unknown here. Restart the trainer (from its last checkpoint)",
                trainer_id=trainer_id,
            )
        session = TrainerSession(trainer_id, max(1, window), local_rank, want_locations)
        session.next_seq = self._next_seq_of.pop(trainer_id, 1)
        self._sessions[trainer_id] = session
        self._no_sessions.clear()
        self._has_sessions.set()
        self._claim(session, resume_after)
        return session

    def _claim(self, session: TrainerSession, resume_after: int) -> None:
        """Take back a resuming trainer's batches: parked ones and queued ones still tagged."""
        tid = session.trainer_id
        timer = self._park_timers.pop(tid, None)
        if timer is not None:
            timer.cancel()
        mine = self._parked.pop(tid, [])
        self.reserved_batches -= len(mine)
        if any(b.owner == tid for b in self._queue):
            mine += [(b.owner_seq, b) for b in self._queue if b.owner == tid]
            self._queue = collections.deque(b for b in self._queue if b.owner != tid)
        consumed = 0
        for seq, batch in sorted(mine, key=lambda item: item[0]):
            if seq <= resume_after:
                # Consumed before the break; only the acknowledgement was lost.
                self.held_bytes -= batch.nbytes
                session.samples_acked += len(batch)
                self._on_acked(batch)
                consumed += 1
            else:
                session.resend.append((seq, batch))
                self.reserved_batches += 1
        if consumed:
            self._room.set()
        self._dispatch()

    def _replace(self, old: TrainerSession) -> None:
        """A newer stream of the same trainer_id: end the old one, keep its batches."""
        old.replaced = RequestError(
            f"a newer stream with trainer_id {old.trainer_id!r} replaced this one (a "
            "reconnect resumes there); give every trainer process its own trainer_id",
            field="trainer_id",
        )
        for session, future in self._waiters:
            if session is old and not future.done():
                future.set_exception(old.replaced)
        self.detach(old)

    def detach(self, session: TrainerSession) -> None:
        """The trainer left: its unacknowledged batches are parked for ``resume_grace_s``
        (a reconnect takes them back), then go back to the front of the queue, in order."""
        if self._sessions.get(session.trainer_id) is not session:
            return
        del self._sessions[session.trainer_id]
        tid = session.trainer_id
        self._next_seq_of[tid] = session.next_seq
        self.unacked_batches -= len(session.unacked)
        self.reserved_batches += len(session.unacked)  # resend ones are counted already
        held = sorted([*session.unacked, *session.resend], key=lambda item: item[0])
        session.unacked.clear()
        session.resend.clear()
        self._waiters = collections.deque((s, f) for s, f in self._waiters if s is not session)
        if held:
            self._parked[tid] = held
            if self.resume_grace_s > 0:
                loop = asyncio.get_running_loop()
                self._park_timers[tid] = loop.call_later(self.resume_grace_s, self._release, tid)
            else:
                self._release(tid)
        if not self._sessions:
            self._no_sessions.set()
            self._has_sessions.clear()
        self._dispatch()

    def _release(self, trainer_id: str) -> None:
        """The grace is over: a detached trainer's batches go to whoever asks first."""
        self._park_timers.pop(trainer_id, None)
        held = self._parked.pop(trainer_id, [])
        for _seq, batch in reversed(held):
            self._queue.appendleft(batch)  # still tagged: a later resume may take it back
        self.reserved_batches -= len(held)
        self.requeued_batches += len(held)
        self._dispatch()

    async def wait_no_sessions(self) -> None:
        await self._no_sessions.wait()

    async def wait_sessions(self) -> None:
        """Wait until at least one trainer is attached."""
        await self._has_sessions.wait()

    async def next_for(self, session: TrainerSession) -> tuple[int, ReadyBatch] | None:
        """The next ``(batch_seq, batch)`` for this trainer, or None at the end of the job.

        Raises the producer's error after ``fail()``.
        """
        if self._error is not None:
            raise self._error
        if session.replaced is not None:
            raise session.replaced
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters.append((session, future))
        self._dispatch()
        try:
            result = await future
        except asyncio.CancelledError:
            # A batch handed over just as we were cancelled is already in session.unacked,
            # so detach() puts it back; only the waiter entry needs removing.
            self._waiters = collections.deque((s, f) for s, f in self._waiters if f is not future)
            raise
        return result  # type: ignore[return-value]

    def ack(self, session: TrainerSession, batch_seq: int) -> int:
        """Every batch up to ``batch_seq`` is consumed; returns how many were newly acked."""
        n = 0
        while session.unacked and session.unacked[0][0] <= batch_seq:
            _seq, batch = session.unacked.popleft()
            self.held_bytes -= batch.nbytes
            self.unacked_batches -= 1
            session.samples_acked += len(batch)
            self._on_acked(batch)
            n += 1
        if n:
            self._room.set()
            self._dispatch()
        return n

    # -- matching -----------------------------------------------------------------------

    def redispatch(self) -> None:
        """Try again to hand out held batches (a lease became deliverable again)."""
        self._dispatch()

    def _may_send(self, batch: ReadyBatch) -> bool:
        return self.deliverable is None or self.deliverable(batch)

    def _take_queued(self) -> ReadyBatch | None:
        """The first queued batch that may be sent (held ones keep their place)."""
        if self.deliverable is None:
            return self._queue.popleft() if self._queue else None
        for k, batch in enumerate(self._queue):
            if self._may_send(batch):
                del self._queue[k]
                return batch
        return None

    def _dispatch(self) -> None:
        """Hand batches to waiting trainers with room, first come first served; a resumed
        trainer's own batches go to it before anything from the queue."""
        while self._waiters:
            for k, (session, future) in enumerate(self._waiters):
                if future.done() or not session.has_room:
                    continue
                if session.resend:
                    if not self._may_send(session.resend[0][1]):
                        continue
                    seq, batch = session.resend.popleft()
                    self.reserved_batches -= 1
                else:
                    queued = self._take_queued()
                    if queued is None:
                        continue
                    batch = queued
                    seq = session.next_seq
                    session.next_seq += 1
                del self._waiters[k]
                batch.owner, batch.owner_seq = session.trainer_id, seq
                session.unacked.append((seq, batch))
                session.batches_sent += 1
                self.unacked_batches += 1
                future.set_result((seq, batch))
                break
            else:
                break  # nothing for any waiter with room: wait for a put or an ack
        self._waiters = collections.deque((s, f) for s, f in self._waiters if not f.done())
        if self.drained:
            while self._waiters:
                _session, future = self._waiters.popleft()
                future.set_result(None)

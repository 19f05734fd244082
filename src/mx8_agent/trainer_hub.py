"""The agent's ready batches, shared fairly by the trainers of this host.

The lease runner ``put``s batches; each trainer stream asks ``next_for(session)``. Waiting
trainers are served first-come first-served, so trainers that keep up get batches in
turn. A trainer may hold at most ``window`` sent-but-unacknowledged batches; its ``ack``
hands the batches to ``on_acked`` (the ack tracker: only acknowledged samples are ever
reported to the coordinator). A trainer that disconnects with unacknowledged batches has
them put back at the front of the queue, in order, for the others.

The hub also accounts bytes: queued + unacknowledged (``held_bytes``). The runner waits
for ``wait_room`` before it grows a batch, which is the back-pressure from slow trainers
to the fetcher. The end of the job reaches every trainer as ``None`` from ``next_for``
once the producer called ``finish()`` and nothing is queued or unacknowledged anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mx8_common.errors import RequestError

__all__ = ["ReadyBatch", "TrainerHub", "TrainerSession"]


@dataclass(slots=True, eq=False)
class ReadyBatch:
    """Consecutive positions ``[first_pos, first_pos + len)`` of one lease, fetched."""

    lease_id: str
    epoch: int
    first_pos: int
    sample_ids: np.ndarray
    payload: bytes
    offsets: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def nbytes(self) -> int:
        return len(self.payload)


@dataclass(eq=False)
class TrainerSession:
    """One connected trainer stream."""

    trainer_id: str
    window: int
    local_rank: int = 0
    next_seq: int = 1
    unacked: collections.deque[tuple[int, ReadyBatch]] = field(default_factory=collections.deque)
    batches_sent: int = 0
    samples_acked: int = 0

    @property
    def has_room(self) -> bool:
        return len(self.unacked) < self.window


class TrainerHub:
    """Shared queue of ready batches for several local trainers (see the module docstring)."""

    def __init__(self, *, max_bytes: int, on_acked: Callable[[ReadyBatch], None]) -> None:
        self.max_bytes = max_bytes
        self._on_acked = on_acked
        self.batch_size: int | None = None
        self._queue: collections.deque[ReadyBatch] = collections.deque()
        self._waiters: collections.deque[tuple[TrainerSession, asyncio.Future[object]]] = (
            collections.deque()
        )
        self._sessions: dict[int, TrainerSession] = {}
        self._ids = itertools.count()
        self._finished = False
        self._error: BaseException | None = None
        self.held_bytes = 0
        self.unacked_batches = 0
        self.requeued_batches = 0
        self._room = asyncio.Event()
        self._batch_size_set = asyncio.Event()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

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
        """Drop queued batches of a lease the coordinator took back; returns how many."""
        kept = [b for b in self._queue if b.lease_id != lease_id]
        dropped = len(self._queue) - len(kept)
        if dropped:
            self.held_bytes -= sum(b.nbytes for b in self._queue if b.lease_id == lease_id)
            self._queue = collections.deque(kept)
            self._room.set()
            self._dispatch()
        return dropped

    @property
    def drained(self) -> bool:
        """Finished, and nothing queued or waiting for an acknowledgement."""
        return self._finished and not self._queue and self.unacked_batches == 0

    # -- trainer side -------------------------------------------------------------------

    def attach(self, trainer_id: str, *, window: int, local_rank: int = 0) -> TrainerSession:
        session = TrainerSession(trainer_id, max(1, window), local_rank)
        self._sessions[id(session)] = session
        self._no_sessions.clear()
        return session

    def detach(self, session: TrainerSession) -> None:
        """The trainer left: its unacknowledged batches go back to the front, in order."""
        if self._sessions.pop(id(session), None) is None:
            return
        for _seq, batch in reversed(session.unacked):
            self._queue.appendleft(batch)
            self.requeued_batches += 1
        self.unacked_batches -= len(session.unacked)
        session.unacked.clear()
        self._waiters = collections.deque((s, f) for s, f in self._waiters if s is not session)
        if not self._sessions:
            self._no_sessions.set()
        self._dispatch()

    async def wait_no_sessions(self) -> None:
        await self._no_sessions.wait()

    async def next_for(self, session: TrainerSession) -> tuple[int, ReadyBatch] | None:
        """The next ``(batch_seq, batch)`` for this trainer, or None at the end of the job.

        Raises the producer's error after ``fail()``.
        """
        if self._error is not None:
            raise self._error
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

    def _dispatch(self) -> None:
        """Hand queued batches to waiting trainers with room, first come first served."""
        while self._queue and self._waiters:
            for k, (session, future) in enumerate(self._waiters):
                if future.done():
                    continue
                if session.has_room:
                    del self._waiters[k]
                    batch = self._queue.popleft()
                    seq = session.next_seq
                    session.next_seq += 1
                    session.unacked.append((seq, batch))
                    session.batches_sent += 1
                    self.unacked_batches += 1
                    future.set_result((seq, batch))
                    break
            else:
                break  # every waiter is at its window: wait for an ack
        self._waiters = collections.deque((s, f) for s, f in self._waiters if not f.done())
        if self.drained:
            while self._waiters:
                _session, future = self._waiters.popleft()
                future.set_result(None)

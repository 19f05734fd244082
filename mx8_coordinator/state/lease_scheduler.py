"""Which positions go to which node, when: queues, leases, progress, expiry, epochs, drain.

Work is in positions of an epoch's order (``mx8_common.sample_order.EpochOrder``). When an
epoch starts, its blocks are dealt round-robin (block i -> rank i % world_size), so a job
gives the same per-rank order on every run. A node takes work in this order:

1. re-queued remainders of expired leases (one shared FIFO),
2. its own rank's queue,
3. the queues of departed ranks (lowest rank first).

The next epoch is dealt as soon as a node finds no work for its rank (its own share of the
current epoch is issued), so a fast node goes on with its share of the next epoch instead of
idling until the slowest rank's blocks are issued. Each rank's queue stays FIFO, so its
order is still the deterministic deal, epoch after epoch.

Committed positions are ``[start, cursor)`` of each lease; a lease that expires re-queues
``[cursor, end)``, so committed ranges are disjoint by construction.

Pure logic: no I/O, no asyncio, an injectable millisecond clock. The job logs what the
returned ``Grant``/``Progress``/``Expiry`` values say happened.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from mx8_common.errors import LeaseNotFoundError, LeaseRangeError, LeaseStateError
from mx8_coordinator.state.node_registry import monotonic_ms

__all__ = [
    "Deal",
    "Expiry",
    "Grant",
    "Lease",
    "LeaseScheduler",
    "Progress",
    "RestoredLease",
    "Span",
]

#: Floor of ``wait_ms`` so an idle node never spins.
_MIN_WAIT_MS = 10


class Span(NamedTuple):
    """Half-open positions ``[start, end)`` of one epoch."""

    epoch: int
    start: int
    end: int


class Deal(NamedTuple):
    """Epoch ``epoch`` was dealt round-robin over ``world_size`` ranks."""

    epoch: int
    world_size: int


@dataclass(frozen=True)
class Lease:
    """A span held by one node; ``cursor`` is the first position not yet committed."""

    lease_id: str
    node_id: str
    epoch: int
    start: int
    end: int
    cursor: int
    expires_ms: int


@dataclass(frozen=True)
class Grant:
    """Answer to ``acquire``: new leases, or how long to wait, or that the job is drained."""

    leases: tuple[Lease, ...]
    dealt: tuple[Deal, ...]
    wait_ms: int
    drained: bool


@dataclass(frozen=True)
class Progress:
    """Answer to ``report``: the lease after it, and what got committed."""

    lease: Lease
    #: Positions ``[committed_from, committed_to)`` newly committed by this report.
    committed_from: int
    committed_to: int
    completed: bool
    epoch_completed: bool
    drained: bool


@dataclass(frozen=True)
class Expiry:
    """A lease that expired, and the remainder it re-queued (None if nothing was left)."""

    lease: Lease
    requeued: Span | None


@dataclass(frozen=True)
class RestoredLease:
    """A lease as a lease log last saw it."""

    lease_id: str
    node_id: str
    epoch: int
    start: int
    end: int
    cursor: int
    state: Literal["live", "done", "expired"]


def _holes(covered: Sequence[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """Complement of disjoint ``covered`` intervals in ``[0, total)``."""
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in sorted(covered):
        if start > pos:
            out.append((pos, start))
        pos = max(pos, end)
    if pos < total:
        out.append((pos, total))
    return out


class LeaseScheduler:
    """Queues, leases, progress, expiry and epochs of one job."""

    def __init__(
        self,
        *,
        total: int,
        epochs: int,
        lease_ttl_ms: int,
        blocks_for_epoch: Callable[[int], Sequence[tuple[int, int]]],
        clock: Callable[[], int] = monotonic_ms,
        max_wait_ms: int = 1000,
        id_prefix: str = "",
    ) -> None:
        self.total = total
        #: Before "L<seq>" in every lease id: the job incarnation's tag, so a coordinator
        #: that started the job over never reuses an id an agent already saw.
        self.id_prefix = id_prefix
        self.epochs = epochs
        self._ttl = lease_ttl_ms
        self._blocks_for_epoch = blocks_for_epoch
        self._clock = clock
        self._max_wait_ms = max_wait_ms
        self._rank_queues: dict[int, deque[Span]] = {}
        self._requeue: deque[Span] = deque()
        self._live: dict[str, Lease] = {}
        self._done: dict[str, Lease] = {}
        self._expired: dict[str, Lease] = {}
        self._committed = [0] * epochs
        self._dealt = 0
        self._seq = 0

    # -- queries ---------------------------------------------------------------------

    @property
    def drained(self) -> bool:
        """True once every position of every epoch is committed."""
        return self._dealt == self.epochs and all(c == self.total for c in self._committed)

    @property
    def epochs_dealt(self) -> int:
        return self._dealt

    def committed(self, epoch: int) -> int:
        """Positions of ``epoch`` committed so far."""
        return self._committed[epoch]

    def live_leases(self) -> list[Lease]:
        return sorted(self._live.values(), key=lambda le: (le.epoch, le.start))

    def leases_of(self, node_id: str) -> list[Lease]:
        return [le for le in self._live.values() if le.node_id == node_id]

    def pending(self) -> list[Span]:
        """Spans not yet issued: the re-queue, then each rank queue (for snapshots, tests)."""
        out = list(self._requeue)
        for rank in sorted(self._rank_queues):
            out.extend(self._rank_queues[rank])
        return out

    # -- leasing ---------------------------------------------------------------------

    def acquire(
        self,
        node_id: str,
        rank: int,
        *,
        world_size: int,
        departed_ranks: Iterable[int] = (),
        want: int = 1,
    ) -> Grant:
        """Up to ``want`` new leases for ``node_id`` (rank ``rank``)."""
        departed = sorted(set(departed_ranks) - {rank})
        leases: list[Lease] = []
        dealt: list[Deal] = []
        while len(leases) < want:
            span = self._next_span(rank, departed)
            if span is None and self._dealt < self.epochs:
                dealt.append(self._deal(world_size))
                continue
            if span is None:
                break
            leases.append(self._issue(node_id, span))
        wait_ms = 0 if leases or self.drained else self._wait_ms()
        return Grant(tuple(leases), tuple(dealt), wait_ms, self.drained)

    def _next_span(self, rank: int, departed: Sequence[int]) -> Span | None:
        if self._requeue:
            return self._requeue.popleft()
        own = self._rank_queues.get(rank)
        if own:
            return own.popleft()
        for other in departed:
            queue = self._rank_queues.get(other)
            if queue:
                return queue.popleft()
        return None

    def _deal(self, world_size: int) -> Deal:
        epoch = self._dealt
        for i, (start, end) in enumerate(self._blocks_for_epoch(epoch)):
            self._rank_queues.setdefault(i % world_size, deque()).append(Span(epoch, start, end))
        self._dealt += 1
        return Deal(epoch, world_size)

    def _issue(self, node_id: str, span: Span) -> Lease:
        self._seq += 1
        lease = Lease(
            lease_id=f"{self.id_prefix}L{self._seq}",
            node_id=node_id,
            epoch=span.epoch,
            start=span.start,
            end=span.end,
            cursor=span.start,
            expires_ms=self._clock() + self._ttl,
        )
        self._live[lease.lease_id] = lease
        return lease

    def _wait_ms(self) -> int:
        wait = self._max_wait_ms
        if self._live:
            # Work can reappear when a lease expires: come back then, not later.
            soonest = min(le.expires_ms for le in self._live.values()) - self._clock()
            wait = min(wait, soonest)
        return max(_MIN_WAIT_MS, wait)

    # -- progress --------------------------------------------------------------------

    def report(self, node_id: str, lease_id: str, cursor: int) -> Progress:
        """Move ``lease_id``'s cursor to ``cursor``, committing the positions before it."""
        lease = self._live.get(lease_id)
        if lease is None:
            return self._report_on_finished(node_id, lease_id, cursor)
        if lease.node_id != node_id:
            raise LeaseStateError(
                f"lease {lease_id} is held by node {lease.node_id!r}, not {node_id!r}; "
                "a node may only report on its own leases",
                lease_id=lease_id,
            )
        if not lease.start <= cursor <= lease.end:
            raise LeaseRangeError(
                f"cursor {cursor} is outside lease {lease_id}'s range "
                f"[{lease.start}, {lease.end}]; report a position inside it",
                lease_id=lease_id,
            )
        if cursor < lease.cursor:
            raise LeaseStateError(
                f"cursor {cursor} of lease {lease_id} goes back from {lease.cursor}; cursors "
                "only move forward (positions before the cursor are already committed)",
                lease_id=lease_id,
            )
        before = lease.cursor
        lease = dataclasses.replace(lease, cursor=cursor, expires_ms=self._clock() + self._ttl)
        self._committed[lease.epoch] += cursor - before
        completed = cursor == lease.end
        if completed:
            del self._live[lease_id]
            self._done[lease_id] = lease
        else:
            self._live[lease_id] = lease
        epoch_completed = cursor > before and self._committed[lease.epoch] == self.total
        return Progress(lease, before, cursor, completed, epoch_completed, self.drained)

    def _report_on_finished(self, node_id: str, lease_id: str, cursor: int) -> Progress:
        done = self._done.get(lease_id)
        if done is not None and done.node_id == node_id and cursor == done.end:
            # A retried final report (its answer was lost): same answer, nothing new.
            return Progress(done, cursor, cursor, True, False, self.drained)
        if done is not None:
            raise LeaseStateError(
                f"lease {lease_id} is already completed; drop it and request a new lease",
                lease_id=lease_id,
            )
        expired = self._expired.get(lease_id)
        if expired is not None:
            raise LeaseNotFoundError(
                f"lease {lease_id} expired at cursor {expired.cursor} (no progress report "
                f"within the lease TTL) and its remainder [{expired.cursor}, {expired.end}) "
                "was re-queued; drop it and request a new lease",
                lease_id=lease_id,
            )
        raise LeaseNotFoundError(
            f"lease {lease_id!r} is unknown to this coordinator; drop it and request a new lease",
            lease_id=lease_id,
        )

    # -- expiry ----------------------------------------------------------------------

    def expire_due(self) -> list[Expiry]:
        """Expire every lease whose TTL has passed; re-queue their remainders."""
        now = self._clock()
        due = [le for le in self._live.values() if le.expires_ms <= now]
        return [self._expire(le) for le in sorted(due, key=lambda le: (le.epoch, le.start))]

    def release(self, node_id: str, lease_id: str) -> Expiry | None:
        """``node_id`` gives ``lease_id`` back (it has no trainer): expire it now, re-queue
        its remainder. None when the lease is no longer live (completed)."""
        lease = self._live.get(lease_id)
        if lease is None or lease.node_id != node_id:
            return None
        return self._expire(lease)

    def postpone_expiry(self, ms: int) -> None:
        """Push every live lease's expiry back by ``ms``: time the coordinator itself was
        stalled (frozen, paused) and could not hear renewals does not count against them."""
        for lease_id, lease in self._live.items():
            self._live[lease_id] = dataclasses.replace(lease, expires_ms=lease.expires_ms + ms)

    def expire_node(self, node_id: str) -> list[Expiry]:
        """Expire every lease of a departed node now."""
        mine = sorted(self.leases_of(node_id), key=lambda le: (le.epoch, le.start))
        return [self._expire(le) for le in mine]

    def _expire(self, lease: Lease) -> Expiry:
        del self._live[lease.lease_id]
        self._expired[lease.lease_id] = lease
        span = None
        if lease.cursor < lease.end:
            span = Span(lease.epoch, lease.cursor, lease.end)
            self._requeue.append(span)
        return Expiry(lease, span)

    # -- restart ---------------------------------------------------------------------

    def restore(
        self, *, dealt: Mapping[int, int], leases: Iterable[RestoredLease], next_seq: int
    ) -> None:
        """Rebuild state from a lease log: ``dealt`` maps epoch -> world size at its deal.

        Committed positions stay committed; live leases are live again (one fresh TTL for
        their node to come back); every other uncommitted position of a dealt epoch is
        queued again: a whole untouched block to the rank it was dealt to, a part of a
        block to the shared re-queue.
        """
        now = self._clock()
        covered: dict[int, list[tuple[int, int]]] = {e: [] for e in dealt}
        for rl in leases:
            lease = Lease(rl.lease_id, rl.node_id, rl.epoch, rl.start, rl.end, rl.cursor, 0)
            if rl.state == "live":
                self._live[rl.lease_id] = dataclasses.replace(lease, expires_ms=now + self._ttl)
                covered[rl.epoch].append((rl.start, rl.end))
            else:
                (self._done if rl.state == "done" else self._expired)[rl.lease_id] = lease
                covered[rl.epoch].append((rl.start, rl.cursor))
            self._committed[rl.epoch] += rl.cursor - rl.start
        for epoch in sorted(dealt):
            holes = _holes(covered[epoch], self.total)
            h = 0
            for i, (start, end) in enumerate(self._blocks_for_epoch(epoch)):
                parts: list[tuple[int, int]] = []
                while h < len(holes) and holes[h][0] < end:
                    lo, hi = max(holes[h][0], start), min(holes[h][1], end)
                    if lo < hi:
                        parts.append((lo, hi))
                    if holes[h][1] > end:
                        break
                    h += 1
                if parts == [(start, end)]:
                    queue = self._rank_queues.setdefault(i % dealt[epoch], deque())
                    queue.append(Span(epoch, start, end))
                else:
                    self._requeue.extend(Span(epoch, lo, hi) for lo, hi in parts)
        self._dealt = max(dealt, default=-1) + 1
        self._seq = next_seq

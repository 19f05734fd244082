"""Which positions of each held lease trainers have acknowledged, as a reportable cursor.

Trainers acknowledge batches out of order (two trainers share the agent's batches; a
batch a departed trainer held comes back later), so acknowledged positions arrive as
disjoint sub-ranges. The coordinator only takes a cursor: "every position before it is
consumed". ``LeaseAcks`` merges the sub-ranges and exposes the contiguous acknowledged
prefix as ``cursor``; a gap (an unacknowledged batch) holds the cursor back, so a crash
never commits a sample no trainer consumed. ``AckTracker`` keeps one per lease and says
which cursors moved since they were last reported. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["AckTracker", "LeaseAcks", "LeaseRef"]


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """A lease as the agent holds it: positions ``[cursor, end)`` of ``epoch`` to deliver."""

    lease_id: str
    epoch: int
    start: int
    end: int
    cursor: int


class LeaseAcks:
    """Acknowledged positions of one lease; ``cursor`` is the first unacknowledged one."""

    __slots__ = ("_his", "_los", "cursor", "end", "start")

    def __init__(self, start: int, end: int, cursor: int | None = None) -> None:
        if not start <= (start if cursor is None else cursor) <= end:
            raise ValueError(f"cursor {cursor} outside [{start}, {end}]")
        self.start = start
        self.end = end
        self.cursor = start if cursor is None else cursor
        # Disjoint, sorted ranges above the cursor (never touching it: those are merged in).
        self._los: list[int] = []
        self._his: list[int] = []

    @property
    def done(self) -> bool:
        """True when every position of the lease is acknowledged."""
        return self.cursor == self.end

    @property
    def acked(self) -> int:
        """Positions acknowledged so far (the prefix and the ranges beyond it)."""
        return (self.cursor - self.start) + sum(
            hi - lo for lo, hi in zip(self._los, self._his, strict=True)
        )

    def ack(self, lo: int, hi: int) -> int:
        """Acknowledge positions ``[lo, hi)``; returns the new cursor.

        Acknowledging a position twice is harmless (a retried ack); a range outside the
        lease is a bug in the caller and raises ``ValueError``.
        """
        if not self.start <= lo <= hi <= self.end:
            raise ValueError(f"ack [{lo}, {hi}) outside lease [{self.start}, {self.end})")
        lo = max(lo, self.cursor)
        if lo >= hi:
            return self.cursor
        # Merge [lo, hi) with every stored range it overlaps or touches.
        i = bisect.bisect_left(self._his, lo)
        j = i
        while j < len(self._los) and self._los[j] <= hi:
            lo = min(lo, self._los[j])
            hi = max(hi, self._his[j])
            j += 1
        self._los[i:j] = [lo]
        self._his[i:j] = [hi]
        if self._los[0] <= self.cursor:
            self.cursor = self._his[0]
            del self._los[0], self._his[0]
        return self.cursor


class AckTracker:
    """``LeaseAcks`` of every held lease, and which cursors still need reporting."""

    def __init__(self) -> None:
        self._leases: dict[str, LeaseAcks] = {}
        self._reported: dict[str, int] = {}

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def add(self, lease: LeaseRef) -> None:
        """Start tracking a lease at its current (already committed) cursor."""
        self._leases[lease.lease_id] = LeaseAcks(lease.start, lease.end, lease.cursor)
        self._reported[lease.lease_id] = lease.cursor

    def ack(self, lease_id: str, lo: int, hi: int) -> bool:
        """Acknowledge ``[lo, hi)`` of a lease; False when the lease is no longer held."""
        acks = self._leases.get(lease_id)
        if acks is None:
            return False
        acks.ack(lo, hi)
        return True

    def is_done(self, lease_id: str) -> bool:
        """True when a held lease is wholly acknowledged (False when not held)."""
        acks = self._leases.get(lease_id)
        return acks is not None and acks.done

    def cursor(self, lease_id: str) -> int:
        return self._leases[lease_id].cursor

    def cursors(self) -> dict[str, int]:
        """Current cursor of every held lease (what a progress report sends)."""
        return {lease_id: acks.cursor for lease_id, acks in self._leases.items()}

    def unreported(self) -> dict[str, int]:
        """Leases whose cursor moved since ``mark_reported``."""
        return {
            lease_id: acks.cursor
            for lease_id, acks in self._leases.items()
            if acks.cursor != self._reported[lease_id]
        }

    def mark_reported(self, lease_id: str, cursor: int) -> None:
        if lease_id in self._reported:
            self._reported[lease_id] = max(self._reported[lease_id], cursor)

    def remove(self, lease_id: str) -> None:
        """Stop tracking a lease (completed, or dropped by the coordinator)."""
        self._leases.pop(lease_id, None)
        self._reported.pop(lease_id, None)

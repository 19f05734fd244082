"""Whether a held lease may still reach a trainer: the agent side of lease fencing.

The coordinator takes a lease back once ``lease_ttl_ms`` passed since it last heard of
it (a progress report, which renews it, or the grant), and only then hands its remainder
to another node. The agent must have stopped delivering that lease strictly before, even
when it was frozen (SIGSTOP) or cut off from the coordinator, so that a zombie never
delivers positions another host delivers too. So each lease gets a local deadline:

    deadline = (monotonic time the last successful grant/renewal was *sent*) + ttl - margin

The coordinator renewed it on *receiving* that call, later than it was sent, so its
expiry is at least ``margin`` after the agent's deadline on any clock that runs at the
same rate; ``margin`` (a tenth of the TTL, at least 50 ms) covers clock-rate skew
between hosts (NTP slews by < 0.1 %) and the hop from the hub to the trainer. Only
monotonic durations are compared, never wall-clock times of two hosts.

Delivery also stops while the link is in doubt: a renewal that failed, or one that has
been waiting for longer than one heartbeat, suspends every lease until a renewal
succeeds again, so an agent stops within one heartbeat of losing the coordinator.

And delivery runs at most ``max_ahead`` batches ahead of what the coordinator confirmed:
every batch handed out is remembered until an accepted report's cursor passes it, and
while ``max_ahead`` such batches (all leases together) are out, a new one waits (a batch
handed out before, a departed trainer's, may always go again: it fills the gap that
holds a cursor back). What a fault can leave delivered but uncommitted is then at most
``max_ahead`` batches, however fast trainers consume and however long the link takes to
look dead.

Pure: an injectable clock, no I/O, no asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LeaseFence", "fence_margin_s"]

#: Smallest margin between the agent's deadline and the coordinator's expiry.
_MIN_MARGIN_S = 0.05


def fence_margin_s(ttl_s: float) -> float:
    """How much earlier than the coordinator's expiry the agent stops delivering."""
    return max(_MIN_MARGIN_S, ttl_s / 10)


class LeaseFence:
    """Per-lease delivery deadlines and the link's state (see the module docstring)."""

    def __init__(
        self,
        *,
        ttl_s: float,
        stall_s: float,
        max_ahead: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        #: Most batches handed out beyond the confirmed cursors (0: no bound).
        self.max_ahead = max_ahead
        #: Per lease: first position -> end of each batch handed out, not yet confirmed.
        self._ahead: dict[str, dict[int, int]] = {}
        self.ttl_s = ttl_s
        self.margin_s = fence_margin_s(ttl_s)
        self._stall_s = stall_s
        self._clock = clock
        self._deadline: dict[str, float] = {}
        self._link_failed = False
        #: Send time of the oldest renewal still waiting for its answer (None: none).
        self._waiting_since: float | None = None

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._deadline

    def now(self) -> float:
        return self._clock()

    def granted(self, lease_id: str, sent_at: float) -> None:
        """The coordinator granted ``lease_id`` in answer to a request sent at ``sent_at``."""
        self._deadline[lease_id] = sent_at + self.ttl_s - self.margin_s

    def renewed(self, lease_id: str, sent_at: float, cursor: int | None = None) -> None:
        """A progress report sent at ``sent_at`` was accepted: the lease lives on, and
        the coordinator committed every position before ``cursor``."""
        ahead = self._ahead.get(lease_id)
        if ahead and cursor is not None:
            for first in [f for f, end in ahead.items() if end <= cursor]:
                del ahead[first]
        if lease_id in self._deadline:
            new = sent_at + self.ttl_s - self.margin_s
            self._deadline[lease_id] = max(self._deadline[lease_id], new)
        self._link_failed = False

    def renewing(self, sent_at: float | None) -> None:
        """A renewal was sent at ``sent_at`` and is waiting (None: its answer came)."""
        self._waiting_since = sent_at

    def link_failed(self) -> None:
        """A renewal failed (coordinator unreachable): hold every lease until one succeeds."""
        self._link_failed = True

    def forget(self, lease_id: str) -> None:
        """The lease completed or was taken back."""
        self._deadline.pop(lease_id, None)
        self._ahead.pop(lease_id, None)

    def may_run_ahead(self, lease_id: str, first_pos: int) -> bool:
        """May the batch at ``first_pos`` go with ``max_ahead`` batches unconfirmed?"""
        ahead = self._ahead.get(lease_id)
        if not self.max_ahead or (ahead is not None and first_pos in ahead):
            return True
        return self.unconfirmed() < self.max_ahead

    def delivered(self, lease_id: str, first_pos: int, end: int) -> None:
        """Positions ``[first_pos, end)`` of ``lease_id`` went to a trainer."""
        self._ahead.setdefault(lease_id, {})[first_pos] = end

    def unconfirmed(self, lease_id: str | None = None) -> int:
        """Batches (of ``lease_id``, or of all leases) out and not yet confirmed committed."""
        if lease_id is not None:
            return len(self._ahead.get(lease_id, ()))
        return sum(len(ahead) for ahead in self._ahead.values())

    def deadline(self, lease_id: str) -> float | None:
        return self._deadline.get(lease_id)

    @property
    def link_in_doubt(self) -> bool:
        """A renewal failed, or one has waited longer than a heartbeat."""
        if self._link_failed:
            return True
        waiting = self._waiting_since
        return waiting is not None and self._clock() - waiting > self._stall_s

    def valid(self, lease_id: str) -> bool:
        """May a batch of ``lease_id`` be handed to a trainer now?"""
        deadline = self._deadline.get(lease_id)
        if deadline is None or self.link_in_doubt:
            return False
        return self._clock() < deadline

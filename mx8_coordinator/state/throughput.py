"""Throughput of a job: a bounded ring buffer of committed-sample counts and the rates
read from it. Pure logic over millisecond times; the ``Job`` feeds it from its clock.

While the job runs, the rate is taken over the last ``window_ms`` (a since-start average
keeps falling through any pause and after the end); once the job drains the final average
is frozen so the page stops decaying.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RateSample", "ThroughputTracker", "eta_seconds", "window_rate"]


@dataclass(frozen=True)
class RateSample:
    """Committed samples (job total and per node) counted up to ``at_ms``."""

    at_ms: int
    total: int
    by_node: Mapping[str, int]


def window_rate(
    samples: list[RateSample], now: RateSample, window_ms: int, node_id: str | None = None
) -> float:
    """Samples per second between the oldest sample inside the window and ``now``.

    ``node_id`` picks one node's count instead of the total. 0.0 without an older sample.
    """
    base = next((s for s in samples if now.at_ms - s.at_ms <= window_ms), None)
    if base is None or now.at_ms <= base.at_ms:
        return 0.0

    def count(s: RateSample) -> int:
        return s.total if node_id is None else s.by_node.get(node_id, 0)

    return max(0, count(now) - count(base)) * 1000 / (now.at_ms - base.at_ms)


def eta_seconds(remaining: int, rate: float) -> float | None:
    """Seconds to commit ``remaining`` samples at ``rate``; None when nothing moves."""
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate > 0 else None


class ThroughputTracker:
    """A ring buffer of ``RateSample`` taken at most every ``every_ms``, and its history."""

    def __init__(self, *, window_ms: int = 10_000, every_ms: int = 1000, capacity: int = 120):
        self.window_ms = window_ms
        self._every_ms = every_ms
        self._samples: deque[RateSample] = deque(maxlen=capacity)
        #: (at_ms, samples/s over the window ending then), for the chart.
        self._history: deque[tuple[int, float]] = deque(maxlen=capacity)

    def record(self, at_ms: int, total: int, by_node: Mapping[str, int]) -> None:
        """Keep a sample unless the last one is younger than ``every_ms``."""
        if self._samples and at_ms - self._samples[-1].at_ms < self._every_ms:
            return
        sample = RateSample(at_ms, total, dict(by_node))
        if self._samples:
            self._history.append((at_ms, window_rate(list(self._samples), sample, self.window_ms)))
        self._samples.append(sample)

    def rate(self, now: RateSample, node_id: str | None = None) -> float:
        """The windowed rate up to ``now`` (the job total, or one node's)."""
        return window_rate(list(self._samples), now, self.window_ms, node_id)

    def history(self) -> tuple[tuple[int, float], ...]:
        return tuple(self._history)

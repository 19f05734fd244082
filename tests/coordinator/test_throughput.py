"""The throughput ring buffer and its pure rate functions."""

from __future__ import annotations

import pytest

from mx8_coordinator.state.throughput import (
    RateSample,
    ThroughputTracker,
    eta_seconds,
    window_rate,
)


def test_throughput_window_rate_uses_the_oldest_sample_inside_the_window() -> None:
    samples = [RateSample(0, 0, {"a": 0}), RateSample(5_000, 500, {"a": 100})]
    now = RateSample(10_000, 600, {"a": 300})
    assert window_rate(samples, now, 10_000) == 60  # 600 in 10 s
    assert window_rate(samples, now, 6_000) == 20  # 100 in 5 s
    assert window_rate(samples, now, 6_000, node_id="a") == 40
    assert window_rate(samples, now, 1_000) == 0  # nothing old enough inside the window
    assert window_rate([], now, 10_000) == 0


@pytest.mark.parametrize(
    ("remaining", "rate", "eta"), [(100, 50.0, 2.0), (0, 0.0, 0.0), (-3, 1.0, 0.0), (5, 0.0, None)]
)
def test_throughput_eta_seconds(remaining: int, rate: float, eta: float | None) -> None:
    assert eta_seconds(remaining, rate) == eta


def test_throughput_tracker_is_a_bounded_ring_buffer_sampled_at_most_every_period() -> None:
    tracker = ThroughputTracker(window_ms=2_000, every_ms=1_000, capacity=5)
    for second in range(20):
        tracker.record(second * 1_000, second * 10, {})
        tracker.record(second * 1_000 + 500, second * 10 + 5, {})  # too soon: not kept
    history = tracker.history()
    assert len(history) == 5 and history[-1] == (19_000, 10.0)
    assert tracker.rate(RateSample(20_000, 200, {})) == 10.0

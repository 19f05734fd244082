"""``FakeClock``: a millisecond clock a test moves by hand (for ``clock=`` parameters)."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Returns ``now`` (ms) when called; ``advance(ms)`` moves it forward."""

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

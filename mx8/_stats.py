"""``LoaderStats``: what a loader (embedded or distributed) has moved so far.

Its own module so that ``loader`` and ``_distributed`` share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoaderStats"]


@dataclass(frozen=True)
class LoaderStats:
    """What a loader has moved so far."""

    bytes: int
    samples: int
    batches: int
    seconds: float
    retries: int

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

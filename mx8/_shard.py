"""Which sample ids a rank's batches hold: pure functions of the epoch order and the shard.

A rank's shard is the strided positions ``rank, rank + world, ...`` of the epoch order,
padded by wrapping (or cut) so every rank has the same number of samples and so the same
number of batches: DDP never waits on a rank that ran out early.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mx8_common.sample_order import EpochOrder, rank_positions

__all__ = ["Shard"]


@dataclass(frozen=True)
class Shard:
    """One rank's (and optionally one DataLoader worker's) view of an epoch."""

    order: EpochOrder
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    batch_size: int = 32
    drop_last_batch: bool = False

    @property
    def samples(self) -> int:
        """Samples of this rank in the epoch (equal for every rank)."""
        return len(
            rank_positions(self.order.total, self.rank, self.world_size, drop_last=self.drop_last)
        )

    @property
    def batches(self) -> int:
        n = self.samples
        return n // self.batch_size if self.drop_last_batch else -(-n // self.batch_size)

    def batch_bounds(self, batch_index: int) -> tuple[int, int]:
        """Half-open range of rank-local sample indices in batch ``batch_index``."""
        start = batch_index * self.batch_size
        return start, min(self.samples, start + self.batch_size)

    def ids(self, start: int, end: int) -> np.ndarray:
        """Sample ids at rank-local indices [start, end)."""
        total = self.order.total
        if end <= start or total == 0:
            return np.empty(0, dtype=np.uint64)
        first = self.rank + start * self.world_size
        last = self.rank + (end - 1) * self.world_size  # inclusive
        if last < total:
            return self.order.ids(first, last + 1)[:: self.world_size].copy()
        positions = np.arange(first, last + 1, self.world_size, dtype=np.int64) % total
        lo, hi = int(positions.min()), int(positions.max())
        span = self.order.ids(lo, hi + 1)
        return span[positions - lo]

"""EmbeddedEngine memory: queued and handed-out batches count toward max_inflight_bytes.

The ground truth is independent of the pipeline's own accounting: bytes the reader has
read so far minus bytes of batches the trainer has moved past. Every byte in between is
held somewhere (reorder buffer, the batch being assembled, the prefetch queue, the
trainer's hands), so its peak must stay within the budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mx8
from mx8._engine import EmbeddedEngine
from mx8.loader import DEFAULT_BLOCK_SIZE
from mx8_common.sample_order import EpochOrder, Shard
from mx8_common.storage.fetch_pipeline import FetchConfig

KiB = 1024


class _HeldBytesProbe:
    """Samples ``read - consumed`` on a thread while a slow trainer drains an engine."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.consumed = 0  # bytes of batches the trainer has moved past
        self.peak = 0
        self.peak_accounted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def held(self) -> int:
        return self.engine.read_bytes - self.consumed

    def _sample(self) -> None:
        # Seqlock: a sample is kept only if the trainer did not move on while it was taken
        # (moving on releases budget, and reads started after it would be counted twice).
        before = self.consumed
        read = self.engine.read_bytes
        if self.consumed == before:
            self.peak = max(self.peak, read - before)
        self.peak_accounted = max(self.peak_accounted, self.engine.held_bytes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.0005)

    def drain(self, stalled: Callable[[], bool], *, wait_s: float = 10.0) -> int:
        """Pull every batch, each only once ``stalled()`` (or ``wait_s`` passed); samples."""
        self._thread.start()
        samples = 0
        try:
            while True:
                batch = self.engine.next_batch()
                if batch is None:
                    return samples
                samples += len(batch)
                deadline = time.monotonic() + wait_s
                while not stalled() and time.monotonic() < deadline:
                    self._sample()
                    time.sleep(0.001)
                self._sample()
                # Moving past the batch: counted before next_batch releases its budget.
                self.consumed += len(batch.payload)
        finally:
            self._stop.set()
            self._thread.join()
            self.engine.close()


def _engine(root: Path, *, batch_size: int, budget: int, prefetch: int) -> EmbeddedEngine:
    loader = mx8.load(str(root), batch_size=batch_size)
    table = loader.table
    order = EpochOrder(len(table), DEFAULT_BLOCK_SIZE, False, 0, 0, loader.manifest_hash)
    return EmbeddedEngine(
        table,
        Shard(order, batch_size=batch_size),
        start_batch=0,
        fetch=FetchConfig(concurrency=4, max_inflight_bytes=budget),
        prefetch_batches=prefetch,
    )


def _write(root: Path, sizes: list[int]) -> int:
    root.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (root / f"{i:04d}.bin").write_bytes(bytes([i % 251]) * size)
    return sum(sizes)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_engine_queued_batches_stay_within_budget(
    tmp_path: Path, store_root: str, prefetch: int
) -> None:
    sample, batch_size = 4 * KiB, 4
    budget = 16 * sample  # room for 4 batches: reads, queue and trainer must share it
    total = _write(tmp_path / "d", [sample] * 96)
    engine = _engine(tmp_path / "d", batch_size=batch_size, budget=budget, prefetch=prefetch)
    probe = _HeldBytesProbe(engine)
    # The trainer is slow: it takes the next batch only once reads have filled the budget
    # (or everything is read), so the prefetch queue is as full as it will ever get.
    samples = probe.drain(lambda: probe.held() >= budget or engine.read_bytes == total)
    assert samples == 96
    assert probe.peak <= budget
    assert probe.peak_accounted <= budget
    # The budget, not something smaller, was the limit: it filled up.
    assert probe.peak == budget


def test_engine_oversized_sample_exceeds_budget_only_by_itself(
    tmp_path: Path, store_root: str
) -> None:
    sample, big, batch_size = 4 * KiB, 40 * KiB, 2
    budget = 4 * sample
    sizes = [sample] * 40
    sizes[11] = big  # bigger than the whole budget: must go through, alone
    total = _write(tmp_path / "d", sizes)
    engine = _engine(tmp_path / "d", batch_size=batch_size, budget=budget, prefetch=2)
    probe = _HeldBytesProbe(engine)
    # While the big sample waits for everything else to be released, reads cannot fill the
    # budget: the short bounded wait then lets the trainer move on.
    samples = probe.drain(lambda: probe.held() >= budget or engine.read_bytes == total, wait_s=0.2)
    assert samples == 40
    assert probe.peak <= budget + big
    assert probe.peak_accounted <= budget + big
    assert probe.peak >= big  # the big sample really was read and held

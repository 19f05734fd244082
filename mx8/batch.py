"""``Batch``: what the trainer API yields — sample ids, their bytes, labels, epoch and,
when asked for, each sample's object location."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch"]


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch of samples.

    The bytes of all samples are one buffer: sample ``i`` is
    ``payload[offsets[i]:offsets[i + 1]]`` (``offsets`` has ``len(self) + 1`` entries), so a
    batch costs one allocation however many samples it holds. ``payloads`` gives the
    per-sample view when that is easier. ``locations`` (each sample's object URL, as the
    manifest names it) is None unless the stream was opened with ``want_locations``.
    """

    sample_ids: np.ndarray
    payload: bytes
    offsets: np.ndarray
    labels: np.ndarray | None
    epoch: int
    locations: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def payloads(self) -> list[bytes]:
        """The bytes of each sample, in order."""
        view = memoryview(self.payload)
        bounds = self.offsets.tolist()
        return [bytes(view[a:b]) for a, b in itertools.pairwise(bounds)]

    def to_torch(self) -> dict[str, Any]:
        """Tensors: ``sample_ids`` int64, ``payloads`` list of uint8, ``labels`` int64 or None.

        Imports torch only here: mx8 itself does not need it.
        """
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - exercised only without torch
            raise ImportError(
                "Batch.to_torch() needs PyTorch; install it with `pip install mx8[torch]`"
            ) from exc
        flat = torch.frombuffer(bytearray(self.payload), dtype=torch.uint8)
        bounds = self.offsets.tolist()
        return {
            "sample_ids": torch.from_numpy(self.sample_ids.astype(np.int64)),
            "payloads": [flat[a:b] for a, b in itertools.pairwise(bounds)],
            "labels": None
            if self.labels is None
            else torch.from_numpy(self.labels.astype(np.int64)),
            "epoch": self.epoch,
        }

    def __repr__(self) -> str:
        return (
            f"Batch(epoch={self.epoch}, samples={len(self)}, bytes={len(self.payload)}, "
            f"labels={'yes' if self.labels is not None else 'no'})"
        )

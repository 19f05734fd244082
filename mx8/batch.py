"""``Batch``: what the trainer API yields — sample ids, their bytes, labels, epoch and,
when asked for, each sample's object location."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np

__all__ = ["Batch"]

#: A bytes-like sample buffer (``bytes``, or the native client's ``obstore.Bytes``); typed
#: loosely because ``collections.abc.Buffer`` needs Python 3.12.
Buffer: TypeAlias = Any


class Batch:
    """One batch of samples.

    ``payload`` is the bytes of all samples as one buffer: sample ``i`` is
    ``payload[offsets[i]:offsets[i + 1]]`` (``offsets`` has ``len(self) + 1`` entries).
    ``payloads`` gives each sample's bytes, ``views()`` zero-copy views of them.
    ``locations`` (each sample's object URL, as the manifest names it) is None unless the
    stream was opened with ``want_locations``.

    A batch read in this process (``Batch.from_parts``) keeps each sample's buffer as it
    arrived and joins them into ``payload`` only when ``payload`` is first asked for: a
    trainer that takes samples one by one (``payloads``, ``views()``) pays no copy of the
    whole batch. A batch is read-only once built; pickling sends the joined bytes.
    """

    __slots__ = ("_parts", "_payload", "epoch", "labels", "locations", "offsets", "sample_ids")

    sample_ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None
    epoch: int
    locations: tuple[str, ...] | None

    def __init__(
        self,
        sample_ids: np.ndarray,
        payload: bytes,
        offsets: np.ndarray,
        labels: np.ndarray | None,
        epoch: int,
        locations: tuple[str, ...] | None = None,
    ) -> None:
        self.sample_ids = sample_ids
        self._payload: bytes | None = payload
        self._parts: Sequence[Buffer] | None = None
        self.offsets = offsets
        self.labels = labels
        self.epoch = epoch
        self.locations = locations

    @classmethod
    def from_parts(
        cls,
        sample_ids: np.ndarray,
        parts: Sequence[Buffer],
        offsets: np.ndarray,
        labels: np.ndarray | None,
        epoch: int,
        locations: tuple[str, ...] | None = None,
    ) -> Batch:
        """A batch whose sample ``i`` is the buffer ``parts[i]`` (of ``offsets[i + 1] -
        offsets[i]`` bytes), joined into ``payload`` on first use."""
        batch = cls(sample_ids, b"", offsets, labels, epoch, locations)
        batch._payload = None
        batch._parts = parts
        return batch

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def payload(self) -> bytes:
        """The bytes of every sample, one after another (joined on first use)."""
        payload = self._payload
        if payload is None:
            parts = self._parts
            assert parts is not None  # one of the two is always set
            payload = self._payload = b"".join(parts)
            self._parts = None  # the joined copy serves from now on
        return payload

    @property
    def nbytes(self) -> int:
        """Payload bytes of the batch (without joining them)."""
        return int(self.offsets[-1]) if len(self.offsets) else 0

    def views(self) -> list[memoryview]:
        """Each sample's bytes as a read-only view: no copy, valid as long as the batch."""
        parts = self._parts
        if parts is not None:
            return [memoryview(p).toreadonly() for p in parts]
        view = memoryview(self.payload).toreadonly()
        bounds = self.offsets.tolist()
        return [view[a:b] for a, b in itertools.pairwise(bounds)]

    @property
    def payloads(self) -> list[bytes]:
        """The bytes of each sample, in order."""
        parts = self._parts
        if parts is not None:
            return [p if type(p) is bytes else bytes(p) for p in parts]
        view = memoryview(self.payload)
        bounds = self.offsets.tolist()
        return [bytes(view[a:b]) for a, b in itertools.pairwise(bounds)]

    def __setattr__(self, name: str, value: Any) -> None:
        # Read-only like the frozen dataclass it was; the private buffers are its own.
        if not name.startswith("_") and hasattr(self, name):
            raise AttributeError(f"cannot assign to field {name!r}: a Batch is read-only")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Across processes (DataLoader workers) as plain bytes: a native buffer is not
        # picklable, and one joined buffer is what the other side would make anyway.
        args = (self.sample_ids, self.payload, self.offsets, self.labels, self.epoch)
        return (Batch, (*args, self.locations))

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
        # A writable copy for torch: straight from the samples' buffers when not joined yet.
        parts = self._parts
        buffer = bytearray().join(parts) if parts is not None else bytearray(self.payload)
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
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
            f"Batch(epoch={self.epoch}, samples={len(self)}, bytes={self.nbytes}, "
            f"labels={'yes' if self.labels is not None else 'no'})"
        )

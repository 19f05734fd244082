"""``Mx8Loader``: what ``mx8.load`` returns, embedded or distributed.

``mx8.load`` gives an embedded ``mx8.Loader`` or, with ``agent=``/``MX8_AGENT_URL``, a
loader served by the host's agent; both are ``Mx8Loader``s, so trainer code (and
``mx8.DataLoader``) is written once against this protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, Self, runtime_checkable

from mx8._stats import LoaderStats
from mx8.batch import Batch

__all__ = ["Mx8Loader"]


@runtime_checkable
class Mx8Loader(Protocol):
    """Batches of one snapshot for this trainer: ``for batch in loader`` walks one epoch."""

    @property
    def manifest_hash(self) -> str:
        """The content hash of the snapshot being read."""
        ...

    @property
    def total_samples(self) -> int:
        """Samples in the snapshot (all ranks together)."""
        ...

    @property
    def classes(self) -> list[str] | None:
        """Class names in label-id order (imagefolder snapshots), else None."""
        ...

    def __iter__(self) -> Iterator[Batch]:
        """This trainer's batches of the current epoch."""
        ...

    def __len__(self) -> int:
        """Batches of this trainer in one epoch."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` on the next iteration (where the loader runs the epochs)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Where this trainer is, for ``load_state_dict`` after a restart."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` of a loader over the same snapshot."""
        ...

    def stats(self) -> LoaderStats:
        """What this loader has moved so far."""
        ...

    def close(self) -> None:
        """Stop fetching and release what the loader holds; safe to call twice."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

"""``mx8.DataLoader``: an mx8 loader as a PyTorch ``IterableDataset``.

It iterates like ``mx8.load`` (one ``Batch``, or ``collate_fn(batch)``, per step) and plugs
into ``torch.utils.data.DataLoader(ds, batch_size=None, num_workers=N)``. Inside worker
``w`` of ``W`` it yields only the rank's batches ``w, w + W, ...`` (counted from the resume
point), so the workers together yield every sample exactly once, and torch's round-robin
merge of the workers gives the same batch order as ``num_workers=0``.

Workers get a pickled copy: the resolved loader (its manifest table and any running
engine) is dropped on pickling and rebuilt lazily in the worker from the snapshot pinned
by hash, so every worker reads the very snapshot the parent resolved, at the parent's
epoch and resume position.

torch stays optional: without it ``DataLoader`` is a plain iterable object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from mx8._config import TrainerConfig
from mx8._loader_protocol import Mx8Loader
from mx8.batch import Batch
from mx8.loader import Loader, load
from mx8_common.errors import ConfigError
from mx8_common.link import parse_dataset_link

try:  # torch is optional: a plain object base keeps `for batch in ds` working without it.
    from torch.utils.data import IterableDataset as _DatasetBase
    from torch.utils.data import get_worker_info as _get_worker_info
except ImportError:  # pragma: no cover - exercised only where torch is not installed
    _DatasetBase = object  # type: ignore[assignment,misc]
    _get_worker_info = None  # type: ignore[assignment]

__all__ = ["DataLoader"]


def _worker_split() -> tuple[int, int]:
    """(worker id, number of workers) of the calling torch DataLoader worker, else (0, 1)."""
    info = _get_worker_info() if _get_worker_info is not None else None
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def _pinned(link: str, manifest_hash: str) -> str:
    """``link`` pinned to ``manifest_hash`` so a worker reuses the parent's snapshot."""
    parsed = parse_dataset_link(link)
    return dataclasses.replace(parsed, mode="pinned", pinned_hash=manifest_hash).display()


class DataLoader(_DatasetBase):  # type: ignore[misc,valid-type]
    """Batches of a dataset link, usable on its own or inside ``torch.utils.data.DataLoader``.

    Takes the arguments of ``mx8.load`` plus ``collate_fn(batch) -> anything``, applied to
    every ``Batch`` before it is yielded. Use ``batch_size=None`` in torch's DataLoader: mx8
    already batches. Across epochs, call ``set_epoch(e)`` before each loop (like
    ``DistributedSampler``); with ``persistent_workers=True`` workers keep the epoch they
    started with, so leave it off. ``state_dict``/``load_state_dict`` describe the
    single-process iteration (``num_workers=0``); a state loaded before handing the object to
    torch's DataLoader makes its workers resume from there.
    """

    def __init__(
        self,
        link: str,
        *,
        recursive: bool = True,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        label_mode: str = "auto",
        store: str | None = None,
        max_inflight_bytes: int | None = None,
        agent: str | None = None,
        job: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        fetch_concurrency: int | None = None,
        collate_fn: Callable[[Batch], Any] | None = None,
    ) -> None:
        self.link = link
        self.collate_fn = collate_fn
        self._options: dict[str, Any] = {
            "recursive": recursive,
            "batch_size": batch_size,
            "shuffle": shuffle,
            "seed": seed,
            "epoch": epoch,
            "label_mode": label_mode,
            "store": store,
            "max_inflight_bytes": max_inflight_bytes,
            "agent": agent,
            "job": job,
            "rank": rank,
            "world_size": world_size,
            "drop_last": drop_last,
            "fetch_concurrency": fetch_concurrency,
        }
        # Resolve now, in the parent: a bad link fails at construction, and the hash is
        # fixed before any worker exists.
        self._loader: Mx8Loader | None = load(link, **self._options)
        self._manifest_hash: str | None = self._loader.manifest_hash
        self._classes: list[str] | None = self._loader.classes
        # Distributed loaders have no fixed length: the coordinator balances work at run time.
        self._length: int | None = len(self._loader) if self._embedded else None
        self._pending_state: dict[str, Any] | None = None

    # -- the wrapped loader -----------------------------------------------------------

    @property
    def loader(self) -> Mx8Loader:
        """The ``mx8.Loader`` (or distributed loader) behind this object, built on demand."""
        if self._loader is None:
            link = self.link
            if self._manifest_hash is not None and self._embedded:
                link = _pinned(link, self._manifest_hash)
            self._loader = load(link, **self._options)
            if self._pending_state is not None:
                self._loader.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._loader

    @property
    def _embedded(self) -> bool:
        return not (self._options["agent"] or TrainerConfig.from_env().agent_url)

    @property
    def manifest_hash(self) -> str | None:
        """The content hash of the snapshot being read."""
        return self._manifest_hash

    @property
    def classes(self) -> list[str] | None:
        """Class names in label-id order (imagefolder snapshots), else None."""
        return self._classes

    @property
    def batch_size(self) -> int:
        return int(self._options["batch_size"])

    def __len__(self) -> int:
        """Batches of this rank in one epoch (over all DataLoader workers together)."""
        if self._length is None:
            return len(self.loader)  # raises the distributed loader's TypeError
        return self._length

    # -- iteration --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        worker, workers = _worker_split()
        loader = self.loader
        if workers == 1:
            batches = iter(loader)
        elif isinstance(loader, Loader):
            batches = loader.iter_worker(worker, workers)
        else:
            raise ConfigError(
                "distributed mode (agent=... or MX8_AGENT_URL) serves one stream per trainer; "
                "use torch.utils.data.DataLoader(..., num_workers=0) with it"
            )
        return self._collated(batches)

    def _collated(self, batches: Iterator[Batch]) -> Iterator[Any]:
        try:
            for batch in batches:
                yield self.collate(batch)
        finally:
            # An abandoned loop stops the fetch engine now, not whenever GC gets to it.
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def collate(self, batch: Batch) -> Any:
        """What one step yields for ``batch``: ``collate_fn(batch)``, or the batch itself."""
        return batch if self.collate_fn is None else self.collate_fn(batch)

    # -- epochs and resume ------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning on the next iteration."""
        self.loader.set_epoch(epoch)
        self._options["epoch"] = epoch

    @property
    def epoch(self) -> int:
        """The epoch the next loop reads (embedded mode; the coordinator runs distributed ones)."""
        loader = self.loader
        if not isinstance(loader, Loader):
            raise ConfigError(
                "distributed mode has no local epoch: the coordinator runs the epochs "
                "(mx8-coordinator --epochs); read batch.epoch instead"
            )
        return loader.epoch

    def state_dict(self) -> dict[str, Any]:
        """Where the single-process iteration is (manifest_hash, epoch, seed, position...)."""
        return dict(self.loader.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; a state of another snapshot is a ``ConfigError``."""
        self.loader.load_state_dict(state)

    def stats(self) -> dict[str, Any]:
        """What this process has moved: bytes, samples, batches, seconds, retries."""
        raw = self.loader.stats()
        out = dataclasses.asdict(raw)
        out["samples_per_second"] = raw.samples_per_second
        return out

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Stop any running fetch engine; safe to call twice."""
        if self._loader is not None:
            self._loader.close()

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Workers rebuild the loader from the pinned snapshot; carry the parent's position
        # (epoch, resume point) over so they continue where the parent stands.
        state = self.__dict__.copy()
        loader = state.pop("_loader")
        state["_loader"] = None
        if isinstance(loader, Loader):
            state["_pending_state"] = loader.state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.link!r}, manifest_hash={self._manifest_hash}, "
            f"batches={self._length}, batch_size={self.batch_size})"
        )

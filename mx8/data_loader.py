"""``mx8.DataLoader``: an mx8 loader as a PyTorch ``IterableDataset``.

It iterates like ``mx8.load`` (one ``Batch``, or ``collate_fn(batch)``, per step) and plugs
into ``torch.utils.data.DataLoader(ds, batch_size=None, num_workers=N)``. Inside worker
``w`` of ``W`` it yields only the rank's batches ``w, w + W, ...`` (counted from the resume
point), so the workers together yield every sample exactly once, and torch's round-robin
merge of the workers gives the same batch order as ``num_workers=0``.

Workers get a pickled copy: the resolved loader (its manifest table and any running
engine) is dropped on pickling and rebuilt lazily in the worker from the snapshot pinned
by hash, so every worker reads the very snapshot the parent resolved. Each time torch
starts an epoch in a worker (also a persistent one) the worker takes the parent's current
epoch and position from shared memory (``mx8._worker_sync``), so ``set_epoch`` in the
parent reaches workers that torch keeps across epochs.

Resume with workers: torch's own DataLoader does not tell the dataset what the main process
consumed, so ``state_dict()`` of a loader whose batches went through workers raises instead
of returning a stale position. torchdata's ``StatefulDataLoader`` asks each worker's copy for
its ``state_dict()`` with every batch and hands it back to that worker's
``load_state_dict()`` on resume: that path is exact.

torch stays optional: without it ``DataLoader`` is a plain iterable object.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

from mx8._config import TrainerConfig
from mx8._loader_protocol import Mx8Loader
from mx8._worker_sync import SharedLoaderState, spawning
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


def _worker_split() -> tuple[int, int] | None:
    """(worker id, number of workers) of the calling torch DataLoader worker, else None."""
    info = _get_worker_info() if _get_worker_info is not None else None
    return None if info is None else (int(info.id), int(info.num_workers))


_STALE_STATE = (
    "this mx8.DataLoader's batches went through torch DataLoader workers (num_workers>0), "
    "and torch does not tell the dataset how many of them your loop consumed, so its "
    "state_dict() would replay or skip data; for exact resume with workers use torchdata's "
    "StatefulDataLoader (pip install torchdata) and checkpoint its state_dict(), which "
    "carries each worker's mx8 position; or take this state_dict() after set_epoch() for the "
    "next epoch, or iterate with num_workers=0"
)


def _pinned(link: str, manifest_hash: str) -> str:
    """``link`` pinned to ``manifest_hash`` so a worker reuses the parent's snapshot."""
    parsed = parse_dataset_link(link)
    return dataclasses.replace(parsed, mode="pinned", pinned_hash=manifest_hash).display()


class DataLoader(_DatasetBase):  # type: ignore[misc,valid-type]
    """Batches of a dataset link, usable on its own or inside ``torch.utils.data.DataLoader``.

    Takes the arguments of ``mx8.load`` plus ``collate_fn(batch) -> anything``, applied to
    every ``Batch`` before it is yielded. Use ``batch_size=None`` in torch's DataLoader: mx8
    already batches. Across epochs, call ``set_epoch(e)`` before each loop (like
    ``DistributedSampler``); workers, persistent ones included, start each epoch from the
    parent's epoch and position. ``state_dict``/``load_state_dict`` describe the iteration
    in this process (``num_workers=0``, or torchdata's ``StatefulDataLoader`` with any
    ``num_workers``, which calls them inside each worker); a state loaded before handing the
    object to torch's DataLoader makes its workers resume from there.
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
        files: str | None = None,
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
            "files": files,
        }
        # Resolve now, in the parent: a bad link fails at construction, and the hash is
        # fixed before any worker exists.
        self._loader: Mx8Loader | None = load(link, **self._options)
        self._manifest_hash: str | None = self._loader.manifest_hash
        self._classes: list[str] | None = self._loader.classes
        # Distributed loaders have no fixed length: the coordinator balances work at run time.
        self._length: int | None = len(self._loader) if self._embedded else None
        self._pending_state: dict[str, Any] | None = None
        # What workers start each epoch from; see mx8._worker_sync.
        self._shared: SharedLoaderState | None = SharedLoaderState()
        # The running loop, weakly: a loop the caller drops must still close on GC.
        self._active: weakref.ref[Generator[Any, None, None]] | None = None
        # Inside a worker: the next batch index this worker yields (its resume point).
        self._next_batch = 0
        self._worker_resume: int | None = None  # set by load_state_dict inside a worker
        self._publish()

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
        split = _worker_split()
        loader = self.loader
        if split is None or (split[1] == 1 and not isinstance(loader, Loader)):
            batches = iter(loader)
            return self._track(self._collated(lambda: batches, None))
        if not isinstance(loader, Loader):
            raise ConfigError(
                "distributed mode (agent=... or MX8_AGENT_URL) serves one stream per trainer; "
                "use torch.utils.data.DataLoader(..., num_workers=0) with it"
            )
        return self._track(self._worker_batches(loader, *split))

    def _track(self, loop: Generator[Any, None, None]) -> Generator[Any, None, None]:
        self._active = weakref.ref(loop)
        return loop

    def _worker_batches(
        self, loader: Loader, worker: int, workers: int
    ) -> Generator[Any, None, None]:
        """This worker's share of the epoch: batches ``b, b + workers, ...``.

        The start is fixed now (a ``StatefulDataLoader`` asks for the state right away);
        the fetch engine starts with the first batch, so a loop torch never advances
        leaves nothing running.
        """
        # A persistent worker whose previous epoch was abandoned still holds that loop.
        self._close_active()
        resume, self._worker_resume = self._worker_resume, None
        if resume is None:
            shared = self._shared.take() if self._shared is not None else None
            if shared is not None:
                loader.load_state_dict(shared)
            resume = -(-loader.state_dict()["position"] // loader.batch_size) + worker
        self._next_batch = resume
        if resume >= len(loader):
            return self._collated(lambda: iter(()), workers)
        # iter_worker starts worker w at batch ceil(position / batch_size) + w.
        state = loader.state_dict()
        loader.load_state_dict({**state, "position": (resume - worker) * loader.batch_size})
        return self._collated(lambda: loader.iter_worker(worker, workers), workers)

    def _collated(
        self, open_batches: Callable[[], Iterator[Batch]], worker_step: int | None
    ) -> Generator[Any, None, None]:
        batches = open_batches()
        try:
            for batch in batches:
                if worker_step is None:
                    self._publish()
                else:
                    self._next_batch += worker_step
                yield self.collate(batch)
        finally:
            # An abandoned loop stops the fetch engine now, not whenever GC gets to it.
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _close_active(self) -> None:
        ref, self._active = self._active, None
        active = ref() if ref is not None else None
        if active is not None:
            active.close()

    def _publish(self) -> None:
        """Share this process's position with workers that start an epoch later."""
        if self._shared is not None and isinstance(self._loader, Loader):
            self._shared.publish(self._loader.state_dict())

    def collate(self, batch: Batch) -> Any:
        """What one step yields for ``batch``: ``collate_fn(batch)``, or the batch itself."""
        return batch if self.collate_fn is None else self.collate_fn(batch)

    # -- epochs and resume ------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning on the next iteration."""
        self.loader.set_epoch(epoch)
        self._options["epoch"] = epoch
        self._publish()

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
        """Where the iteration in this process is (manifest_hash, epoch, seed, position...).

        Inside a torch worker (torchdata's ``StatefulDataLoader`` asks there) the state also
        names the worker and the next batch it yields. In the parent of workers that took
        its current position, a ``ConfigError``: that position is stale.
        """
        split = _worker_split()
        state = dict(self.loader.state_dict())
        if split is not None and isinstance(self.loader, Loader):
            state["worker"] = {
                "id": split[0],
                "num_workers": split[1],
                "next_batch": self._next_batch,
            }
        elif self._shared is not None and self._shared.taken_by_workers():
            raise ConfigError(_STALE_STATE)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; a state of another snapshot is a ``ConfigError``."""
        state = dict(state)
        worker_state = state.pop("worker", None)
        split = _worker_split()
        if worker_state is not None and split is None:
            raise ConfigError(
                f"this state was taken inside torch DataLoader worker {worker_state['id']}; "
                "restore it with the StatefulDataLoader.load_state_dict() it came from, or "
                "take the state with num_workers=0"
            )
        self.loader.load_state_dict(state)
        if split is None:
            self._publish()
            return
        if worker_state is None:
            # A whole-loader state inside a worker: this worker's share starts at it.
            self._worker_resume = -(-int(state["position"]) // self.batch_size) + split[0]
            return
        if (worker_state["id"], worker_state["num_workers"]) != split:
            raise ConfigError(
                f"this state belongs to DataLoader worker {worker_state['id']} of "
                f"{worker_state['num_workers']}, but it is loaded in worker {split[0]} of "
                f"{split[1]}; resume with the same num_workers"
            )
        self._worker_resume = int(worker_state["next_batch"])

    def stats(self) -> dict[str, Any]:
        """What this process has moved: bytes, samples, batches, seconds, retries."""
        raw = self.loader.stats()
        out = dataclasses.asdict(raw)
        out["samples_per_second"] = raw.samples_per_second
        return out

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Stop any running fetch engine; safe to call twice."""
        self._close_active()
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
        state["_active"] = None
        if isinstance(loader, Loader):
            state["_pending_state"] = loader.state_dict()
        # Shared memory travels only to a process being spawned (a torch worker); any other
        # copy stands alone.
        if not spawning():
            state["_shared"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._shared is None:
            self._shared = SharedLoaderState()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.link!r}, manifest_hash={self._manifest_hash}, "
            f"batches={self._length}, batch_size={self.batch_size})"
        )

"""``mx8.load``: the iterator a trainer holds.

Embedded by default: the snapshot is resolved in-process and a background engine fetches
the rank's samples. When ``agent=`` (or ``MX8_AGENT_URL``) names a local ``mx8d-agent``,
the same iterator is served by the agent, which got the job from the coordinator.

The order is a pure function of (manifest_hash, seed, epoch): ``EpochOrder`` (block +
in-block shuffle, the coordinator's too), then the rank's strided, equal-length ``Shard``
(the agents cut the same one). ``state_dict()`` is O(1) (manifest hash, epoch, step,
global ``consumed`` positions, seed, world and batch size; see ``mx8._state``): restoring
it continues the epoch without replaying fetched data, also at another world size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from mx8._config import TrainerConfig, resolve_rank
from mx8._engine import EmbeddedEngine
from mx8._loader_protocol import Mx8Loader
from mx8._state import EpochCursor, LoaderShape, build_state, resume_cursor
from mx8._stats import LoaderStats
from mx8.batch import Batch
from mx8_common.errors import ConfigError
from mx8_common.manifest.table import ManifestTable
from mx8_common.sample_order import MAX_BLOCK_SIZE, JobOrder, Shard
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot_sync
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReaderConfig

__all__ = ["Loader", "LoaderStats", "load"]

DEFAULT_BLOCK_SIZE = 65536


class Loader:
    """Batches of one rank's shard of a snapshot, in deterministic order.

    Iterating consumes the current epoch: a loop that stops early and starts again goes on
    where it stopped, and an exhausted epoch yields nothing more until ``set_epoch``.
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
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        fetch_concurrency: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch_batches: int = 2,
        files: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size}; it must be at least 1")
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ConfigError(
                f"block_size is {block_size}; it must be in [1, {MAX_BLOCK_SIZE}] (samples per "
                "shuffle block)"
            )
        if prefetch_batches < 1:
            raise ConfigError(f"prefetch_batches is {prefetch_batches}; it must be at least 1")
        rank, world_size = resolve_rank(rank, world_size)
        self.link = link
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.block_size = block_size
        self._prefetch = prefetch_batches
        # The same variables and parsers as mx8d-agent's --fetch-* flags; arguments win.
        self._fetch = FetchConfig.from_env(
            concurrency=fetch_concurrency, max_inflight_bytes=max_inflight_bytes
        )
        self._reader = ObjectReaderConfig.from_env()
        resolver = SnapshotResolverConfig.from_env(
            recursive=recursive,
            label_mode=label_mode,
            store_root=store,
            materialize_manifest_bytes=True,
            files=files,
        )
        snapshot = resolve_snapshot_sync(link, resolver)
        assert snapshot.manifest_data is not None
        self.snapshot = snapshot
        self.table = ManifestTable.from_bytes(
            snapshot.manifest_data, expected_hash=snapshot.manifest_hash
        )
        self.classes: list[str] | None = (
            list(snapshot.class_names) if snapshot.class_names else None
        )
        self._cursor = EpochCursor(epoch=epoch)
        self._lock = threading.Lock()
        self._engine: EmbeddedEngine | None = None
        self._bytes = 0
        self._samples = 0
        self._batches = 0
        self._retries = 0
        self._seconds = 0.0

    # -- shape of the data ------------------------------------------------------------

    @property
    def manifest_hash(self) -> str:
        return self.snapshot.manifest_hash

    @property
    def epoch(self) -> int:
        return self._cursor.epoch

    @property
    def total_samples(self) -> int:
        return len(self.table)

    def _shape(self) -> LoaderShape:
        job = JobOrder(
            manifest_hash=self.manifest_hash,
            total_samples=len(self.table),
            block_size=self.block_size,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        return LoaderShape(
            link=self.link,
            job=job,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
        )

    def _shard(self) -> Shard:
        return self._shape().shard(self._cursor)

    def __len__(self) -> int:
        """Batches of this rank in the current epoch (equal on every rank).

        After an elastic resume this counts the batches taken before it too, so the
        epoch's last step is ``len(loader) - 1`` either way.
        """
        return self._cursor.base_step + self._shard().batches

    # -- iteration --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_worker(0, 1)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[Batch]:
        """Worker ``worker``'s share of the rest of the epoch: every ``num_workers``-th batch.

        Counted from the resume point, so worker 0 gets the next batch, worker 1 the one
        after, and a round-robin merge of the workers (what ``torch.utils.data.DataLoader``
        does) is the single-process order. ``iter(loader)`` is ``iter_worker(0, 1)``.
        """
        if num_workers < 1 or not 0 <= worker < num_workers:
            raise ConfigError(
                f"worker {worker} of {num_workers} is not a valid split; "
                "need 0 <= worker < num_workers"
            )
        with self._lock:
            if self._engine is not None:
                raise RuntimeError(
                    "this loader is already being iterated; finish or close() that loop first"
                )
            shard = self._shard()
            position = self._cursor.position
            if position % self.batch_size and position < shard.samples:
                raise ConfigError("resume position is not on a batch boundary")
            start_batch = -(-position // self.batch_size) + worker
            if start_batch >= shard.batches:
                return iter(())
            engine = EmbeddedEngine(
                self.table,
                shard,
                start_batch=start_batch,
                batch_step=num_workers,
                fetch=self._fetch,
                reader=self._reader,
                prefetch_batches=self._prefetch,
                listed_at=self.snapshot.listed_at,
            )
            self._engine = engine
        indices = range(start_batch, shard.batches, num_workers)
        return self._iterate(engine, shard, iter(indices))

    def _iterate(
        self, engine: EmbeddedEngine, shard: Shard, indices: Iterator[int]
    ) -> Iterator[Batch]:
        try:
            while True:
                t0 = time.perf_counter()
                batch = engine.next_batch()
                self._seconds += time.perf_counter() - t0
                if batch is None:
                    return
                # The position is the end of the batch just handed out, so a state taken
                # now resumes right after it (for a worker: after its own last batch).
                self._cursor.position = shard.batch_bounds(next(indices))[1]
                self._cursor.loaded = False
                self._samples += len(batch)
                self._bytes += batch.nbytes
                self._batches += 1
                self._retries = engine.retries
                yield batch
        finally:
            engine.close()
            with self._lock:
                if self._engine is engine:
                    self._engine = None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning on the next iteration.

        Right after ``load_state_dict`` of a state in epoch ``epoch`` it keeps the
        state's position, so the usual epoch loop resumes mid-epoch.
        """
        if self._engine is not None:
            raise RuntimeError("cannot change the epoch while iterating; finish the loop first")
        self._cursor.restart(epoch)

    # -- resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is, O(1): enough to continue the exact remaining order.

        Every rank of a lockstep job holds the same ``epoch``, ``step`` and ``consumed``,
        so any rank's state resumes any rank, at any world size (see ``mx8._state``).
        """
        return build_state(self._shape(), self._cursor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` of a loader over the same snapshot and order.

        At the same world size this is the uninterrupted continuation; at another one
        the new world shares out the epoch's not yet consumed samples (elastic resume).
        """
        if self._engine is not None:
            raise RuntimeError("cannot load a state while iterating; finish the loop first")
        self._cursor, self.seed = resume_cursor(self._shape(), state, fixed_seed=False)

    # -- lifecycle --------------------------------------------------------------------

    def stats(self) -> LoaderStats:
        return LoaderStats(self._bytes, self._samples, self._batches, self._seconds, self._retries)

    def close(self) -> None:
        """Stop any running fetch engine; safe to call twice."""
        engine = self._engine
        if engine is not None:
            engine.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()

    def __repr__(self) -> str:
        return (
            f"Loader({self.link!r}, manifest_hash={self.manifest_hash[:12]}..., "
            f"samples={len(self.table)}, epoch={self.epoch}, rank={self.rank}/{self.world_size})"
        )


def load(
    link: str,
    *,
    recursive: bool = True,
    batch_size: int = 32,
    shuffle: bool | None = None,
    seed: int | None = None,
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
    files: str | None = None,
    world_wait_timeout_s: float | None = None,
) -> Mx8Loader:
    """Batches of the dataset at ``link`` (``s3://``, ``gs://`` or ``az://`` prefix, ``/abs/dir``, ``file://``).

    Embedded (in-process, a ``Loader``) unless ``agent`` or ``MX8_AGENT_URL`` names a local
    mx8d-agent, in which case the agent serves the coordinator's job; either way the result
    is an ``mx8.Mx8Loader``. Rank and world size come from
    ``rank``/``world_size`` or torchrun's ``RANK``/``WORLD_SIZE`` in both modes; ``shuffle``
    and ``seed`` default to off/0 embedded and to the job's (``--shuffle``/``--seed``)
    distributed, where a value other than the job's is a ``ContractError``. In the
    coordinator's default rank-exact mode each rank gets embedded mode's batches; a rank
    waits (printing what for) until every rank of its world joined, for at most
    ``world_wait_timeout_s`` (default ``MX8_WORLD_WAIT_TIMEOUT_S`` or 600 s).

    Embedded, ``max_inflight_bytes`` bounds every sample byte the loader holds: reads in
    flight, the reorder buffer, prefetched batches and the batch last handed out (released
    when the next one is asked for); a single batch bigger than it still goes through,
    alone. ``fetch_concurrency`` is the most reads in flight, and the S3 connection pool
    is sized to match. Left None, both come from ``MX8_MAX_INFLIGHT_BYTES`` /
    ``MX8_FETCH_CONCURRENCY`` (defaults 256 MiB and 64), like the rest of the data plane's
    ``MX8_FETCH_*`` settings, exactly as ``mx8d-agent`` reads them. ``files="images"`` keeps
    only image files inside class folders (torchvision ImageFolder's rule: no hidden files,
    nothing directly under the root); left None, ``MX8_SNAPSHOT_FILES`` or ``"all"``.
    """
    agent = agent or TrainerConfig.from_env().agent_url
    if agent:
        from mx8._distributed import open_distributed

        return open_distributed(
            agent,
            link=link,
            job=job,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            world_wait_timeout_s=world_wait_timeout_s,
        )
    return Loader(
        link,
        recursive=recursive,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        seed=seed or 0,
        epoch=epoch,
        label_mode=label_mode,
        store=store,
        max_inflight_bytes=max_inflight_bytes,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        fetch_concurrency=fetch_concurrency,
        files=files,
    )

"""The embedded fetch engine: an asyncio loop (uvloop) on a background thread.

The trainer's thread pulls ``Batch``es; the engine thread runs a ``FetchPipeline`` over
the shard's sample ids and keeps at most ``prefetch_batches`` finished batches ahead.
Those batches stay inside the pipeline's byte budget: a batch is charged from its first
read until the trainer asks for the batch after it, so reads in flight, the reorder
buffer, the queued batches and the trainer's current batch together stay within
``max_inflight_bytes`` (a single batch bigger than the budget goes through alone).
Errors cross to the trainer's thread as the original exception. ``close()`` (also on
garbage collection and Ctrl-C, through the iterator's ``finally``) cancels the engine and
joins its thread: nothing keeps running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
from collections.abc import Iterator

import numpy as np

from mx8.batch import Batch
from mx8_common.manifest.table import ManifestTable
from mx8_common.sample_order import Shard
from mx8_common.storage.fetch_pipeline import (
    FetchBatch,
    FetchConfig,
    FetchPipeline,
    FetchRequest,
    table_requests,
)
from mx8_common.storage.object_reader import ObjectReader, ObjectReaderConfig
from mx8_common.storage.s3_client import S3Settings

__all__ = ["EmbeddedEngine"]

_END = object()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is for odd platforms
        return asyncio.new_event_loop()


class EmbeddedEngine:
    """Fetches one shard's batches ``start_batch, start_batch + batch_step, ...`` on a thread.

    ``batch_step`` > 1 is a DataLoader worker's share: every ``batch_step``-th batch.
    """

    def __init__(
        self,
        table: ManifestTable,
        shard: Shard,
        *,
        start_batch: int,
        batch_step: int = 1,
        fetch: FetchConfig,
        reader: ObjectReaderConfig | None = None,
        prefetch_batches: int = 2,
        listed_at: float | None = None,
    ) -> None:
        self._table = table
        self._listed_at = listed_at  # objects modified after the snapshot's listing are refused
        self._shard = shard
        self._start_batch = start_batch
        self._batch_step = batch_step
        self._fetch = fetch
        self._reader_config = reader
        self._loop = _new_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max(1, prefetch_batches))
        self._pipeline: FetchPipeline | None = None
        self._handed: FetchBatch | None = None  # the trainer's batch, charged until its next pull
        self._main: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._closed = False
        self.bytes = 0
        self.samples = 0
        self.retries = 0
        self._thread = threading.Thread(target=self._run, name="mx8-engine", daemon=True)
        self._thread.start()
        self._ready.wait()

    # -- engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._main = self._loop.create_task(self._produce())
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._main)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def _requests(self) -> Iterator[FetchRequest]:
        for b in range(self._start_batch, self._shard.batches, self._batch_step):
            yield from table_requests(self._table, self._shard.ids(*self._shard.batch_bounds(b)))

    def _s3_settings(self) -> S3Settings:
        # One pooled connection per concurrent read: the default pool (64) would silently
        # cap a larger fetch_concurrency.
        settings = S3Settings.from_env()
        pool = max(settings.max_pool_connections, self._fetch.concurrency)
        return dataclasses.replace(settings, max_pool_connections=pool)

    async def _produce(self) -> None:
        try:
            async with ObjectReader(
                self._reader_config, s3_settings=self._s3_settings(), listed_at=self._listed_at
            ) as reader:
                pipeline = FetchPipeline(reader, self._requests(), self._fetch)
                self._pipeline = pipeline
                async with pipeline:
                    # hold=True: queued batches stay charged to the budget (see next_batch).
                    async for fb in pipeline.batches(self._shard.batch_size, hold=True):
                        ids = fb.sample_ids.astype(np.uint64)
                        labels = (
                            self._table.label_id[fb.sample_ids].astype(np.int64)
                            if self._table.has_labels
                            else None
                        )
                        batch = Batch.from_parts(
                            ids, fb.parts, fb.offsets, labels, self._shard.order.epoch
                        )
                        await self._queue.put((batch, fb))
                        self.bytes = pipeline.stats.bytes
                        self.samples += len(ids)
                        self.retries = pipeline.stats.retries
            await self._queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put(exc)
        # Keep the loop alive until the trainer has taken what is queued and closes us.
        await asyncio.Event().wait()

    async def _take(self, done: FetchBatch | None) -> object:
        # Runs on the engine loop: the trainer moved past ``done``, so its bytes may be reused.
        if done is not None and self._pipeline is not None:
            self._pipeline.release(done)
        return await self._queue.get()

    # -- trainer thread ---------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """Sample bytes charged to the budget now (reading, buffered, queued, handed out)."""
        pipeline = self._pipeline
        return pipeline.stats.inflight_bytes if pipeline is not None else 0

    @property
    def read_bytes(self) -> int:
        """Sample bytes read so far (live; ``bytes`` is updated once per queued batch)."""
        pipeline = self._pipeline
        return pipeline.stats.bytes if pipeline is not None else 0

    def next_batch(self) -> Batch | None:
        """The next batch, or None at the end of the shard; re-raises engine errors.

        Asking for the next batch releases the previous one's share of the byte budget.
        """
        if self._closed:
            return None
        done, self._handed = self._handed, None
        fut = asyncio.run_coroutine_threadsafe(self._take(done), self._loop)
        while True:
            try:
                item = fut.result(timeout=0.5)  # short waits keep Ctrl-C responsive
                break
            except concurrent.futures.TimeoutError:
                if not self._thread.is_alive():
                    raise RuntimeError("mx8 engine thread stopped unexpectedly") from None
            except BaseException:
                fut.cancel()
                raise
        if item is _END:
            self.close()
            return None
        if isinstance(item, BaseException):
            self.close()
            raise item
        assert isinstance(item, tuple)
        batch, self._handed = item
        return batch

    def close(self) -> None:
        """Stop fetching and join the engine thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._main is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._main.cancel)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

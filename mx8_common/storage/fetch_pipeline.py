"""Fetch many samples concurrently, under a byte budget, and hand them out in request order.

``FetchPipeline(reader, requests, config)`` turns an (async or sync) iterable of
``FetchRequest`` into ``FetchResult``s, or into ``FetchBatch``es of N samples that keep
each read's buffer as it arrived (no copy; ``FetchBatch.data`` joins them on request).

Two limits hold at once:

* at most ``concurrency`` reads are running;
* at most ``max_inflight_bytes`` are held: bytes being fetched (a request is charged its
  ``byte_length``, or ``unknown_size_estimate`` when the manifest has none, corrected when
  the bytes arrive) plus fetched bytes waiting in the reorder buffer plus what the consumer
  was last handed. The consumer gives its share back when it asks for the next item, so a
  slow consumer stops new reads instead of letting memory grow. A consumer that passes
  batches on (the embedded engine queues them for the trainer's thread) asks for
  ``batches(n, hold=True)``: each batch then stays charged until ``release(batch)``, so
  batches waiting downstream count toward the same budget.

A request is always admitted when the pipeline itself holds nothing (and no held batch is
waiting for ``release``), so a sample bigger than the budget (or a batch bigger than the
budget) still goes through, one sample at a time, instead of deadlocking. Results come
out in request order; ``reorder_window`` caps how far reads may run ahead of the consumer
in samples, which bounds the reorder buffer even for tiny samples.

Reads run on at most ``concurrency`` worker coroutines that take admitted requests in
order, not one task per read: a worker whose read finished records it, admits the next
request itself (from a plain iterable; an async iterable is pulled by one feeder task) and
starts it, with no hop through other tasks. Each sample thus costs the loop the wake-ups
of its own GET plus, when it is the one the consumer waits for, the consumer's.

The first failed read stops new reads; the consumer receives every result before it and
then the original exception (``ObjectChangedError``, ``ObjectNotFoundError``, ...). Closing
(``async with``, ``aclose()``, the end of iteration or an error) cancels and awaits every
task the pipeline started.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mx8_common.config_fields import load_env, parse_size, setting, setting_names
from mx8_common.errors import ConfigError
from mx8_common.manifest.table import ManifestTable
from mx8_common.storage.local_read import is_local
from mx8_common.storage.sample_reader import Payload, ReadStats, SampleReader

__all__ = [
    "FetchBatch",
    "FetchConfig",
    "FetchPipeline",
    "FetchRequest",
    "FetchResult",
    "FetchStats",
    "table_requests",
]


class FetchRequest(NamedTuple):
    """One sample to fetch; ``tag`` travels to the result untouched."""

    sample_id: int
    location: str
    byte_offset: int | None = None
    byte_length: int | None = None
    tag: Any = None


class FetchResult(NamedTuple):
    """The bytes of one requested sample (``bytes`` or the native client's buffer)."""

    sample_id: int
    data: Payload
    tag: Any


@dataclass(frozen=True, slots=True)
class FetchBatch:
    """N consecutive results: payload i is ``parts[i]``, the read's own buffer (not copied),
    of ``offsets[i + 1] - offsets[i]`` bytes."""

    sample_ids: np.ndarray
    parts: list[Payload]
    offsets: np.ndarray
    tags: list[Any]

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def nbytes(self) -> int:
        """Payload bytes of the batch (what it is charged against the byte budget)."""
        return int(self.offsets[-1])

    @property
    def data(self) -> bytes:
        """Every payload joined into one ``bytes`` (a copy, made on each call)."""
        return b"".join(self.parts)

    def payload(self, i: int) -> memoryview:
        """Sample ``i`` of the batch, as a zero-copy view of its buffer."""
        return memoryview(self.parts[i])


@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    """How hard the data plane pulls: concurrency and the in-flight byte budget.

    The agent exposes these as its ``--fetch-*`` flags; embedded ``mx8.load`` reads the same
    variables. The flags named here are the agent's.
    """

    concurrency: int = setting(
        64,
        env="MX8_FETCH_CONCURRENCY",
        flag="--fetch-concurrency",
        help="most sample reads running at once",
    )
    max_inflight_bytes: int = setting(
        256 * 1024 * 1024,
        env="MX8_MAX_INFLIGHT_BYTES",
        flag="--max-inflight-bytes",
        parse=parse_size,
        help="most sample bytes held (fetching + buffered + handed out), e.g. 256MiB",
    )
    unknown_size_estimate: int = setting(
        1024 * 1024,
        env="MX8_FETCH_UNKNOWN_SIZE_ESTIMATE",
        flag="--fetch-unknown-size-estimate",
        parse=parse_size,
        help="bytes charged for a sample whose manifest row has no byte_length",
    )
    reorder_window: int = setting(
        0,
        env="MX8_FETCH_REORDER_WINDOW",
        flag="--fetch-reorder-window",
        help="most samples read ahead of the consumer (0 = 16 x concurrency)",
    )
    local_group: int = setting(
        32,
        env="MX8_FETCH_LOCAL_GROUP",
        flag="--fetch-local-group",
        help="local files read per thread-pool job (each still counts toward concurrency)",
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_inflight_bytes", "unknown_size_estimate", "local_group"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"fetch {name} is {getattr(self, name)}; set "
                    f"{setting_names(FetchConfig, name)} to 1 or more"
                )
        if self.reorder_window < 0:
            raise ConfigError(
                f"fetch reorder_window is {self.reorder_window}; set "
                f"{setting_names(FetchConfig, 'reorder_window')} to 0 (automatic) or more"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> FetchConfig:
        """Defaults, then ``MX8_*`` env vars, then ``overrides`` (None values are ignored)."""
        return load_env(cls, environ, **overrides)

    @property
    def window(self) -> int:
        """The effective reorder window in samples."""
        return self.reorder_window or 16 * self.concurrency


@dataclass(slots=True)
class FetchStats(ReadStats):
    """What a pipeline moved and holds.

    ``reads``/``bytes``/``retries``/``local_batches`` are counted by the reader;
    ``samples`` were handed to the consumer; ``running`` reads are in progress;
    ``inflight_bytes`` are held now.
    """

    samples: int = 0
    running: int = 0
    inflight_bytes: int = 0
    peak_inflight_bytes: int = 0


class _Slot:
    __slots__ = ("charge", "fut", "req", "settled")

    def __init__(self, req: FetchRequest, fut: asyncio.Future[Payload], charge: int) -> None:
        self.req = req
        self.fut = fut  # resolved by a read worker (S3) or by a local group read
        self.charge = charge
        self.settled = False  # _on_read_done has run: the charge is what arrived


class FetchPipeline:
    """Ordered, budgeted, concurrent fetching of sample bytes (see the module docstring)."""

    def __init__(
        self,
        reader: SampleReader,
        requests: Iterable[FetchRequest] | AsyncIterable[FetchRequest],
        config: FetchConfig | None = None,
    ) -> None:
        self.config = config or FetchConfig()
        self.stats = FetchStats()
        self._reader = reader
        self._requests = requests
        self._budget = self.config.max_inflight_bytes
        self._concurrency = self.config.concurrency
        self._window = self.config.window
        self._estimate = self.config.unknown_size_estimate
        # Not split to keep two jobs in flight: on 2 vCPUs, two threads reading (or one
        # reading while the loop settles the last group) trade the GIL on every syscall and
        # cost ~1.5x the CPU per sample (benchmarks/RESULTS.md, 2026-11-30).
        self._local_group = self.config.local_group
        # The loop every future and task of this pipeline belongs to, bound on the first
        # read: asyncio.get_running_loop() costs a getpid() syscall per call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: list[_Slot] = []  # local reads admitted, not yet handed to a thread
        self._group_tasks: set[asyncio.Task[None]] = set()
        self._todo: collections.deque[_Slot] = collections.deque()  # admitted, no worker yet
        self._workers: set[asyncio.Task[None]] = set()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self._looping = 0  # workers between finishing a read and taking the next
        self._batch_waiter: asyncio.Future[None] | None = None  # batches() waiting
        self._it: Iterator[FetchRequest] | None = None  # a plain iterable's requests
        self._pending: tuple[FetchRequest, int] | None = None  # pulled, awaiting capacity
        self._slots: collections.deque[_Slot] = collections.deque()
        self._running = 0
        self._started_count = 0
        self._consumed = 0
        self._pipeline_bytes = 0  # being fetched + fetched, not yet handed out
        self._consumer_bytes = 0  # handed out, released on the next pull
        self._held_bytes = 0  # batches handed out with hold=True, until release()
        self._failed = False
        self._feed_done = False
        self._feed_error: BaseException | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._closed = False
        self._wake = asyncio.Event()  # capacity freed: the feeder may admit more
        self._ready = asyncio.Event()  # a slot was added or the feed ended

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> FetchPipeline:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Begin fetching before the first pull (iteration starts it otherwise)."""
        if self._closed or self._feeder is not None or self._it is not None:
            return
        if isinstance(self._requests, AsyncIterable):
            self._feeder = asyncio.get_running_loop().create_task(
                self._feed(), name="mx8-fetch-feeder"
            )
        else:
            self._it = iter(self._requests)
            self._pump()

    async def aclose(self) -> None:
        """Cancel and await every read and the feeder; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Future[Any]] = [s.fut for s in self._slots]
        tasks += self._group_tasks
        tasks += self._workers
        tasks += self._idle
        if self._feeder is not None:
            tasks.append(self._feeder)
        self._slots.clear()
        self._group.clear()
        self._todo.clear()
        self._idle.clear()
        self._pending = None
        for task in tasks:
            task.cancel()
        if tasks:
            # return_exceptions also marks failed reads as retrieved (no "never retrieved").
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pipeline_bytes = self._consumer_bytes = self._held_bytes = 0
        self.stats.inflight_bytes = 0

    # -- feeding ------------------------------------------------------------------------

    def _can_start(self, charge: int) -> bool:
        if self._running >= self._concurrency:
            return False
        if self._started_count - self._consumed >= self._window:
            return False
        held = self._pipeline_bytes + self._consumer_bytes + self._held_bytes
        if held + charge <= self._budget:
            return True
        # Alone: an oversized sample (or the rest of an oversized batch) must not deadlock.
        # Held batches are excluded: their release always comes, and admitting past them
        # would let every queued batch add one more sample over the budget.
        return self._pipeline_bytes == 0 and self._held_bytes == 0

    def _charge(self, req: FetchRequest) -> int:
        length = req.byte_length
        return length if length is not None and length >= 0 else self._estimate

    async def _admit(self, req: FetchRequest) -> bool:
        # The feeder of an async iterable: wait for capacity, then start the read.
        charge = self._charge(req)
        while not self._can_start(charge):
            if self._failed or self._closed:
                return False
            self._wake.clear()
            await self._wake.wait()
        if self._failed or self._closed:
            return False
        self._start(req, charge)
        return True

    def _pump(self) -> None:
        # A plain iterable: admit in request order while there is capacity (called
        # wherever capacity frees up, so no task has to wake for it).
        it = self._it
        if it is None or self._feed_done:
            return
        while not self._failed and not self._closed:
            if self._pending is None:
                try:
                    req = next(it)
                except StopIteration:
                    self._end_feed(None)
                    return
                except Exception as exc:
                    self._end_feed(exc)
                    return
                self._pending = (req, self._charge(req))
            req, charge = self._pending
            if not self._can_start(charge):
                return
            self._pending = None
            self._start(req, charge)
        self._end_feed(None)

    def _end_feed(self, error: BaseException | None) -> None:
        # Delivered to the consumer after the results before it, like a failed read.
        self._feed_error = error
        self._feed_done = True
        self._pending = None
        self._ready.set()

    def _start(self, req: FetchRequest, charge: int) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Payload] = loop.create_future()
        slot = _Slot(req, fut, charge)
        self._running += 1
        self.stats.running = self._running
        self._started_count += 1
        self._pipeline_bytes += charge
        self._note_inflight()
        self._slots.append(slot)
        if self._local_group > 1 and is_local(req.location):
            # Settled by _read_group, or here when cancelled before its group ran.
            fut.add_done_callback(lambda _: self._on_read_done(slot))
            self._group.append(slot)
            if len(self._group) >= self._local_group:
                self._flush_group()
            elif len(self._group) == 1:
                # Whatever else is admitted before the loop next turns joins this group.
                loop.call_soon(self._flush_group)
        else:
            self._todo.append(slot)
            if len(self._todo) <= self._looping:
                pass  # a worker that just finished a read takes it
            elif self._idle:
                self._idle.popleft().set_result(None)
            elif len(self._workers) < self._concurrency:
                task = loop.create_task(self._work(), name="mx8-fetch-read")
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
        self._ready.set()

    async def _work(self) -> None:
        # One of at most ``concurrency`` readers; it takes slots in admission order.
        loop = asyncio.get_running_loop()
        todo, read, stats = self._todo, self._reader.read, self.stats
        while True:
            while not todo:
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
            slot = todo.popleft()
            req = slot.req
            fut = slot.fut
            try:
                data = await read(req.location, req.byte_offset, req.byte_length, stats=stats)
            except asyncio.CancelledError:
                fut.cancel()
                self._on_read_done(slot)
                raise
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
                self._on_read_done(slot)
                if not isinstance(exc, Exception):
                    raise
                continue
            if not fut.done():  # not cancelled by aclose meanwhile
                fut.set_result(data)
            # This worker looks at the queue again before it waits: what _on_read_done
            # admits next is its own to read, with no other worker woken for it.
            self._looping += 1
            try:
                self._on_read_done(slot)
            finally:
                self._looping -= 1

    def _flush_group(self) -> None:
        if not self._group or self._closed:
            return
        group, self._group = self._group, []
        assert self._loop is not None  # bound by _start, which queued this group
        task = self._loop.create_task(self._read_group(group))
        self._group_tasks.add(task)
        task.add_done_callback(self._group_tasks.discard)

    async def _read_group(self, group: list[_Slot]) -> None:
        items = [(s.req.location, s.req.byte_offset, s.req.byte_length) for s in group]
        try:
            results: Sequence[bytes | BaseException] = await self._reader.read_local_many(
                items, stats=self.stats
            )
        except asyncio.CancelledError:
            for s in group:
                s.fut.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(group)
        for s, res in zip(group, results, strict=True):
            if s.fut.done():
                continue
            if isinstance(res, BaseException):
                s.fut.set_exception(res)
            else:
                s.fut.set_result(res)
            # The whole group arrived at once: count every sample's real size now.
            self._on_read_done(s)

    async def _feed(self) -> None:
        assert isinstance(self._requests, AsyncIterable)
        try:
            async for req in self._requests:
                if not await self._admit(req):
                    break
        except Exception as exc:
            self._end_feed(exc)
        finally:
            if not self._feed_done:
                self._end_feed(None)

    def _on_read_done(self, slot: _Slot) -> None:
        # Runs from the future's callback, or earlier from _next_slot: a consumer can find
        # the future done before its callbacks ran, and must not hand out the estimate.
        if slot.settled:
            return
        slot.settled = True
        self._running -= 1
        self.stats.running = self._running
        task = slot.fut
        if task.cancelled():
            pass
        elif task.exception() is not None:
            self._failed = True
            if self._batch_waiter is not None:
                _wake_waiter(self._batch_waiter)
            self._pipeline_bytes -= slot.charge
            slot.charge = 0
        else:
            actual = len(task.result())
            # An unknown-size estimate is corrected to what actually arrived.
            self._pipeline_bytes += actual - slot.charge
            slot.charge = actual
            self._note_inflight()
        self._wake.set()
        self._ready.set()
        self._pump()

    def _note_inflight(self) -> None:
        total = self._pipeline_bytes + self._consumer_bytes + self._held_bytes
        self.stats.inflight_bytes = total
        if total > self.stats.peak_inflight_bytes:
            self.stats.peak_inflight_bytes = total

    # -- consuming ----------------------------------------------------------------------

    def _release_consumer(self) -> None:
        if self._consumer_bytes:
            self._consumer_bytes = 0
            self.stats.inflight_bytes = self._pipeline_bytes + self._held_bytes
            self._wake.set()
            self._pump()

    def release(self, batch: FetchBatch) -> None:
        """Give back the budget of a batch from ``batches(n, hold=True)`` (loop thread only).

        Call it once the batch's bytes are no longer needed (the trainer moved past it);
        until then the batch counts toward ``max_inflight_bytes`` and holds back reads.
        """
        if self._closed:
            return  # closing dropped every charge already
        if batch.nbytes > self._held_bytes:
            raise ValueError(
                f"release of {batch.nbytes} bytes but only {self._held_bytes} are held; "
                "release each batch from batches(n, hold=True) exactly once"
            )
        self._held_bytes -= batch.nbytes
        self._note_inflight()
        self._wake.set()
        self._pump()

    async def _next_slot(self) -> _Slot:
        if self._closed:
            raise StopAsyncIteration
        self.start()
        while not self._slots:
            if self._feed_done:
                error = self._feed_error
                await self.aclose()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        slot = self._slots[0]
        try:
            await slot.fut
        except BaseException:
            # The original error (or the consumer's cancellation) ends the pipeline.
            await self.aclose()
            raise
        if self._take_read() is None:
            raise StopAsyncIteration  # closed while this read finished
        return slot

    def _take_read(self) -> _Slot | None:
        # _next_slot's work for a first slot whose read already succeeded, else None.
        if self._closed or not self._slots:
            return None
        slot = self._slots[0]
        fut = slot.fut
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        self._on_read_done(slot)
        self._slots.popleft()
        self._consumed += 1
        self._pipeline_bytes -= slot.charge
        self._consumer_bytes += slot.charge
        self.stats.samples += 1
        self._wake.set()
        self._pump()
        return slot

    def __aiter__(self) -> FetchPipeline:
        return self

    async def __anext__(self) -> FetchResult:
        self._release_consumer()
        slot = await self._next_slot()
        return FetchResult(slot.req.sample_id, slot.fut.result(), slot.req.tag)

    async def _batch_read(self, n: int) -> None:
        # One wake-up per batch instead of one per sample: wait for the last of the next
        # n samples already admitted (reads finish roughly in order). Only a shortcut:
        # _next_slot still waits for each sample and raises the first error in order.
        if self._closed:
            return
        self.start()
        if not self._slots:
            return
        last = self._slots[min(n, len(self._slots)) - 1].fut
        if last.done():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        last.add_done_callback(lambda _: _wake_waiter(waiter))
        self._batch_waiter = waiter  # a failed read wakes it too: errors are not delayed
        try:
            await waiter  # its own future: cancelling the consumer does not cancel the read
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._batch_waiter = None

    async def batches(self, batch_size: int, *, hold: bool = False) -> AsyncIterator[FetchBatch]:
        """Results grouped ``batch_size`` at a time (the last batch may be shorter).

        By default a batch's bytes are released when the next batch is asked for. With
        ``hold=True`` each batch stays charged until ``release(batch)``: for a consumer
        that queues batches for someone else instead of finishing with them.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size}; it must be at least 1")
        while True:
            self._release_consumer()
            await self._batch_read(batch_size)
            slots: list[_Slot] = []
            try:
                while len(slots) < batch_size:
                    # Read samples are taken without a coroutine each; the rest (waiting,
                    # errors, the end) go through _next_slot.
                    slot = self._take_read()
                    slots.append(slot if slot is not None else await self._next_slot())
            except StopAsyncIteration:
                if not slots:
                    return
            batch = _join(slots)
            if hold:
                # The batch's charge moves from "last handed out" to "held until released".
                self._consumer_bytes -= batch.nbytes
                self._held_bytes += batch.nbytes
            yield batch


def _wake_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _join(slots: Sequence[_Slot]) -> FetchBatch:
    payloads = [s.fut.result() for s in slots]
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    return FetchBatch(
        sample_ids=np.fromiter((s.req.sample_id for s in slots), dtype=np.int64, count=len(slots)),
        parts=payloads,
        offsets=offsets,
        tags=[s.req.tag for s in slots],
    )


def _id_chunks(sample_ids: Iterable[int] | np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    if isinstance(sample_ids, np.ndarray):
        for start in range(0, len(sample_ids), chunk):
            yield sample_ids[start : start + chunk]
        return
    it = iter(sample_ids)
    while len(part := np.fromiter(itertools.islice(it, chunk), dtype=np.int64)):
        yield part


def table_requests(
    table: ManifestTable,
    sample_ids: Iterable[int] | np.ndarray,
    *,
    chunk: int = 4096,
) -> Iterator[FetchRequest]:
    """Fetch requests for ``sample_ids`` of ``table``, in the given order (tag = None)."""
    for part in _id_chunks(sample_ids, chunk):
        # Column lookups are vectorised per chunk; only the location is built per row.
        offsets = table.byte_offset[part].tolist()
        lengths = table.byte_length[part].tolist()
        for sid, off, length in zip(part.tolist(), offsets, lengths, strict=True):
            yield FetchRequest(
                sid,
                table.location(sid),
                None if off < 0 else off,
                None if length < 0 else length,
            )

"""Concurrent partitioned listing of one prefix, written back in key order.

One ListObjectsV2 page is ~1,000 keys per round trip (~50-150 ms on S3), so a listing
that waits for each page before asking for the next runs at 7-20k keys/s. Here the
prefix's key space is cut into disjoint ranges ``(after, upto]`` listed concurrently
(``StartAfter``, then continuation tokens), at most ``concurrency`` requests at a time,
and the ranges are read back in order: the pages that come out are exactly the pages of
a sequential listing (re-chunked), so the manifest and its hash do not depend on how the
space was cut or how many requests ran at once.

How ranges are cut (``key_ranges`` has the pure parts): the first request is a
delimiter listing of the prefix; its folders become split points. Whenever a range
answers a full page and requests are idle, its remainder is split again: a delimiter
probe of the deepest folder holding the rest of the range finds subfolders to split at;
a folder with none is flat. A flat folder of numbered keys is cut into ranges one page
wide (``key_ranges.progression_points``: one request lists each and shows that it ended),
twice as many at each cut of the last range, queued even when no request is idle; other
flat folders are split by ``key_ranges.fanout_points`` guesses into idle slots. Since any
points give the same keys, a bad guess costs an empty request, not a wrong row; and a page
that ends the prefix (no next token) closes every range past it, so a request for one of
those still queued is never sent and one in flight is not waited for.

Memory stays bounded however ranges finish: pages wait in memory up to ``memory_keys``
in all, past that a range's pages go to its own spill file (``marshal`` records in a
private temp folder, removed at the end) and are read back when the range's turn comes;
at most ``max_ranges`` unread ranges exist at once. Each range checks its own pages:
keys strictly increase and start after the range's lower bound, else
``NonMonotonicListingError`` at once (an endpoint that lists out of order or ignores
``StartAfter``); external sort stays the path for those endpoints.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import marshal
import operator
import shutil
import struct
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mx8_common.errors import NonMonotonicListingError
from mx8_common.snapshot.key_ranges import (
    child_dir,
    fanout_points,
    in_range,
    progression_points,
    scope_dir,
    thin,
)

__all__ = ["SKIPPED_REASON", "ListPage", "ListPageFn", "ListingStats", "PartitionedListing"]

_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 answer: full keys with sizes, common prefixes, the next token."""

    keys: Sequence[tuple[str, int]]
    prefixes: Sequence[str] = ()
    #: None: the listing ends here.
    next_token: str | None = None


#: ``await list_page(prefix, delimiter=..., start_after=..., token=...)``: one request.
ListPageFn = Callable[..., Awaitable[ListPage]]


#: Why ``ListingStats.skipped_objects`` were left out of the snapshot.
SKIPPED_REASON = "key ends in '/' but the object has a body"


@dataclass(slots=True)
class ListingStats:
    """What a partitioned listing did (for ``snapshot_index_summary``)."""

    concurrency: int = 1
    partitions: int = 1
    requests: int = 0
    probes: int = 0
    spilled_keys: int = 0
    max_live_ranges: int = 1
    #: Objects whose key ends in "/" but that have a body: left out, counted (the smallest
    #: key kept as the example, so it does not depend on which range listed first).
    skipped_objects: int = 0
    skipped_example: str | None = None

    def note_slash_key(self, key: str, size: int) -> bool:
        """False for a key ending in "/" (never a sample); counts those with a body."""
        if not key.endswith("/"):
            return True
        if size > 0:
            self.skipped_objects += 1
            if self.skipped_example is None or key < self.skipped_example:
                self.skipped_example = key
        return False


class _Spill:
    """Pages of one range past the memory budget: an append-only file read in order."""

    __slots__ = ("_reader", "pages", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pages = 0  # written and not yet read
        self._reader: BinaryIO | None = None

    def write(self, page: list[tuple[str, int]]) -> None:
        data = marshal.dumps(page)
        with open(self.path, "ab") as f:
            f.write(_LEN.pack(len(data)) + data)
        self.pages += 1

    def read(self) -> list[tuple[str, int]]:
        if self._reader is None:
            self._reader = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        (size,) = _LEN.unpack(self._reader.read(_LEN.size))
        self.pages -= 1
        page: list[tuple[str, int]] = marshal.loads(self._reader.read(size))
        return page

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.path.unlink(missing_ok=True)


@dataclass(eq=False, slots=True)
class _Range:
    """Keys in ``(after, upto]``; ``after`` moves up as pages arrive (the cursor)."""

    after: str | None
    upto: str | None
    token: str | None = None
    done: bool = False
    probing: bool = False
    first: bool = False  # the prefix's first request: a delimiter listing
    pages: deque[list[tuple[str, int]]] = field(default_factory=deque)
    mem_keys: int = 0
    spill: _Spill | None = None
    sample: list[str] = field(default_factory=list)
    #: Keys of the last page inside the range, and that page's size (keys and folders).
    page_keys: int = 0
    page_size: int = 0
    #: Ranges a progression split of this one cuts its remainder into (doubles each cut).
    fan: int = 2


@dataclass(eq=False, slots=True)
class _Probe:
    """A delimiter listing of ``folder`` after the range's cursor, to find split points."""

    target: _Range
    folder: str


class PartitionedListing:
    """Pages of ``(key relative to prefix, size)`` in key order, listed concurrently.

    ``recursive=False`` lists with ``Delimiter="/"`` and keeps only keys directly under
    the prefix (folders are skipped, so its ranges split like a flat folder's). Keys
    ending in ``/`` (folder markers) are left out, as the sequential listing does.
    ``split_points``, if given, replaces the split heuristics (tests: any points must
    give the same pages).
    """

    def __init__(
        self,
        list_page: ListPageFn,
        prefix: str,
        *,
        link: str,
        recursive: bool = True,
        concurrency: int = 16,
        spill_dir: str | Path | None = None,
        memory_keys: int = 64_000,
        max_ranges: int | None = None,
        split_points: Callable[[str | None, str | None, list[str], int], list[str]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._list_page = list_page
        self.prefix = prefix
        self.link = link
        self.recursive = recursive
        self.concurrency = concurrency
        self._spill_dir = spill_dir
        self._memory_keys = memory_keys
        self._max_ranges = max_ranges or max(64, 8 * concurrency)
        self._split_points = split_points
        self.stats = ListingStats(concurrency=concurrency)
        self._ranges: list[_Range] = []
        self._queue: asyncio.PriorityQueue[tuple[int, str, int, _Range | _Probe]] = (
            asyncio.PriorityQueue()
        )
        self._seq = itertools.count()
        self._in_flight = 0
        self._mem_keys = 0
        self._flat: set[str] = set()  # folders whose probe found no subfolders
        #: Folder -> its last subfolder, from a probe that saw to the folder's end.
        self._last_folder: dict[str, str] = {}
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._tmp: Path | None = None
        self._spills = itertools.count()

    # -- the consumer ------------------------------------------------------------------

    async def pages(self) -> AsyncGenerator[list[tuple[str, int]], None]:
        """The listing, in key order (run once)."""
        root = _Range(None, None, first=self.recursive)
        self._ranges.append(root)
        self._enqueue(root)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        try:
            while self._ranges:
                if self._error is not None:
                    raise self._error
                head = self._ranges[0]
                page = self._take(head)
                if page is not None:
                    if page:
                        yield page
                    continue
                if head.done:
                    self._ranges.pop(0)
                    if head.spill is not None:
                        head.spill.close()
                    continue
                self._changed.clear()
                await self._changed.wait()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for r in self._ranges:
                if r.spill is not None:
                    r.spill.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _take(self, r: _Range) -> list[tuple[str, int]] | None:
        if r.pages:
            page = r.pages.popleft()
            r.mem_keys -= len(page)
            self._mem_keys -= len(page)
            return page
        if r.spill is not None and r.spill.pages:
            return r.spill.read()
        return None

    def _put(self, r: _Range, page: list[tuple[str, int]]) -> None:
        """Keep a page in memory within the budget, else spill it (order kept: once a
        range has unread spilled pages, later pages follow them into the file)."""
        if not page:
            return
        spilled = r.spill is not None and r.spill.pages > 0
        if not spilled and (self._mem_keys + len(page) <= self._memory_keys or r is self._head()):
            r.pages.append(page)
            r.mem_keys += len(page)
            self._mem_keys += len(page)
            return
        if r.spill is None:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="mx8-list-", dir=self._spill_dir))
            r.spill = _Spill(self._tmp / f"range-{next(self._spills):06d}.bin")
        r.spill.write(page)
        self.stats.spilled_keys += len(page)

    def _head(self) -> _Range | None:
        return self._ranges[0] if self._ranges else None

    # -- workers -----------------------------------------------------------------------

    def _enqueue(self, item: _Range | _Probe) -> None:
        if isinstance(item, _Probe):
            self._queue.put_nowait((0, "", next(self._seq), item))
        else:
            self._queue.put_nowait((1, item.after or "", next(self._seq), item))

    def _idle(self) -> int:
        """Request slots that nothing queued or running will fill."""
        return self.concurrency - self._in_flight - self._queue.qsize()

    async def _worker(self) -> None:
        while True:
            _prio, _key, _seq, item = await self._queue.get()
            self._in_flight += 1
            try:
                if isinstance(item, _Probe):
                    await self._probe(item)
                elif not item.done:
                    await self._list(item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._error = self._error or exc
                self._changed.set()
                return
            finally:
                self._in_flight -= 1

    async def _list(self, r: _Range) -> None:
        delimiter = r.first or not self.recursive
        # Counted when sent: a request for a range found empty meanwhile is not awaited.
        self.stats.requests += 1
        page = await self._list_page(
            self.prefix,
            delimiter=delimiter,
            start_after=None if r.token else r.after,
            token=r.token,
        )
        if r.first:
            if not page.keys and not page.prefixes and page.next_token is not None:
                r.token = page.next_token  # an empty page: S3 may send one; go on
                self._enqueue(r)
                return
            r.first = False
            r.token = None
            self._check(page.prefixes, r.after, "folder")
            if page.prefixes:
                # Folders to split at; the loose keys are listed again by the ranges.
                self._split(r, thin(in_range(page.prefixes, r.after, r.upto), self._budget()))
                self._enqueue(r)
                return
            self._flat.add(self.prefix)
            page = ListPage(page.keys, (), page.next_token)
            # A delimiter token does not continue a flat listing: go on from the cursor.
            token = None
        else:
            token = page.next_token
        keys = [key for key, _size in page.keys]
        self._check(keys, r.after, "key")
        if page.next_token is None:
            # The prefix ends in this page: later ranges need no request to find nothing.
            self._end_at(max([r.after or "", *keys[-1:], *page.prefixes[-1:]]), r)
        end = len(keys) if r.upto is None else bisect.bisect_right(keys, r.upto)
        if end:
            r.after = keys[end - 1]
            # ~64 keys, last included: enough to see which characters vary (fan-out).
            r.sample = [*keys[: end - 1 : max(1, end // 64)], keys[end - 1]]
            r.page_keys, r.page_size = end, len(keys) + len(page.prefixes)
        cut = len(self.prefix)
        note = self.stats.note_slash_key
        self._put(r, [(key[cut:], size) for key, size in page.keys[:end] if note(key, size)])
        r.token = token
        past_upto = bool(page.prefixes) and r.upto is not None and page.prefixes[-1] > r.upto
        if end < len(keys) or past_upto or page.next_token is None:
            r.done = True
        else:
            self._maybe_split(r)
            self._enqueue(r)
        self._changed.set()

    def _end_at(self, last: str, listing: _Range) -> None:
        """The prefix holds nothing after ``last``: ranges that start there are done (a
        queued one is not requested). Cursors increase along ``_ranges``."""
        for q in reversed(self._ranges):
            if q.after is None or q.after < last:
                return
            if q is not listing:
                q.done = True

    def _check(self, names: Sequence[str], after: str | None, what: str) -> None:
        """Fail fast unless ``names`` strictly increase and start after ``after``."""
        if not names:
            return
        if (after is None or names[0] > after) and all(
            map(operator.lt, names, itertools.islice(names, 1, None))
        ):
            return
        last = after
        for name in names:
            if last is not None and name <= last:
                what_it_does = "repeats" if name == last else "sorts before"
                raise NonMonotonicListingError(
                    f"{self.link}: a listing page returned {what} {name!r}, which "
                    f"{what_it_does} {last!r}; this endpoint does not list keys in strictly "
                    "increasing order after start-after. Set MX8_SNAPSHOT_S3_EXTERNAL_SORT=1 "
                    "to sort keys on disk instead",
                    link=self.link,
                )
            last = name

    # -- splitting ---------------------------------------------------------------------

    def _budget(self) -> int:
        room = self._max_ranges - len(self._ranges)
        return max(0, min(room, max(self._idle(), 1)))

    def _maybe_split(self, r: _Range) -> None:
        if r.probing or not r.sample or r.after is None:
            return
        if self._split_points is not None:
            if self._idle() > 0:
                self._split(r, self._split_points(r.after, r.upto, r.sample, self._budget()))
            return
        folder = scope_dir(self.prefix, r.after, r.upto)
        if (not self.recursive or folder in self._flat) and self._progress(r, folder):
            return
        if self._idle() <= 0:
            return
        while self.recursive and folder not in self._flat:
            if self._last_folder.get(folder, r.after) < r.after:
                # A complete probe saw every subfolder of this one: none after the cursor.
                deeper = child_dir(folder, r.after)
                if deeper is None:
                    break
                folder = deeper
                continue
            r.probing = True
            self._enqueue(_Probe(r, folder))
            return
        self._fanout(r, folder)

    async def _probe(self, probe: _Probe) -> None:
        r, folder = probe.target, probe.folder
        try:
            if r.done or r.after is None:
                return
            self.stats.requests += 1
            self.stats.probes += 1
            page = await self._list_page(folder, delimiter=True, start_after=r.after, token=None)
        finally:
            r.probing = False
        self._check(page.prefixes, None, "folder")
        if not page.prefixes:
            self._flat.add(folder)
        elif page.next_token is None:
            self._last_folder[folder] = page.prefixes[-1]
        if r.done or r.after is None:
            return
        points = in_range(page.prefixes, r.after, r.upto)
        if points:
            self._split(r, thin(points, self._budget()))
            return
        deeper = child_dir(folder, r.after)
        if deeper is not None and deeper not in self._flat:
            # Nothing to split at at this level: the rest of the range is one subfolder.
            r.probing = True
            self._enqueue(_Probe(r, deeper))
        else:
            self._fanout(r, folder)

    def _fanout(self, r: _Range, folder: str) -> None:
        if r.after is None or r.done or self._progress(r, folder):
            return
        self._split(r, fanout_points(r.after, r.upto, r.sample, len(folder), self._budget()))

    def _progress(self, r: _Range, folder: str) -> bool:
        """Cut numbered keys into ranges of one request each (False: not numbered).

        Not only into idle slots: the ranges queue, so the requests stay busy while the
        last range (the one past the guesses) finds whether there is more. Each cut of a
        range is twice as wide as the one before (2, 4, 8, ... ranges, at most
        ``concurrency``), so past the end of the keys at most about half the requests of
        the last round find nothing, and a small prefix costs few more than its pages.
        """
        if r.after is None or r.done:
            return True
        room = self._max_ranges - len(self._ranges)
        count = max(0, min(r.fan - 1, self.concurrency - 1, room))
        points = progression_points(r.sample, r.upto, r.page_keys, r.page_size, len(folder), count)
        if points is None:
            return False
        r.fan = min(2 * r.fan, 2 * self.concurrency)
        self._split(r, points, fan=r.fan)
        return True

    def _split(self, r: _Range, points: list[str], fan: int = 2) -> None:
        """Cut ``r`` at ``points`` (checked into its range here); new ranges are queued."""
        points = in_range(points, r.after, r.upto)
        if not points or r.done:
            return
        at = self._ranges.index(r) + 1
        bounds = [*points, r.upto]
        new = [_Range(lo, hi, fan=fan) for lo, hi in itertools.pairwise(bounds)]
        r.upto = points[0]
        self._ranges[at:at] = new
        for piece in new:
            self._enqueue(piece)
        self.stats.partitions += len(new)
        self.stats.max_live_ranges = max(self.stats.max_live_ranges, len(self._ranges))
        self._changed.set()

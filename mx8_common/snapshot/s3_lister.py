"""Paged S3 listing as ``(relative_key, size)`` pages, and the page-source protocol.

A *page source* is anything with ``pages()`` (an async iterator of pages of
``(key, size)``, keys relative to the dataset root) and ``location(key)`` (the manifest
location of a key); it may also offer ``async folders() -> FolderSummary`` when it can
summarize its top level cheaply (see ``labels``). ``S3PageSource`` and
``local_lister.LocalPageSource`` are the real ones; tests plug in synthetic ones that
generate a million keys page by page.

``S3PageSource`` yields each ListObjectsV2 page as it arrives, so the full key list is
never in memory; with ``concurrency`` > 1 it lists key ranges concurrently and yields
the same pages in key order (``partitioned.PartitionedListing``). ``ordered_pages`` is
the fail-fast guard: every key must be strictly greater than the one before it, across
pages, or ``NonMonotonicListingError``.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import islice
from typing import Any, Protocol, TypeVar, runtime_checkable

from mx8_common.errors import NonMonotonicListingError, TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
from mx8_common.snapshot.partitioned import ListingStats, ListPage, PartitionedListing
from mx8_common.storage.s3_client import s3_errors

__all__ = ["PageSource", "S3PageSource", "ordered_pages"]

T = TypeVar("T")

#: A listing call is tried 4 times, 100 ms doubling, full jitter.
_LIST_BACKOFF = Backoff(base_s=0.1, attempts=4)


@runtime_checkable
class PageSource(Protocol):
    """Where the resolver's listing comes from (optionally also ``async folders()``)."""

    def pages(self) -> AsyncIterator[Sequence[tuple[str, int]]]:
        """Pages of ``(key relative to the dataset root, size in bytes)``."""
        ...

    def location(self, key: str) -> str:
        """The manifest location of a relative key."""
        ...


async def ordered_pages(
    pages: AsyncIterator[Sequence[tuple[str, int]]], *, link: str
) -> AsyncIterator[Sequence[tuple[str, int]]]:
    """Pass pages through, failing fast unless keys strictly increase across all of them."""
    last: str | None = None
    page_no = 0
    async for page in pages:
        page_no += 1
        if page:
            keys = [key for key, _size in page]
            # One C-level pairwise compare per page; the per-key walk only names the culprit.
            if (last is not None and keys[0] <= last) or not all(
                map(operator.lt, keys, islice(keys, 1, None))
            ):
                _raise_out_of_order(keys, last, page_no, link)
            last = keys[-1]
        yield page


def _raise_out_of_order(keys: list[str], last: str | None, page_no: int, link: str) -> None:
    for key in keys:
        if last is not None and key <= last:
            what = "repeats" if key == last else "sorts before"
            raise NonMonotonicListingError(
                f"{link}: listing page {page_no} returned key {key!r}, which {what} the "
                f"previous key {last!r}; this endpoint does not list keys in strictly "
                "increasing order. Set MX8_SNAPSHOT_S3_EXTERNAL_SORT=1 to sort keys "
                "on disk instead",
                link=link,
            )
        last = key


async def _with_retries(call: Callable[[], Awaitable[T]], location: str) -> T:
    """Retry a listing call on throttling/transport errors, with full-jitter backoff."""

    async def translated() -> T:
        with s3_errors(location):
            return await call()

    return await _LIST_BACKOFF.run(
        translated, retry_if=lambda exc: isinstance(exc, TransientStorageError)
    )


class S3PageSource:
    """ListObjectsV2 pages under ``s3://bucket/prefix`` through an open client.

    ``client`` is anything with aiobotocore's ``list_objects_v2`` (the client itself, or
    ``storage.s3_get.S3Getter``, whose lean path parses pages ~10x cheaper).
    ``recursive=False`` lists with ``Delimiter="/"``: only keys directly under the
    prefix. Keys ending in ``/`` are folder markers made by consoles, not samples, and
    are skipped. ``concurrency`` > 1 lists key ranges concurrently (at most that many
    requests at once; pages that arrive early wait in ``spill_dir``), same pages out.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = True,
        page_size: int = 1000,
        concurrency: int = 1,
        spill_dir: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.recursive = recursive
        self.page_size = page_size
        self.concurrency = concurrency
        self.spill_dir = spill_dir
        self.pages_scanned = 0
        #: What the last ``pages()`` did: requests, partitions, concurrency.
        self.stats = ListingStats()

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    async def _list(self, delimiter: bool, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.page_size,
        }
        if delimiter:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token

        async def call() -> dict[str, Any]:
            return dict(await self.client.list_objects_v2(**kwargs))

        return await _with_retries(call, self.root)

    async def _raw_pages(self, delimiter: bool, *, count: bool) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            resp = await self._list(delimiter, token)
            if count:
                self.pages_scanned += 1
            yield resp
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")
            if not token:
                return

    async def list_page(
        self, prefix: str, *, delimiter: bool, start_after: str | None, token: str | None
    ) -> ListPage:
        """One ListObjectsV2 request (retried), as full keys, common prefixes, next token."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": self.page_size,
        }
        if delimiter:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after

        async def call() -> dict[str, Any]:
            return dict(await self.client.list_objects_v2(**kwargs))

        resp = await _with_retries(call, self.root)
        return ListPage(
            [(obj["Key"], int(obj.get("Size", 0))) for obj in resp.get("Contents", ())],
            [cp["Prefix"] for cp in resp.get("CommonPrefixes", ())],
            resp.get("NextContinuationToken") if resp.get("IsTruncated") else None,
        )

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Pages of ``(relative_key, size)`` in key order: one per ListObjectsV2 response
        as it arrives, or (``concurrency`` > 1) the partitioned listing's pages."""
        if self.concurrency > 1:
            listing = PartitionedListing(
                self.list_page,
                self.prefix,
                link=self.root,
                recursive=self.recursive,
                concurrency=self.concurrency,
                spill_dir=self.spill_dir,
            )
            self.stats = listing.stats
            async with contextlib.aclosing(listing.pages()) as pages:
                async for page in pages:
                    self.pages_scanned = listing.stats.requests
                    yield page
            self.pages_scanned = listing.stats.requests
            return
        self.stats = ListingStats()
        cut = len(self.prefix)
        async for resp in self._raw_pages(not self.recursive, count=True):
            self.stats.requests = self.pages_scanned
            page = [
                (obj["Key"][cut:], int(obj.get("Size", 0)))
                for obj in resp.get("Contents", ())
                if not obj["Key"].endswith("/")
            ]
            yield page

    async def folders(self) -> FolderSummary:
        """One delimiter listing: common prefixes are the folders, contents the loose keys."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for resp in self._raw_pages(True, count=False):
            for cp in resp.get("CommonPrefixes", ()):
                folders.append(cp["Prefix"][cut:].rstrip("/"))
            for obj in resp.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    loose += 1
                    example = example or obj["Key"][cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)

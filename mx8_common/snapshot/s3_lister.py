"""Paged S3 listing as ``(relative_key, size)`` pages: the S3 ``PageSource``.

``S3PageSource`` yields each ListObjectsV2 page as it arrives, so the full key list is
never in memory; with ``concurrency`` > 1 it lists key ranges concurrently and yields
the same pages in key order (``partitioned.PartitionedListing``). ``folders()`` is one
delimiter listing. The resolver checks key order with ``page_source.ordered_pages``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from mx8_common.errors import TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
from mx8_common.snapshot.partitioned import ListingStats, ListPage, PartitionedListing
from mx8_common.storage.rest_client import http_time
from mx8_common.storage.s3_client import s3_errors

__all__ = ["S3PageSource"]

T = TypeVar("T")

#: A listing call is tried 4 times, 100 ms doubling, full jitter.
_LIST_BACKOFF = Backoff(base_s=0.1, attempts=4)


async def _with_retries(call: Callable[[], Awaitable[T]], location: str) -> T:
    """Retry a listing call on throttling/transport errors, with full-jitter backoff."""

    async def translated() -> T:
        with s3_errors(location):
            return await call()

    return await _LIST_BACKOFF.run(
        translated, retry_if=lambda exc: isinstance(exc, TransientStorageError)
    )


def _server_time(resp: dict[str, Any]) -> float | None:
    """The answer's Date header as Unix seconds (the server's clock), if it has one."""
    headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    return http_time(headers.get("date"))


class S3PageSource:
    """ListObjectsV2 pages under ``s3://bucket/prefix`` through an open client (a
    ``PageSource``).

    ``client`` is anything with aiobotocore's ``list_objects_v2`` (the client itself, or
    ``storage.s3_get.S3Getter``, whose lean path parses pages ~10x cheaper).
    ``recursive=False`` lists with ``Delimiter="/"``: only keys directly under the
    prefix. Keys ending in ``/`` are folder markers made by consoles, not samples, and
    are skipped; those that have a body are counted (``stats.skipped_objects``, reported
    in ``snapshot_index_summary``). ``concurrency`` > 1 lists key ranges concurrently (at
    most that many requests at once; pages that arrive early wait in ``spill_dir``), same
    pages out.
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
        #: What the last ``pages()`` did: requests, partitions, concurrency.
        self.stats = ListingStats()
        #: S3's clock (the Date header) at the first listing answer: readers of the snapshot
        #: refuse objects modified after it. None until a page was listed.
        self.listed_at: float | None = None

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

        return await self._note_time(await _with_retries(call, self.root))

    async def _note_time(self, resp: dict[str, Any]) -> dict[str, Any]:
        if self.listed_at is None:
            self.listed_at = _server_time(resp)
        return resp

    async def _raw_pages(self, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            resp = await self._list(delimiter, token)
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

        resp = await self._note_time(await _with_retries(call, self.root))
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
                    yield page
            return
        self.stats = ListingStats()
        cut = len(self.prefix)
        async for resp in self._raw_pages(not self.recursive):
            self.stats.requests += 1
            note = self.stats.note_slash_key
            page = [
                (obj["Key"][cut:], int(obj.get("Size", 0)))
                for obj in resp.get("Contents", ())
                if note(obj["Key"], int(obj.get("Size", 0)))
            ]
            yield page

    async def folders(self) -> FolderSummary:
        """One delimiter listing: common prefixes are the folders, contents the loose keys."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for resp in self._raw_pages(True):
            for cp in resp.get("CommonPrefixes", ()):
                folders.append(cp["Prefix"][cut:].rstrip("/"))
            for obj in resp.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    loose += 1
                    example = example or obj["Key"][cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)

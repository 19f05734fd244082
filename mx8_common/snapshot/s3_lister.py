"""Paged S3 listing as ``(relative_key, size)`` pages, and the page-source protocol.

A *page source* is anything with ``pages()`` (an async iterator of pages of
``(key, size)``, keys relative to the dataset root) and ``location(key)`` (the manifest
location of a key); it may also offer ``async folders() -> FolderSummary`` when it can
summarize its top level cheaply (see ``labels``). ``S3PageSource`` and
``local_lister.LocalPageSource`` are the real ones; tests plug in synthetic ones that
generate a million keys page by page.

``S3PageSource`` yields each ListObjectsV2 page as it arrives, so the full key list is
never in memory. ``ordered_pages`` is the fail-fast guard: every key must be strictly
greater than the one before it, across pages, or ``NonMonotonicListingError``.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import islice
from typing import Any, Protocol, TypeVar, runtime_checkable

from mx8_common.errors import NonMonotonicListingError, TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
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
    """ListObjectsV2 pages under ``s3://bucket/prefix`` through an open aiobotocore client.

    ``recursive=False`` lists with ``Delimiter="/"``: only keys directly under the
    prefix. Zero-byte keys ending in ``/`` are folder markers made by consoles, not
    samples, and are skipped. A key ending in ``/`` that has a body is skipped too (no
    file name can hold it) but counted: ``skipped_objects`` with ``skipped_example``,
    which the resolver reports in ``snapshot_index_summary``.
    """

    #: Why ``skipped_objects`` were left out of the snapshot.
    SKIPPED_REASON = "key ends in '/' but the object has a body"

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = True,
        page_size: int = 1000,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.recursive = recursive
        self.page_size = page_size
        self.pages_scanned = 0
        self.skipped_objects = 0
        self.skipped_example: str | None = None

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

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """One page of ``(relative_key, size)`` per ListObjectsV2 response, as it arrives."""
        cut = len(self.prefix)
        async for resp in self._raw_pages(not self.recursive, count=True):
            page = []
            for obj in resp.get("Contents", ()):
                key, size = obj["Key"], int(obj.get("Size", 0))
                if not key.endswith("/"):
                    page.append((key[cut:], size))
                elif size > 0:
                    self.skipped_objects += 1
                    self.skipped_example = self.skipped_example or key
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

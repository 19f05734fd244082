"""Paged listing of ``gs://`` and ``az://`` prefixes as ``(relative_key, size)`` pages.

The same ``PageSource`` contract as ``s3_lister.S3PageSource``: pages arrive as the server
sends them (the full key list is never in memory), keys in the order the server lists them
(GCS and Azure both document lexicographic order; ``page_source.ordered_pages`` still
checks), locations keep the link's scheme, keys ending in ``/`` are folder markers and are
skipped (counted when they have a body). A listing call that fails transiently is retried
with the resolver's backoff, resuming after the last key it delivered.

``listed_at`` is the later of this host's clock when listing started and the newest object
time listed: every object the snapshot holds was last modified at or before it whatever
the clock skew between this host and the store, so readers never refuse an unchanged object.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from mx8_common.errors import TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
from mx8_common.snapshot.partitioned import ListingStats
from mx8_common.storage.azure_rest import AzureListPage, AzureRestClient
from mx8_common.storage.gcs_client import GcsClient

__all__ = ["AzurePageSource", "GcsPageSource"]

T = TypeVar("T")

#: A listing call is tried 4 times, 100 ms doubling, full jitter (as for S3).
_LIST_BACKOFF = Backoff(base_s=0.1, attempts=4)


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    return await _LIST_BACKOFF.run(
        call, retry_if=lambda exc: isinstance(exc, TransientStorageError)
    )


class _CloudPages:
    """What both sources share: the root, locations, the listing time and stats."""

    scheme = ""

    def __init__(self, bucket: str, prefix: str, *, recursive: bool, page_size: int) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.recursive = recursive
        self.page_size = page_size
        self.stats = ListingStats()
        self._started: float | None = None
        self._newest: float | None = None

    @property
    def root(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    def location(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}{key}"

    @property
    def listed_at(self) -> float | None:
        """See the module docstring; None before a listing started."""
        if self._started is None:
            return None
        return max(self._started, self._newest or 0.0)

    def _note_start(self) -> None:
        if self._started is None:
            self._started = time.time()

    def _note_modified(self, seconds: float | None) -> None:
        if seconds is not None and (self._newest is None or seconds > self._newest):
            self._newest = seconds

    def _page(self, entries: list[tuple[str, int, float | None]]) -> list[tuple[str, int]]:
        cut = len(self.prefix)
        note = self.stats.note_slash_key
        page = []
        for key, size, modified in entries:
            self._note_modified(modified)
            if note(key, size):
                page.append((key[cut:], size))
        return page


def _rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    import datetime

    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GcsPageSource(_CloudPages):
    """``objects.list`` pages under ``gs://bucket/prefix`` through an open ``GcsClient``."""

    scheme = "gs"

    def __init__(
        self,
        client: GcsClient,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = True,
        page_size: int = 1000,
    ) -> None:
        super().__init__(bucket, prefix, recursive=recursive, page_size=page_size)
        self.client = client

    async def _answers(self, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        self._note_start()
        token: str | None = None
        while True:

            async def call(token: str | None = token) -> dict[str, Any]:
                return await self.client.list_page(
                    self.bucket,
                    self.prefix,
                    delimiter=delimiter,
                    page_token=token,
                    max_results=self.page_size,
                )

            answer = await _retrying(call)
            self.stats.requests += 1
            yield answer
            token = answer.get("nextPageToken")
            if not token:
                return

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Pages of ``(relative_key, size)``: one per ``objects.list`` answer."""
        self.stats = ListingStats()
        async for answer in self._answers(not self.recursive):
            yield self._page(
                [
                    (item["name"], int(item.get("size") or 0), _rfc3339(item.get("updated")))
                    for item in answer.get("items") or ()
                ]
            )

    async def folders(self) -> FolderSummary:
        """One delimiter listing: prefixes are the folders, items the loose objects."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for answer in self._answers(True):
            folders.extend(p[cut:].rstrip("/") for p in answer.get("prefixes") or ())
            for item in answer.get("items") or ():
                if not item["name"].endswith("/"):
                    loose += 1
                    example = example or item["name"][cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)


class AzurePageSource(_CloudPages):
    """List Blobs pages under ``az://container/prefix`` through an open ``AzureRestClient``
    (aiohttp, never obstore: see ``storage.azure_rest`` on fork safety)."""

    scheme = "az"

    def __init__(
        self,
        client: AzureRestClient,
        container: str,
        prefix: str,
        *,
        recursive: bool = True,
        page_size: int = 1000,
    ) -> None:
        super().__init__(container, prefix, recursive=recursive, page_size=page_size)
        self.client = client

    async def _answers(self, delimiter: bool) -> AsyncIterator[AzureListPage]:
        self._note_start()
        marker: str | None = None
        while True:

            async def call(marker: str | None = marker) -> AzureListPage:
                return await self.client.list_page(
                    self.bucket,
                    self.prefix,
                    delimiter=delimiter,
                    marker=marker,
                    max_results=self.page_size,
                )

            answer = await _retrying(call)
            self.stats.requests += 1
            yield answer
            marker = answer.next_marker
            if not marker:
                return

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Pages of ``(relative_key, size)``: one per List Blobs answer."""
        self.stats = ListingStats()
        async for answer in self._answers(not self.recursive):
            yield self._page(answer.blobs)

    async def folders(self) -> FolderSummary:
        """One delimiter listing: blob prefixes are the folders, blobs the loose objects."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for answer in self._answers(True):
            folders.extend(p[cut:].rstrip("/") for p in answer.prefixes)
            for name, _size, _modified in answer.blobs:
                if not name.endswith("/"):
                    loose += 1
                    example = example or name[cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)

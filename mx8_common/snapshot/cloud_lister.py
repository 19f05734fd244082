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

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from mx8_common.errors import TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
from mx8_common.snapshot.partitioned import ListingStats
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.gcs_client import GcsClient
from mx8_common.storage.rest_client import ListAnswer

__all__ = ["AzurePageSource", "GcsPageSource"]

T = TypeVar("T")

#: A listing call is tried 4 times, 100 ms doubling, full jitter (as for S3).
_LIST_BACKOFF = Backoff(base_s=0.1, attempts=4)


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    return await _LIST_BACKOFF.run(
        call, retry_if=lambda exc: isinstance(exc, TransientStorageError)
    )


class _Lister(Protocol):
    """What a source needs of its client (``GcsClient``, ``AzureRestClient``)."""

    def list_page(
        self,
        bucket: str,
        prefix: str,
        *,
        delimiter: bool = False,
        token: str | None = None,
        max_results: int = 1000,
    ) -> Awaitable[ListAnswer]: ...


class _CloudPages:
    """One paged listing through a REST client's ``list_page``; subclasses name the scheme."""

    scheme = ""

    def __init__(
        self,
        client: _Lister,
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

    async def _answers(self, delimiter: bool) -> AsyncIterator[ListAnswer]:
        """Every listing answer in turn, each call retried with backoff."""
        if self._started is None:
            self._started = time.time()
        token: str | None = None
        while True:
            fetch = functools.partial(
                self.client.list_page,
                self.bucket,
                self.prefix,
                delimiter=delimiter,
                token=token,
                max_results=self.page_size,
            )
            answer = await _retrying(fetch)
            self.stats.requests += 1
            yield answer
            token = answer.next_token
            if not token:
                return

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Pages of ``(relative_key, size)``: one per listing answer."""
        self.stats = ListingStats()
        cut = len(self.prefix)
        note = self.stats.note_slash_key
        async for answer in self._answers(not self.recursive):
            page = []
            for key, size, modified in answer.objects:
                if modified is not None and (self._newest is None or modified > self._newest):
                    self._newest = modified
                if note(key, size):
                    page.append((key[cut:], size))
            yield page

    async def folders(self) -> FolderSummary:
        """One delimiter listing: prefixes are the folders, objects the loose objects."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for answer in self._answers(True):
            folders.extend(p[cut:].rstrip("/") for p in answer.prefixes)
            for name, _size, _modified in answer.objects:
                if not name.endswith("/"):
                    loose += 1
                    example = example or name[cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)


class GcsPageSource(_CloudPages):
    """``objects.list`` pages under ``gs://bucket/prefix`` through an open ``GcsClient``."""

    scheme = "gs"
    client: GcsClient


class AzurePageSource(_CloudPages):
    """List Blobs pages under ``az://container/prefix`` through an open ``AzureRestClient``
    (aiohttp, never obstore: see ``storage.azure_rest`` on fork safety)."""

    scheme = "az"
    client: AzureRestClient

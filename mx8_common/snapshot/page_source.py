"""``PageSource``: where the resolver's listing comes from, and the key-order guard.

A page source lists a dataset root as pages of ``(key, size)`` (keys relative to the
root), names the manifest location of a key, and summarizes its top level for label
detection. ``s3_lister.S3PageSource`` (ListObjectsV2 pages) and
``local_lister.LocalPageSource`` (a folder walk) are the real ones, each with a cheap
``folders()``; a source that has no cheaper way subclasses ``PageSource`` and inherits
``folders()`` as one pass over its own pages (tests use this for synthetic listings of a
million keys).

``ordered_pages`` is the fail-fast guard every listing goes through: each key must be
strictly greater than the one before it, across pages, or ``NonMonotonicListingError``.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from itertools import islice
from typing import Protocol, runtime_checkable

from mx8_common.errors import NonMonotonicListingError
from mx8_common.manifest.labels import FolderSummary, scan_folders

__all__ = ["Page", "PageSource", "ordered_pages"]

#: One listing page: ``(key relative to the dataset root, size in bytes)`` in key order.
Page = Sequence[tuple[str, int]]


@runtime_checkable
class PageSource(Protocol):
    """A dataset root the resolver can list, locate keys in and summarize."""

    def pages(self) -> AsyncIterator[Page]:
        """Pages of ``(key relative to the dataset root, size in bytes)``, keys increasing."""
        ...

    def location(self, key: str) -> str:
        """The manifest location of a relative key."""
        ...

    async def folders(self) -> FolderSummary:
        """Class folders (holding a file) and loose keys directly under the root.

        This default reads every page once; real sources answer from one shallow listing.
        """
        return await scan_folders(self.pages())


async def ordered_pages(pages: AsyncIterator[Page], *, link: str) -> AsyncGenerator[Page, None]:
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

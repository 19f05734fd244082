"""The ``PageSource`` protocol every lister meets, and the monotonic-order guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mx8_common.errors import NonMonotonicListingError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.snapshot.local_lister import LocalPageSource
from mx8_common.snapshot.page_source import Page, PageSource, ordered_pages
from mx8_common.snapshot.resolver import resolve_snapshot
from mx8_common.snapshot.s3_lister import S3PageSource


async def _gen(pages: list[list[tuple[str, int]]]) -> AsyncIterator[Page]:
    for page in pages:
        yield page


class _Fixed(PageSource):
    """A synthetic listing that inherits ``folders()`` from the protocol."""

    def __init__(self, pages: list[list[tuple[str, int]]]) -> None:
        self._pages = pages

    def pages(self) -> AsyncIterator[Page]:
        return _gen(self._pages)

    def location(self, key: str) -> str:
        return "s3://bkt/p/" + key


def test_page_source_real_listers_meet_the_whole_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalPageSource(tmp_path), PageSource)
    assert isinstance(S3PageSource(client=None, bucket="b", prefix="p/"), PageSource)


async def test_page_source_default_folders_scan_the_pages() -> None:
    source = _Fixed([[("a/1", 1), ("b/x/y", 1)], [("c", 1), ("d/1", 1)]])
    assert await source.folders() == FolderSummary(("a", "b", "d"), 1, "c")


async def test_page_source_resolver_refuses_an_incomplete_source(store_root: str) -> None:
    class PagesOnly:
        def pages(self) -> AsyncIterator[Page]:
            return _gen([])

        def location(self, key: str) -> str:
            return key

    incomplete: Any = PagesOnly()
    with pytest.raises(TypeError, match="needs pages\\(\\), location\\(\\) and folders\\(\\)"):
        await resolve_snapshot("s3://bkt/p/", page_source=incomplete)


@pytest.mark.parametrize(
    ("pages", "fragment"),
    [
        ([[("a", 1), ("c", 1)], [("b", 1)]], "sorts before"),
        ([[("a", 1), ("a", 1)]], "repeats"),
        ([[("b", 1)], [], [("b", 1)]], "repeats"),
    ],
)
async def test_ordered_pages_fails_fast(pages: list[list[tuple[str, int]]], fragment: str) -> None:
    with pytest.raises(NonMonotonicListingError, match=fragment) as info:
        [p async for p in ordered_pages(_gen(pages), link="s3://b/p/")]
    assert "MX8_SNAPSHOT_S3_EXTERNAL_SORT=1" in str(info.value)
    assert info.value.link == "s3://b/p/"


async def test_ordered_pages_passes_increasing_pages() -> None:
    pages = [[("a", 1), ("b", 2)], [], [("b/c", 3), ("é", 4)]]
    assert [p async for p in ordered_pages(_gen(pages), link="x")] == pages

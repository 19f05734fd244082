"""The resolver's page pipeline: read-ahead, page-level checks and what a failure leaves."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.eventually import assert_eventually
from support.snapshot import cfg, rows

from mx8_common.errors import (
    AccessDeniedError,
    LabelError,
    NonMonotonicListingError,
    UnsupportedKeyError,
)
from mx8_common.manifest.labels import FolderSummary
from mx8_common.snapshot.page_source import Page, PageSource, ordered_pages
from mx8_common.snapshot.resolver import ResolvedSnapshot, _read_ahead, resolve_snapshot


class _Recorded(PageSource):
    """An async page source over fixed pages that records what it produced and its close."""

    def __init__(self, pages: list[list[tuple[str, int]]], *, fail_at: int | None = None):
        self._pages = pages
        self._fail_at = fail_at
        self.produced = 0
        self.closed = False
        self.block = asyncio.Event()  # set to let a page past ``fail_at`` through

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        try:
            for i, page in enumerate(self._pages):
                if i == self._fail_at:
                    raise AccessDeniedError("listing refused", location="s3://bkt/p/")
                self.produced += 1
                yield page
        finally:
            self.closed = True

    def location(self, key: str) -> str:
        return "s3://bkt/p/" + key

    async def folders(self) -> FolderSummary:
        return FolderSummary(("a", "b"), 0, None)


PAGES = [[("a/1", 1), ("a/2", 2)], [("b/1", 3)], [("b/2", 4), ("b/3", 5)]]


async def test_read_ahead_fetches_the_next_page_while_the_caller_holds_one() -> None:
    source = _Recorded(PAGES)
    it = _read_ahead(source.pages())
    assert await anext(it) == PAGES[0]
    await assert_eventually(lambda: source.produced == 2)  # asked for nothing yet
    assert [p async for p in it] == PAGES[1:]
    assert source.closed


async def test_read_ahead_close_mid_stream_closes_the_source() -> None:
    source = _Recorded(PAGES)
    it = _read_ahead(source.pages())
    await anext(it)
    await assert_eventually(lambda: source.produced == 2)  # a fetched page nobody takes
    await it.aclose()
    assert source.closed


async def test_read_ahead_close_while_the_next_fetch_waits_cancels_it() -> None:
    gate = asyncio.Event()
    closed: list[bool] = []

    async def slow() -> AsyncIterator[Page]:
        try:
            yield [("a", 1)]
            await gate.wait()  # never set: the read-ahead is stuck here when we close
            yield [("b", 1)]
        finally:
            closed.append(True)

    it = _read_ahead(slow())
    await anext(it)
    await it.aclose()
    assert closed == [True]


async def test_read_ahead_listing_error_surfaces_in_order() -> None:
    source = _Recorded(PAGES, fail_at=1)
    it = _read_ahead(source.pages())
    assert await anext(it) == PAGES[0]
    with pytest.raises(AccessDeniedError, match="listing refused"):
        await anext(it)


async def test_resolve_snapshot_write_error_stops_listing_and_leaves_no_temp(
    store_root: str,
) -> None:
    # "c/1" lies outside the classes folders() reported: the write of page 2 fails while the
    # read-ahead already holds page 3.
    pages = [[("a/1", 1)], [("a/2", 1), ("c/1", 1)], [("d/1", 1)], [("e/1", 1)]]
    source = _Recorded(pages)
    with pytest.raises(LabelError, match="'c/1' is not inside one of the 2 class folders"):
        await resolve_snapshot("s3://bkt/p/", cfg(store_root), page_source=source)
    assert source.closed and source.produced <= 3
    assert list((Path(store_root) / "tmp").iterdir()) == []


async def test_resolve_snapshot_page_checks_name_the_bad_key(store_root: str) -> None:
    for bad, char in (("a/x\ry", "CR"), ("a/x\ty", "TAB"), ("a/x\ny", "LF")):
        source = _Recorded([[("a/1", 1)], [("a/2", 1), (bad, 1), ("a/z\tz", 1)]])
        with pytest.raises(UnsupportedKeyError, match=char) as info:
            await resolve_snapshot("s3://bkt/p/", cfg(store_root), page_source=source)
        assert info.value.key == bad
    source = _Recorded([[("a/1", 1), ("a/3", 1)], [("a/2", 1)]])
    with pytest.raises(NonMonotonicListingError, match="'a/2', which sorts before the previous"):
        await resolve_snapshot("s3://bkt/p/", cfg(store_root), page_source=source)


async def test_resolve_snapshot_synthetic_pages_rows_and_hints(store_root: str) -> None:
    resolved = await resolve_snapshot("s3://bkt/p/", cfg(store_root), page_source=_Recorded(PAGES))
    assert [(loc, n) for loc, n, _hint in rows(resolved)] == [
        ("s3://bkt/p/a/1", 1),
        ("s3://bkt/p/a/2", 2),
        ("s3://bkt/p/b/1", 3),
        ("s3://bkt/p/b/2", 4),
        ("s3://bkt/p/b/3", 5),
    ]
    hints = [hint for _loc, _n, hint in rows(resolved)]
    assert hints[:2] == [hints[0]] * 2 and hints[2:] == [hints[2]] * 3 and hints[0] != hints[2]


def test_resolved_snapshot_repr_leaves_out_the_manifest_bytes() -> None:
    snap = ResolvedSnapshot("l", "h", 1, 9, None, "/p", True, b"x" * 1_000_000)
    assert "xxxx" not in repr(snap) and "manifest_hash='h'" in repr(snap)


def _reference_ordered(pages: list[list[tuple[str, int]]]) -> str | None:
    """The per-key rule: the first key not above the previous one, as the error names it."""
    last = None
    for page in pages:
        for key, _ in page:
            if last is not None and key <= last:
                return f"{key!r}, which {'repeats' if key == last else 'sorts before'}"
            last = key
    return None


@given(
    pages=st.lists(
        st.lists(st.tuples(st.sampled_from(["a", "b", "b/c", "c", "é"]), st.just(1)), max_size=4),
        max_size=4,
    )
)
async def test_ordered_pages_page_check_matches_per_key_rule(
    pages: list[list[tuple[str, int]]],
) -> None:
    async def gen() -> AsyncIterator[Page]:
        for page in pages:
            yield page

    expected = _reference_ordered(pages)
    if expected is None:
        assert [p async for p in ordered_pages(gen(), link="x")] == pages
        keys = [k for p in pages for k, _ in p]
        assert all(map(operator.lt, keys, keys[1:]))
    else:
        with pytest.raises(NonMonotonicListingError) as info:
            [p async for p in ordered_pages(gen(), link="x")]
        assert expected in str(info.value)

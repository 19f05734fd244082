"""The page-built local lister: same keys, order and sizes as a reference walk, any shape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mx8_common.errors import AccessDeniedError
from mx8_common.snapshot.local_lister import LocalPageSource, _paged, iter_local_files


def _reference(root: Path) -> list[tuple[str, int]]:
    """Every regular file under root as (posix key, size), sorted by UTF-8 bytes."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(out, key=lambda kv: kv[0].encode("utf-8"))


# Names chosen to collide around "/": "a" < "a-b" < "a/..." < "a0" bytewise, plus non-ASCII.
_names = st.sampled_from(["a", "a-b", "a0", "ab", "B", "é", "z", "日"])
_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=3).map(tuple), st.integers(0, 3), max_size=12
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees, page_size=st.integers(1, 5))
def test_local_page_source_matches_reference_walk(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[tuple[str, ...], int], page_size: int
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for parts, size in tree.items():
        path = root.joinpath(*parts)
        # A name may already be a folder (or a file where a folder is wanted): skip those.
        if path.is_dir() or any(p.is_file() for p in path.parents if p != root):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    expected = _reference(root)
    assert list(iter_local_files(root)) == expected
    pages = list(_paged(iter([list(iter_local_files(root))]), page_size))
    assert [kv for page in pages for kv in page] == expected
    assert all(len(page) == page_size for page in pages[:-1])
    source = LocalPageSource(root)
    for key, _size in expected:
        assert source.location(key) == os.path.join(source.root, key)


@given(chunks=st.lists(st.lists(st.integers(), max_size=7), max_size=6), size=st.integers(1, 4))
def test_paged_regroups_runs_into_full_pages(chunks: list[list[int]], size: int) -> None:
    pages = list(_paged(iter(chunks), size))
    assert [x for page in pages for x in page] == [x for chunk in chunks for x in chunk]
    assert all(len(page) == size for page in pages[:-1])
    assert all(0 < len(page) <= size for page in pages)


async def test_local_page_source_pages_follow_the_walk(tmp_path: Path) -> None:
    for i in range(7):
        (tmp_path / f"d{i % 2}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 2}" / f"f{i}").write_bytes(b"y" * i)
    (tmp_path / "loose").write_bytes(b"zz")
    pages = [page async for page in LocalPageSource(tmp_path, page_size=3).pages()]
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [kv for p in pages for kv in p] == list(iter_local_files(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_iter_local_files_unreadable_folder_is_access_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    locked.chmod(0)
    try:
        with pytest.raises(AccessDeniedError, match="permission denied listing folder"):
            list(iter_local_files(tmp_path))
    finally:
        locked.chmod(0o755)


def test_local_page_source_location_is_path_join(tmp_path: Path) -> None:
    assert LocalPageSource("/").location("a/b") == "/a/b"
    assert LocalPageSource(tmp_path / "x" / "..").location("k") == os.path.join(tmp_path, "k")

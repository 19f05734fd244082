"""Local folder listing: bytewise order equal to S3's, recursion, loops and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mx8_common.errors import ObjectNotFoundError, UnsupportedKeyError
from mx8_common.snapshot.local_lister import LocalPageSource, iter_local_files


def _make(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


FILES = {
    "a/b": b"1",
    "a-c": b"22",
    "a0": b"333",
    "a/z/deep": b"4444",
    "B": b"",
    "é/x": b"55555",
    "ab/c": b"6",
}


def test_iter_local_files_bytewise_utf8_order(tmp_path: Path) -> None:
    _make(tmp_path, FILES)
    listed = list(iter_local_files(tmp_path))
    keys = [k for k, _ in listed]
    assert keys == sorted(FILES, key=lambda k: k.encode("utf-8"))
    assert keys == ["B", "a-c", "a/b", "a/z/deep", "a0", "ab/c", "é/x"]
    assert dict(listed) == {k: len(v) for k, v in FILES.items()}


def test_iter_local_files_non_recursive_keeps_direct_files(tmp_path: Path) -> None:
    _make(tmp_path, FILES)
    assert [k for k, _ in iter_local_files(tmp_path, recursive=False)] == ["B", "a-c", "a0"]


def test_iter_local_files_follows_symlinks_without_looping(tmp_path: Path) -> None:
    _make(tmp_path, {"d/f": b"x", "real.bin": b"yy"})
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")  # d/loop -> d
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    assert list(iter_local_files(tmp_path)) == [("d/f", 1), ("link.bin", 2), ("real.bin", 2)]


def test_iter_local_files_missing_folder_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        list(iter_local_files(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ObjectNotFoundError, match="is a file, not a folder"):
        list(iter_local_files(tmp_path / "file"))


def test_iter_local_files_rejects_non_utf8_names(tmp_path: Path) -> None:
    try:
        (tmp_path / os.fsdecode(b"bad\xff")).write_bytes(b"x")
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    with pytest.raises(UnsupportedKeyError, match="not valid UTF-8"):
        list(iter_local_files(tmp_path))


async def test_local_page_source_pages_and_folders(tmp_path: Path) -> None:
    _make(tmp_path, {f"cls{i % 3}/{i:04d}.jpg": b"x" for i in range(25)})
    (tmp_path / "empty_dir").mkdir()
    source = LocalPageSource(tmp_path, page_size=10)
    pages = [page async for page in source.pages()]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert source.location(pages[0][0][0]) == str(tmp_path / "cls0" / "0000.jpg")
    summary = await source.folders()
    assert summary.folders == ("cls0", "cls1", "cls2")  # empty_dir holds no file
    assert summary.loose_objects == 0


async def test_local_page_source_folder_counts_only_if_some_file_lies_under_it(
    tmp_path: Path,
) -> None:
    _make(tmp_path, {"deep/a/b/c.jpg": b"x", "flat/x.jpg": b"y"})
    (tmp_path / "hollow" / "sub" / "subsub").mkdir(parents=True)
    summary = await LocalPageSource(tmp_path).folders()
    assert summary.folders == ("deep", "flat")  # hollow holds only empty folders

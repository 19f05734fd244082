"""Listing a local folder as ``(relative_key, size)`` pairs in bytewise UTF-8 order.

The walk is depth-first and lazy: only the entries of the directories on the current
path are held, so memory is bounded per directory, not per dataset. Global bytewise order
falls out of sorting each directory's entries by ``name`` for files and ``name + "/"`` for
directories, because every key under directory ``d`` starts with ``d/``; that is the same
order S3 lists keys in, so a folder and its upload produce rows in one order.

Symlinks are followed (datasets are often symlink farms); a directory already on the
current path is skipped so a link loop cannot recurse forever.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from mx8_common.errors import AccessDeniedError, ObjectNotFoundError, UnsupportedKeyError
from mx8_common.labels import FolderSummary

__all__ = ["LocalPageSource", "iter_local_files", "thread_pages"]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 1000


def _entries(path: str, rel: str) -> list[tuple[bytes, str, bool, int, tuple[int, int]]]:
    """Sorted (sort_key, name, is_dir, size, dir identity) of one directory."""
    out = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    sort_name = entry.name.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise UnsupportedKeyError(
                        f"file name {os.fsencode(entry.path)!r} is not valid UTF-8; mx8 "
                        "manifests hold UTF-8 paths, so rename it",
                        key=rel + entry.name,
                    ) from exc
                try:
                    if entry.is_dir():
                        st = entry.stat()
                        out.append((sort_name + b"/", entry.name, True, 0, (st.st_dev, st.st_ino)))
                    elif entry.is_file():
                        size = entry.stat().st_size
                        out.append((sort_name, entry.name, False, size, (0, 0)))
                except FileNotFoundError:
                    continue  # a dangling symlink or a file deleted mid-walk: not listable
    except PermissionError as exc:
        raise AccessDeniedError(
            f"permission denied listing folder {path}; grant read+execute to this user",
            location=path,
        ) from exc
    out.sort()
    return out


def _walk(
    path: str, rel: str, recursive: bool, on_path: set[tuple[int, int]]
) -> Iterator[tuple[str, int]]:
    for _sort, name, is_dir, size, ident in _entries(path, rel):
        if not is_dir:
            yield rel + name, size
        elif recursive and ident not in on_path:
            on_path.add(ident)
            yield from _walk(os.path.join(path, name), rel + name + "/", recursive, on_path)
            on_path.discard(ident)


def _check_root(root: str) -> os.stat_result:
    try:
        st = os.stat(root)
    except FileNotFoundError as exc:
        raise ObjectNotFoundError(
            f"folder {root} does not exist; check the dataset link", location=root
        ) from exc
    except PermissionError as exc:
        raise AccessDeniedError(f"permission denied on folder {root}", location=root) from exc
    if not os.path.isdir(root):
        raise ObjectNotFoundError(
            f"{root} is a file, not a folder; link the folder that holds the dataset",
            location=root,
        )
    return st


def iter_local_files(
    root: str | os.PathLike[str], *, recursive: bool = True
) -> Iterator[tuple[str, int]]:
    """Yield ``(relative_key, size)`` for every file under ``root``, bytewise sorted.

    Keys use ``/`` separators. ``recursive=False`` yields only files directly in ``root``.
    """
    root = os.fspath(root)
    st = _check_root(root)
    yield from _walk(root, "", recursive, {(st.st_dev, st.st_ino)})


def _take(it: Iterator[T], n: int) -> list[T]:
    out: list[T] = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


async def thread_pages(
    it: Iterator[T], page_size: int = DEFAULT_PAGE_SIZE
) -> AsyncIterator[list[T]]:
    """Drain a blocking iterator page by page in a worker thread, off the event loop."""
    while True:
        page = await asyncio.to_thread(_take, it, page_size)
        if not page:
            return
        yield page


def _summarize(root: str) -> FolderSummary:
    folders: list[str] = []
    loose = 0
    example: str | None = None
    for _sort, name, is_dir, _size, ident in _entries(root, ""):
        if not is_dir:
            loose += 1
            example = example or name
            continue
        # A class folder counts only if it holds a file, as on S3 (no empty "folders").
        if _holds_file(os.path.join(root, name), {ident}):
            folders.append(name)
    return FolderSummary(tuple(sorted(folders)), loose, example)


def _holds_file(path: str, on_path: set[tuple[int, int]]) -> bool:
    """True if any file lies under ``path``; stops at the first one.

    Unlike ``_walk`` it neither sorts nor stats files (``is_file`` reads the directory
    entry's type), so checking a class folder costs one directory read, not a stat per file.
    """
    subdirs = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_file():
                return True
            if entry.is_dir():
                subdirs.append(entry)
    for entry in subdirs:
        st = entry.stat()
        ident = (st.st_dev, st.st_ino)
        if ident not in on_path and _holds_file(entry.path, on_path | {ident}):
            return True
    return False


class LocalPageSource:
    """A page source over a local folder (the ``PageSource`` protocol of ``s3_lister``)."""

    def __init__(
        self, root: str | os.PathLike[str], *, recursive: bool = True, page_size: int = 1000
    ) -> None:
        self.root = os.path.normpath(os.fspath(root))
        self.recursive = recursive
        self.page_size = page_size

    def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Pages of ``(relative_key, size)`` in bytewise key order."""
        return thread_pages(iter_local_files(self.root, recursive=self.recursive), self.page_size)

    def location(self, key: str) -> str:
        """The manifest location of ``key``: an absolute path."""
        return os.path.join(self.root, key)

    async def folders(self) -> FolderSummary:
        """Class folders (holding at least one file) and loose files directly under the root."""
        await asyncio.to_thread(_check_root, self.root)
        return await asyncio.to_thread(_summarize, self.root)

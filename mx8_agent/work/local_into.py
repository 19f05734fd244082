"""Local files read straight into a batch's shared-memory slot: one thread-pool job per
batch, no per-sample ``bytes`` and no second copy.

The fast path opens, checks and ``preadv``s each file into its place. Anything unusual
(a size that differs from the manifest's, a file modified after the listing, a short
read, an error) is handed to the object reader's own local read, so what is refused and
how (``ObjectNotFoundError``, ``ObjectChangedError``, ...) is exactly what every other
read path does.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Sequence

from mx8_common.storage.object_reader import _local_path, _normalize, _read_local

__all__ = ["LocalItem", "read_into"]

#: ``(location, byte_offset or None, byte_length)`` of one sample.
LocalItem = tuple[str, "int | None", int]

_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _fast(
    path: str, off: int | None, length: int, listed_at: float | None, dest: memoryview
) -> bool:
    try:
        fd = os.open(path, _FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if off is None and st.st_size != length:
            return False
        if listed_at is not None and st.st_mtime > listed_at:
            return False
        return os.preadv(fd, [dest], off or 0) == length
    except OSError:
        return False
    finally:
        os.close(fd)


def read_into(
    items: Sequence[LocalItem], target: mmap.mmap, offset: int, listed_at: float | None
) -> float:
    """Read ``items`` back to back into ``target`` from ``offset``; the seconds it took.

    Raises the reader's typed ``StorageError`` for the first sample that cannot be read."""
    started = time.perf_counter()
    with memoryview(target) as view:
        pos = offset
        for location, off, length in items:
            dest = view[pos : pos + length]
            try:
                if not _fast(_local_path(location), off, length, listed_at, dest):
                    o, n = _normalize(location, off, length)
                    # It raises the typed refusal, or (the file was fine after all) has
                    # checked the bytes are exactly ``length``.
                    dest[:] = _read_local(location, o, n, listed_at)
            finally:
                dest.release()
            pos += length
    return time.perf_counter() - started

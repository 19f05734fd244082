"""Local files read straight into a batch's shared-memory slot: one thread-pool job per
batch, no per-sample ``bytes`` and no second copy.

Each file is read by the object reader's ``read_local_into``: the same open, checks and
errors as every other local read (``ObjectNotFoundError``, ``ObjectChangedError`` for a
size that differs from the manifest's or a file modified after the listing, ...), its
bytes ``preadv``'d into their place.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Sequence

from mx8_common.storage.object_reader import read_local_into

__all__ = ["LocalItem", "read_into"]

#: ``(location, byte_offset or None, byte_length)`` of one sample.
LocalItem = tuple[str, "int | None", int]


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
                read_local_into(location, off, length, dest, listed_at)
            finally:
                dest.release()
            pos += length
    return time.perf_counter() - started

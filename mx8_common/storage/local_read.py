"""Where sample bytes are read from the folder tree: local paths and ``file://`` URLs.

Plain blocking functions (run them in a thread or a read worker process, never on an event
loop), with the snapshot's checks: a whole file must have the manifest's size, a range
must lie inside the file, and with the snapshot's listing time a file modified after it
is refused. Every failure is a typed ``StorageError`` with one line naming the file and
the fix (``ObjectNotFoundError``, ``AccessDeniedError``, ``ObjectChangedError``).

This module imports only the standard library and ``mx8_common.errors``: the agent's
read worker processes (``read_worker``) start on it alone.
"""

from __future__ import annotations

import datetime
import errno
import mmap
import os
import time
from collections.abc import Sequence

from mx8_common.errors import (
    AccessDeniedError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
)

__all__ = [
    "REMOTE_SCHEMES",
    "LocalItem",
    "LocalRead",
    "changed_since_snapshot",
    "is_local",
    "local_path",
    "modified_after_listing",
    "normalize_range",
    "read_local",
    "read_local_into",
    "read_local_many",
    "read_many_into",
    "utc_text",
]

#: Link schemes read from object storage; anything else is a local path.
REMOTE_SCHEMES = ("s3://", "gs://", "az://")

#: One local sample to read: ``(location, byte_offset, byte_length)``.
LocalRead = tuple[str, "int | None", "int | None"]

#: ``(location, byte_offset or None, byte_length)`` of one sample read into place.
LocalItem = tuple[str, "int | None", int]


def changed_since_snapshot(location: str, expected: str, actual: str) -> ObjectChangedError:
    # The plain link keeps answering with the stale snapshot: only @refresh indexes again.
    return ObjectChangedError(
        f"{location} changed since the snapshot: expected {expected}, found {actual}; "
        "index the dataset again by appending @refresh to its link "
        "(mx8.load('s3://bucket/prefix/@refresh')) and start from the new snapshot",
        location=location,
    )


def utc_text(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def modified_after_listing(location: str, listed_at: float, modified: str) -> ObjectChangedError:
    return changed_since_snapshot(
        location,
        f"an object last modified before the snapshot's listing at {utc_text(listed_at)}",
        f"one modified {modified}",
    )


def is_local(location: str) -> bool:
    """True for a plain path or ``file://`` URL (read from the local filesystem)."""
    return not location.startswith(REMOTE_SCHEMES)


def normalize_range(
    location: str, byte_offset: int | None, byte_length: int | None
) -> tuple[int | None, int | None]:
    """A manifest row's ``(byte_offset, byte_length)`` as a read takes it: -1 becomes None,
    and an offset without a length is a ``StorageError``."""
    if byte_offset is not None and byte_offset < 0:
        byte_offset = None
    if byte_length is not None and byte_length < 0:
        byte_length = None
    if byte_offset is not None and byte_length is None:
        raise StorageError(
            f"read of {location} has byte_offset {byte_offset} without byte_length; "
            "a range needs both",
            location=location,
        )
    return byte_offset, byte_length


def local_path(location: str) -> str:
    """The filesystem path of a plain path or ``file://`` URL; another scheme is a
    ``StorageError``."""
    if location.startswith("file://"):
        return location[7:]
    if "://" in location:
        raise StorageError(
            f"{location} uses a storage scheme mx8 cannot read; use s3://bucket/key, "
            "gs://bucket/key, az://container/key, file:///path or a plain path",
            location=location,
        )
    return location


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _open_local(location: str) -> int:
    try:
        return os.open(local_path(location), _OPEN_FLAGS)
    except FileNotFoundError:
        raise ObjectNotFoundError(
            f"{location} does not exist (it was deleted or renamed since the snapshot?)",
            location=location,
        ) from None
    except PermissionError:
        raise AccessDeniedError(
            f"permission denied reading {location}; check the file mode and the user running "
            "the loader",
            location=location,
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot open {location}: {exc}", location=location) from None


def _checked_span(
    location: str,
    fd: int,
    byte_offset: int | None,
    byte_length: int | None,
    listed_at: float | None,
) -> tuple[int, int]:
    """``(start, length)`` to read from the open file, after the snapshot checks.

    One ``fstat`` of the open descriptor gives both the size (a whole file must be the
    manifest's size) and the mtime (not later than the listing): the checks and the read
    see the same file, and no path lookup is repeated.
    """
    st = os.fstat(fd)
    if byte_offset is None:
        size = st.st_size
        if byte_length is not None and size != byte_length:
            raise changed_since_snapshot(location, f"{byte_length} bytes", f"{size} bytes")
        start, want = 0, size
    else:
        start, want = byte_offset, int(byte_length or 0)
    if listed_at is not None and st.st_mtime > listed_at:
        raise modified_after_listing(location, listed_at, f"at {utc_text(st.st_mtime)}")
    return start, want


def _short(location: str, start: int, want: int, got: int) -> ObjectChangedError:
    return changed_since_snapshot(
        location, f"bytes {start}..{start + want - 1}", f"the file ends at byte {start + got}"
    )


def _local_os_error(location: str, exc: OSError) -> StorageError:
    if exc.errno == errno.EISDIR:
        return StorageError(f"{location} is a directory, not a file", location=location)
    return StorageError(f"cannot read {location}: {exc}", location=location)


def read_local_many(
    items: Sequence[LocalRead], listed_at: float | None = None
) -> tuple[list[bytes | StorageError], list[float]]:
    """Blocking reads of several local samples in one thread-pool job; errors are returned.

    Also returns each read's duration in seconds (timed here, in the thread, per file).
    """
    out: list[bytes | StorageError] = []
    seconds: list[float] = []
    clock = time.perf_counter
    for location, byte_offset, byte_length in items:
        started = clock()
        try:
            off, length = normalize_range(location, byte_offset, byte_length)
            out.append(read_local(location, off, length, listed_at))
        except StorageError as exc:
            out.append(exc)
        seconds.append(clock() - started)
    return out, seconds


def read_local(
    location: str,
    byte_offset: int | None,
    byte_length: int | None,
    listed_at: float | None = None,
) -> bytes:
    """Blocking read of a local sample (run it in a thread), with the snapshot checks.

    ``byte_offset``/``byte_length`` as ``normalize_range`` returns them. Raises
    ``ObjectNotFoundError``, ``AccessDeniedError``, ``ObjectChangedError`` (a whole file of
    another size, a range past its end, an mtime after ``listed_at``) or ``StorageError``.
    """
    fd = _open_local(location)
    try:
        start, want = _checked_span(location, fd, byte_offset, byte_length, listed_at)
        data = os.pread(fd, want, start)
        # pread may return less than asked only at end of file (the file shrank meanwhile).
        while len(data) < want:
            more = os.pread(fd, want - len(data), start + len(data))
            if not more:
                raise _short(location, start, want, len(data))
            data += more
        return data
    except StorageError:
        raise
    except OSError as exc:
        raise _local_os_error(location, exc) from None
    finally:
        os.close(fd)


def read_local_into(
    location: str,
    byte_offset: int | None,
    byte_length: int,
    dest: memoryview,
    listed_at: float | None = None,
) -> None:
    """Blocking read of a local sample straight into ``dest`` (``byte_length`` bytes long),
    with exactly ``read_local``'s checks and errors: no intermediate ``bytes``.

    ``byte_offset`` None (or -1) means the whole file, which must be ``byte_length`` bytes.
    """
    off, length = normalize_range(location, byte_offset, byte_length)
    fd = _open_local(location)
    try:
        start, want = _checked_span(location, fd, off, length, listed_at)
        got = os.preadv(fd, [dest], start) if want else 0
        while got < want:
            # Short only at end of file (the file shrank meanwhile).
            with dest[got:want] as rest:
                n = os.preadv(fd, [rest], start + got)
            if n == 0:
                raise _short(location, start, want, got)
            got += n
    except StorageError:
        raise
    except OSError as exc:
        raise _local_os_error(location, exc) from None
    finally:
        os.close(fd)


def read_many_into(
    items: Sequence[LocalItem], target: mmap.mmap, offset: int, listed_at: float | None
) -> float:
    """Read ``items`` back to back into ``target`` from ``offset`` (one batch straight into
    shared memory: no per-sample ``bytes``); the seconds it took.

    Raises the typed ``StorageError`` of the first sample that cannot be read."""
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

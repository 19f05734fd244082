"""The canonical manifest TSV: what a record is and how it is written.

    schema_version=0\\n
    <sample_id>\\t<location>\\t<byte_offset>\\t<byte_length>\\t<decode_hint>\\n   (one per sample)

Sample ids are exactly 0..N-1 in order. Absent values are empty strings. ``byte_length``
alone is the whole object of that size; ``byte_offset`` needs ``byte_length`` (a range of
a larger object). Numbers are plain decimal (no sign, no leading zeros) and lengths are
> 0. The manifest hash is the lowercase hex SHA-256 of these exact bytes, header included,
so one dataset content has one hash.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from mx8_common.errors import ManifestUnwritable

__all__ = [
    "SCHEMA_HEADER",
    "SCHEMA_VERSION",
    "ManifestRecord",
    "ManifestWriter",
    "WrittenManifest",
    "encode_manifest",
    "encode_record",
    "manifest_hash",
]

SCHEMA_VERSION = 0
SCHEMA_HEADER = b"schema_version=0\n"

_FORBIDDEN = ("\t", "\r", "\n")
_FLUSH_BYTES = 1 << 16
#: Written bytes handed to the disk in the background at a time (``_start_writeback``).
_WRITEBACK_BYTES = 1 << 20


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux ``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``, else None.

    It starts writing a range to disk without waiting for it: a manifest handed over
    while it is written leaves ``finish()``'s fsync only the tail to wait for, instead of
    every byte at once (10 MB for 100k files: tens of ms on a cloud disk, on the
    first-batch path). A hint only; the fsync stays the guarantee.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, offset: int, nbytes: int) -> object:
        return fn(fd, offset, nbytes, write)

    return start


_start_writeback = _writeback_starter()


class ManifestRecord(NamedTuple):
    """One sample of a snapshot."""

    sample_id: int
    location: str
    byte_offset: int | None = None
    byte_length: int | None = None
    decode_hint: str = ""


def manifest_hash(data: bytes) -> str:
    """Lowercase hex SHA-256 of canonical manifest bytes."""
    return hashlib.sha256(data).hexdigest()


def _check_text(value: str, field: str, location: str) -> None:
    for ch in _FORBIDDEN:
        if ch in value:
            name = {"\t": "TAB", "\r": "CR", "\n": "LF"}[ch]
            raise ManifestUnwritable(
                f"cannot write {field} of object {location!r}: it contains a {name} "
                "character, which the canonical manifest TSV cannot hold; rename the object"
            )


def encode_record(
    sample_id: int,
    location: str,
    byte_offset: int | None = None,
    byte_length: int | None = None,
    decode_hint: str = "",
) -> bytes:
    """Encode one row, validating every field (the reader's rules, in reverse)."""
    if not location:
        raise ManifestUnwritable(f"sample {sample_id} has an empty location; every row needs one")
    _check_text(location, "location", location)
    _check_text(decode_hint, "decode_hint", location)
    if byte_length is not None and byte_length <= 0:
        raise ManifestUnwritable(
            f"object {location!r} has byte_length {byte_length}; lengths must be > 0 "
            "(leave it empty for a zero-byte object)"
        )
    if byte_offset is not None:
        if byte_length is None:
            raise ManifestUnwritable(
                f"object {location!r} has byte_offset without byte_length; a range needs both"
            )
        if byte_offset < 0:
            raise ManifestUnwritable(f"object {location!r} has negative byte_offset {byte_offset}")
    off = "" if byte_offset is None else str(byte_offset)
    length = "" if byte_length is None else str(byte_length)
    return f"{sample_id}\t{location}\t{off}\t{length}\t{decode_hint}\n".encode()


def _encode_page_fast(
    start: int,
    locations: Sequence[str],
    byte_lengths: Sequence[int | None],
    hints: Iterable[str],
    n: int,
) -> bytes | None:
    """Whole-object rows ``start..start+n-1`` in one join, or None if any row may be invalid.

    The checks are per page, not per field: a valid page has exactly 4 TABs and 1 LF per
    row and no CR (numbers cannot hold one), no empty location and no length <= 0.
    """
    if "" in locations or 0 in byte_lengths:
        return None
    positive = [length for length in byte_lengths if length is not None]
    if positive and min(positive) < 0:
        return None
    # Formatted exactly as encode_record formats a row (the length through str()).
    text = "".join(
        [
            f"{i}\t{loc}\t\t{'' if length is None else str(length)}\t{hint}\n"
            for i, loc, length, hint in zip(
                range(start, start + n), locations, byte_lengths, hints, strict=True
            )
        ]
    )
    if text.count("\t") != 4 * n or text.count("\n") != n or "\r" in text:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None  # a lone surrogate: encode_record raises the same error for its row


def encode_manifest(records: Iterable[ManifestRecord]) -> bytes:
    """Whole canonical bytes of a small manifest (tests, small datasets)."""
    parts = [SCHEMA_HEADER]
    for expected, rec in enumerate(records):
        if rec.sample_id != expected:
            raise ManifestUnwritable(
                f"record ids must be 0..N-1 in order; got {rec.sample_id} at position {expected}"
            )
        parts.append(encode_record(*rec))
    return b"".join(parts)


class WrittenManifest(NamedTuple):
    """A finished manifest file and what it holds."""

    path: Path
    manifest_hash: str
    manifest_bytes: int
    samples: int


class ManifestWriter:
    """Streams rows to a temp file while hashing, never holding the manifest in memory.

    Sample ids are assigned in call order. ``finish()`` fsyncs and returns the temp file;
    the caller renames it into place. A writer closed without ``finish()`` deletes its file.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=directory)
        self._path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._bytes = 0
        #: Bytes already handed to the disk by ``_start_writeback``.
        self._written_back = 0
        self._count = 0
        self._finished = False
        self._append(SCHEMA_HEADER)

    @property
    def samples(self) -> int:
        return self._count

    def _append(self, row: bytes) -> None:
        self._buf.append(row)
        self._buf_len += len(row)
        if self._buf_len >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        chunk = b"".join(self._buf)
        self._sha.update(chunk)
        self._file.write(chunk)
        self._bytes += len(chunk)
        self._buf.clear()
        self._buf_len = 0
        if _start_writeback is not None and self._bytes - self._written_back >= _WRITEBACK_BYTES:
            self._file.flush()
            _start_writeback(self._file.fileno(), self._written_back, 0)
            self._written_back = self._bytes

    def write(
        self,
        location: str,
        byte_offset: int | None = None,
        byte_length: int | None = None,
        decode_hint: str = "",
    ) -> int:
        """Append one row and return its sample id."""
        sample_id = self._count
        self._append(encode_record(sample_id, location, byte_offset, byte_length, decode_hint))
        self._count += 1
        return sample_id

    def write_page(
        self,
        locations: Sequence[str],
        byte_lengths: Sequence[int | None],
        decode_hints: Sequence[str] | None = None,
    ) -> int:
        """Append one row per location (whole objects: no byte_offset); return the first id.

        The bytes, ids and errors are exactly those of calling ``write`` once per row: the
        page is formatted with one join and validated as a whole, and only a page that fails
        that check is encoded row by row, so the bad row raises ``encode_record``'s error.
        """
        n = len(locations)
        if len(byte_lengths) != n or (decode_hints is not None and len(decode_hints) != n):
            raise ValueError(
                f"write_page needs one byte_length and decode_hint per location; got "
                f"{n} locations, {len(byte_lengths)} lengths and "
                f"{'no' if decode_hints is None else len(decode_hints)} hints"
            )
        start = self._count
        hints: Iterable[str] = decode_hints if decode_hints is not None else ("",) * n
        data = _encode_page_fast(start, locations, byte_lengths, hints, n)
        if data is None:
            # Slow path for a page the whole-page check rejects: per-row encoding raises the
            # first bad row's own error (and, were the check too strict, still writes it).
            rows = zip(locations, byte_lengths, hints, strict=True)
            data = b"".join(
                encode_record(start + i, loc, None, length, hint)
                for i, (loc, length, hint) in enumerate(rows)
            )
        self._append(data)
        self._count += n
        return start

    def finish(self) -> WrittenManifest:
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._finished = True
        return WrittenManifest(self._path, self._sha.hexdigest(), self._bytes, self._count)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if not self._finished:
            self._path.unlink(missing_ok=True)
        self._finished = True

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or not self._finished:
            self.abort()

"""Reader-first, fail-closed parser of the canonical manifest TSV.

``parse_canonical_manifest_tsv_reader`` is the reference parser: it pulls one line at a
time from any binary reader with ``readline(limit)``, so memory stays bounded by the longest
allowed line. The bytes and path helpers are thin wrappers with identical semantics. It
accepts exactly what ``manifest_format`` writes, so a parsed manifest re-hashes to its hash.

Its pieces are public so the vectorized table builder (``manifest_fast_parse``) raises the
very same errors: ``read_schema_header`` (line 1), ``raise_unterminated_line`` (a last line
without LF, or one over the bound) and ``parse_canonical_lines`` (rows of a block of
complete lines, row by row, the fallback that names the exact bad line).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from typing import NoReturn, Protocol

from mx8_common.errors import (
    ManifestBadRow,
    ManifestHashMismatch,
    ManifestLineTooLong,
    ManifestNonSequentialId,
    ManifestSchemaMismatch,
    ManifestTruncated,
)
from mx8_common.manifest.format import SCHEMA_HEADER, ManifestRecord

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "LineReader",
    "check_hash",
    "parse_canonical_lines",
    "parse_canonical_manifest_tsv_bytes",
    "parse_canonical_manifest_tsv_path",
    "parse_canonical_manifest_tsv_reader",
    "raise_unterminated_line",
    "read_schema_header",
]

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


class LineReader(Protocol):
    """Anything with a binary ``readline(limit)`` (files, ``BytesIO``, the ingest adapter)."""

    def readline(self, size: int = -1, /) -> bytes: ...


_INT64_MAX = 2**63 - 1  # sample ids, offsets and lengths live in int64 columns


def _parse_number(raw: bytes, line_no: int, field: str, *, positive: bool) -> int:
    # Canonical decimal only: digits, no sign, no leading zero (other than "0" itself).
    if not raw.isdigit() or not raw.isascii() or (len(raw) > 1 and raw[0] == 0x30):
        raise ManifestBadRow(
            f"manifest line {line_no}: {field} {raw!r} is not a plain decimal number",
            line_no=line_no,
        )
    value = int(raw)
    if value > _INT64_MAX:
        raise ManifestBadRow(
            f"manifest line {line_no}: {field} {value} is larger than 2**63-1, the most a "
            "manifest number may be",
            line_no=line_no,
        )
    if positive and value == 0:
        raise ManifestBadRow(
            f"manifest line {line_no}: {field} must be > 0 (leave it empty for a zero-byte object)",
            line_no=line_no,
        )
    return value


def _parse_row(line: bytes, line_no: int, expected_id: int) -> ManifestRecord:
    fields = line[:-1].split(b"\t")
    if len(fields) != 5:
        raise ManifestBadRow(
            f"manifest line {line_no}: expected 5 TAB-separated columns "
            "(sample_id, location, byte_offset, byte_length, decode_hint), "
            f"found {len(fields)}",
            line_no=line_no,
        )
    raw_id, raw_loc, raw_off, raw_len, raw_hint = fields
    if b"\r" in line:
        raise ManifestBadRow(
            f"manifest line {line_no}: contains a CR; canonical manifests use LF line ends only",
            line_no=line_no,
        )
    sample_id = _parse_number(raw_id, line_no, "sample_id", positive=False)
    if sample_id != expected_id:
        raise ManifestNonSequentialId(
            f"manifest line {line_no}: sample_id {sample_id} where {expected_id} was expected; "
            "sample ids must be exactly 0..N-1 in order",
            line_no=line_no,
        )
    if not raw_loc:
        raise ManifestBadRow(f"manifest line {line_no}: location is empty", line_no=line_no)
    try:
        location = raw_loc.decode("utf-8")
        decode_hint = raw_hint.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestBadRow(
            f"manifest line {line_no}: location or decode_hint is not valid UTF-8 ({exc})",
            line_no=line_no,
        ) from exc
    byte_length = _parse_number(raw_len, line_no, "byte_length", positive=True) if raw_len else None
    byte_offset = None
    if raw_off:
        if byte_length is None:
            raise ManifestBadRow(
                f"manifest line {line_no}: byte_offset without byte_length; a range needs both",
                line_no=line_no,
            )
        byte_offset = _parse_number(raw_off, line_no, "byte_offset", positive=False)
    return ManifestRecord(sample_id, location, byte_offset, byte_length, decode_hint)


def read_schema_header(reader: LineReader) -> bytes:
    """Read and check line 1 (``schema_version=0``); return its bytes (for hashing)."""
    header = reader.readline(len(SCHEMA_HEADER))
    if header != SCHEMA_HEADER:
        if not header:
            raise ManifestTruncated("manifest is empty: no schema_version header", line_no=1)
        shown = header.split(b"\n", 1)[0][:64]
        raise ManifestSchemaMismatch(
            f"manifest line 1: expected header 'schema_version=0', found {shown!r}; "
            "this reader understands schema version 0 only",
            line_no=1,
        )
    return header


def raise_unterminated_line(piece: bytes, line_no: int, max_line_bytes: int) -> NoReturn:
    """Raise for ``piece``, what ``readline(max_line_bytes + 1)`` gave without a final LF."""
    if len(piece) > max_line_bytes:
        raise ManifestLineTooLong(
            f"manifest line {line_no} is longer than {max_line_bytes} bytes "
            "(MX8_AGENT_MANIFEST_STREAM_MAX_LINE_BYTES); refusing to buffer it",
            line_no=line_no,
        )
    raise ManifestTruncated(
        f"manifest line {line_no} has no final LF: the manifest was cut short",
        line_no=line_no,
    )


def parse_canonical_lines(
    block: bytes, *, line_no: int, first_id: int, max_line_bytes: int
) -> Iterator[ManifestRecord]:
    """Rows of ``block`` (complete LF-ended lines; its first line is ``line_no``), one by one.

    The same checks, in the same order, as ``parse_canonical_manifest_tsv_reader`` makes on
    those lines, so the first bad line raises exactly what the reference parser raises.
    """
    pos = 0
    expected_id = first_id
    while pos < len(block):
        end = block.find(b"\n", pos) + 1
        if end == 0 or end - pos > max_line_bytes + 1:
            # What readline(max_line_bytes + 1) would have returned for this line.
            raise_unterminated_line(block[pos : pos + max_line_bytes + 1], line_no, max_line_bytes)
        yield _parse_row(block[pos:end], line_no, expected_id)
        pos = end
        line_no += 1
        expected_id += 1


def parse_canonical_manifest_tsv_reader(
    reader: LineReader,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    expected_hash: str | None = None,
) -> Iterator[ManifestRecord]:
    """Yield the records of a canonical manifest read line by line from ``reader``.

    With ``expected_hash`` the bytes are hashed as they pass and a mismatch raises
    ``ManifestHashMismatch`` after the last record: callers must treat the manifest as
    valid only once iteration completes.
    """
    sha = hashlib.sha256() if expected_hash is not None else None
    header = read_schema_header(reader)
    if sha is not None:
        sha.update(header)
    line_no = 1
    expected_id = 0
    while True:
        line = reader.readline(max_line_bytes + 1)
        if not line:
            break
        line_no += 1
        if line[-1] != 0x0A:
            raise_unterminated_line(line, line_no, max_line_bytes)
        if sha is not None:
            sha.update(line)
        yield _parse_row(line, line_no, expected_id)
        expected_id += 1
    if sha is not None:
        check_hash(sha.hexdigest(), expected_hash)


def check_hash(digest: str, expected_hash: str | None) -> None:
    """Raise ``ManifestHashMismatch`` unless ``expected_hash`` is None or ``digest``."""
    if expected_hash is not None and digest != expected_hash:
        raise ManifestHashMismatch(
            f"manifest bytes hash to {digest}, not the announced {expected_hash}; "
            "the manifest is corrupt or was replaced",
        )


def parse_canonical_manifest_tsv_bytes(
    data: bytes,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    expected_hash: str | None = None,
) -> Iterator[ManifestRecord]:
    """``parse_canonical_manifest_tsv_reader`` over in-memory bytes."""
    return parse_canonical_manifest_tsv_reader(
        io.BytesIO(data), max_line_bytes=max_line_bytes, expected_hash=expected_hash
    )


def parse_canonical_manifest_tsv_path(
    path: str | os.PathLike[str],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    expected_hash: str | None = None,
) -> Iterator[ManifestRecord]:
    """``parse_canonical_manifest_tsv_reader`` over a file, closed when iteration ends."""
    with open(path, "rb", buffering=1 << 20) as f:
        yield from parse_canonical_manifest_tsv_reader(
            f, max_line_bytes=max_line_bytes, expected_hash=expected_hash
        )

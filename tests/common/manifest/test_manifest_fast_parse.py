"""The block-vectorized table builder is the reference parser + builder, only faster.

Every test compares ``ManifestTable.from_block_reader`` (and the ``from_bytes`` /
``from_path`` / stream ingest paths built on it) with
``ManifestTable.from_records(parse_canonical_manifest_tsv_reader(...))``: identical
columns, or the identical exception (class, message, line number).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mx8_agent.ingest.adapter import StreamChunk, ingest_chunk_stream
from mx8_common.errors import ManifestBadRow, ManifestError, ManifestHashMismatch
from mx8_common.manifest import table as manifest_table
from mx8_common.manifest.fast_parse import FileBlockReader, parse_block
from mx8_common.manifest.format import ManifestRecord, encode_manifest
from mx8_common.manifest.reader import DEFAULT_MAX_LINE_BYTES, parse_canonical_manifest_tsv_reader
from mx8_common.manifest.table import ManifestTable

_SLOTS = ManifestTable.__slots__


def _column(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # Absent columns must stay zero-stride on both paths, not just equal in value.
        return (value.dtype.str, value.strides == (0,), value.tolist())
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def _state(table: ManifestTable) -> dict[str, Any]:
    return {name: _column(getattr(table, name)) for name in _SLOTS}


def _outcome(build: Callable[[], ManifestTable]) -> tuple[Any, ...]:
    try:
        return ("ok", _state(build()))
    except ManifestError as exc:  # a number past int64 is a ManifestBadRow too
        return (type(exc), str(exc), getattr(exc, "line_no", None))


def _reference(data: bytes, max_line_bytes: int, expected_hash: str | None) -> tuple[Any, ...]:
    def build() -> ManifestTable:
        records = parse_canonical_manifest_tsv_reader(
            io.BytesIO(data), max_line_bytes=max_line_bytes, expected_hash=expected_hash
        )
        return ManifestTable.from_records(records, manifest_hash=hashlib.sha256(data).hexdigest())

    return _outcome(build)


def _fast(
    data: bytes, max_line_bytes: int, expected_hash: str | None, block_bytes: int, read_bytes: int
) -> tuple[Any, ...]:
    def build() -> ManifestTable:
        reader = FileBlockReader(
            io.BytesIO(data), max_line_bytes=max_line_bytes, read_bytes=read_bytes
        )
        return ManifestTable.from_block_reader(
            reader,
            expected_hash=expected_hash,
            max_line_bytes=max_line_bytes,
            block_bytes=block_bytes,
        )

    return _outcome(build)


# Few distinct directories and hints, so rows repeat them in runs as real listings do.
_dirs = st.sampled_from(["", "s3://b/", "s3://b/train/cat/", "/d/ü/", "x//", "s3://b/train/dog/"])
_names = st.text(
    alphabet=st.characters(blacklist_characters="\t\r\n", blacklist_categories=("Cs",)),
    max_size=12,
)
_hints = st.one_of(
    st.sampled_from(["", "", "mx8:vision:imagefolder;label_id=3", "custom;crop=1", "ß"]),
    st.integers(0, 2**33).map(lambda n: f"mx8:vision:imagefolder;label_id={n}"),
    _names,
)
# Mostly small; now and then around the 18-digit fast-path limit and int64's end.
_numbers = st.one_of(
    st.integers(1, 2**40),
    st.integers(1, 999),
    st.integers(1, 2**40),
    st.integers(1, 99),
    st.sampled_from([10**17, 10**18 - 1, 10**18, 2**63 - 1, 2**63, 10**19]),
)


@st.composite
def _fields(draw: st.DrawFn) -> tuple[str, int | None, int | None, str]:
    location = draw(_dirs) + draw(_names)
    if not location:
        location = "a"
    length = draw(st.one_of(st.none(), _numbers))
    offset = None if length is None else draw(st.one_of(st.none(), st.just(0), _numbers))
    return (location, offset, length, draw(_hints))


_manifests = st.lists(_fields(), max_size=40).map(
    lambda rows: encode_manifest([ManifestRecord(i, *row) for i, row in enumerate(rows)])
)


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    data = draw(_manifests)
    kinds = ["none", "byte", "byte", "byte", "cut", "insert", "delete", "field", "field", "clear"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return data
    seps = [i for i, b in enumerate(data) if b in (0x09, 0x0A)]
    if kind == "clear" and len(seps) > 1:
        # Empty one field (an id, a location, a number, a hint).
        k = draw(st.integers(0, len(seps) - 2))
        return data[: seps[k] + 1] + data[seps[k + 1] :]
    if kind == "field":
        # Right after a TAB or LF: where leading zeros, signs and empty fields hide.
        if len(seps) > 1:
            pos = draw(st.sampled_from(seps[:-1])) + 1
            extra = draw(st.sampled_from([b"0", b"00", b"\r", b"\t", b"-", b"/", b"+1", b"\n"]))
            return data[:pos] + extra + data[pos:]
        return data
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "byte":
        new = draw(st.sampled_from([0x09, 0x0A, 0x0D, 0x30, 0x2F, 0x20, 0x80, 0xFF, 0x31]))
        new = draw(st.one_of(st.just(new), st.integers(0, 255)))
        return data[:pos] + bytes([new]) + data[pos + 1 :]
    if kind == "cut":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + draw(st.sampled_from([b"\t", b"\n", b"0", b"\r", b"\xc3"])) + data[pos:]
    return data[:pos] + data[pos + 1 :]


@settings(max_examples=600, deadline=None)
@given(
    data=_damaged(),
    max_line_bytes=st.sampled_from([DEFAULT_MAX_LINE_BYTES, 40, 24]),
    block_bytes=st.sampled_from([1, 30, 200, 1 << 18]),
    read_bytes=st.sampled_from([7, 64, 1 << 20]),
    with_hash=st.booleans(),
)
def test_manifest_fast_parse_matches_reference_on_valid_and_corrupt_manifests(
    data: bytes, max_line_bytes: int, block_bytes: int, read_bytes: int, with_hash: bool
) -> None:
    expected = hashlib.sha256(data).hexdigest() if with_hash else None
    want = _reference(data, max_line_bytes, expected)
    assert _fast(data, max_line_bytes, expected, block_bytes, read_bytes) == want


@settings(max_examples=60, deadline=None)
@given(data=_manifests, wrong=st.booleans())
def test_manifest_fast_parse_checks_expected_hash_like_reference(data: bytes, wrong: bool) -> None:
    expected = "0" * 64 if wrong else hashlib.sha256(data).hexdigest()
    want = _reference(data, DEFAULT_MAX_LINE_BYTES, expected)
    assert _fast(data, DEFAULT_MAX_LINE_BYTES, expected, 1 << 18, 1 << 20) == want
    if want[0] is not ManifestBadRow:  # a number past int64 fails before the hash is known
        assert want[0] == (ManifestHashMismatch if wrong else "ok")


def test_manifest_fast_parse_intern_overflow_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tiny intern cap: the blocks that would pass it are added row by row instead.
    monkeypatch.setattr(manifest_table, "MAX_INTERNED", 4)
    data = encode_manifest(
        ManifestRecord(i, f"s3://b/dir{i % 9}/f{i}.bin", None, 10 + i, f"h;{i % 7}")
        for i in range(60)
    )
    want = _reference(data, DEFAULT_MAX_LINE_BYTES, None)
    assert want[0] == "ok"
    for block_bytes in (1, 100, 1 << 18):
        assert _fast(data, DEFAULT_MAX_LINE_BYTES, None, block_bytes, 1 << 20) == want


def test_manifest_fast_parse_block_columns_of_a_valid_block() -> None:
    body = encode_manifest(
        [
            ManifestRecord(0, "s3://b/x/a.jpg", None, 12, "mx8:vision:imagefolder;label_id=1"),
            ManifestRecord(1, "s3://b/x/bb.jpg", 5, 7, "mx8:vision:imagefolder;label_id=1"),
            ManifestRecord(2, "top", None, None, ""),
        ]
    ).split(b"\n", 1)[1]
    block = parse_block(body, first_id=0, max_line_bytes=1024)
    assert block is not None
    assert block.rows == 3 and block.tails == b"a.jpgbb.jpgtop"
    assert block.tail_lengths.tolist() == [5, 6, 3]
    assert block.dir_heads.tolist() == [0, 2] and block.dirs == [b"s3://b/x/", b""]
    assert block.hint_heads.tolist() == [0, 2]
    assert block.byte_offset.tolist() == [-1, 5, -1]
    assert block.byte_length.tolist() == [12, 7, -1]
    assert block.offset_range == (-1, 5) and block.length_range == (-1, 12)
    # Ids must continue from first_id; anything else is left to the row parser.
    assert parse_block(body, first_id=1, max_line_bytes=1024) is None
    assert parse_block(body.replace(b"\t12\t", b"\t012\t"), first_id=0, max_line_bytes=1024) is None


def test_manifest_fast_parse_from_path_and_bytes_agree_on_a_large_manifest(
    tmp_path: Path,
) -> None:
    rows = [
        ManifestRecord(
            i,
            f"s3://bucket/train/n{i // 700:05d}/img_{i:07d}.JPEG",
            None,
            1000 + i % 977,
            f"mx8:vision:imagefolder;label_id={i // 700}",
        )
        for i in range(30_000)
    ]
    data = encode_manifest(rows)
    path = tmp_path / "m.tsv"
    path.write_bytes(data)
    want = _reference(data, DEFAULT_MAX_LINE_BYTES, None)
    assert want[0] == "ok"
    assert _outcome(lambda: ManifestTable.from_bytes(data)) == want
    assert _outcome(lambda: ManifestTable.from_path(path)) == want
    table = ManifestTable.from_path(path, expected_hash=hashlib.sha256(data).hexdigest())
    assert table.record(12_345) == rows[12_345]
    assert table.label_id[:1400].tolist() == [0] * 700 + [1] * 700


async def _chunks(data: bytes, size: int) -> AsyncIterator[StreamChunk]:
    for off in range(0, len(data), size):
        yield StreamChunk(off, data[off : off + size])
        await asyncio.sleep(0)


@pytest.mark.parametrize("chunk", [1, 13, 4096, 1 << 20])
@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d,
        lambda d: d[:-3],  # cut short
        lambda d: d.replace(b"\t1003\t", b"\t1O03\t"),  # a bad number mid-stream
        lambda d: d.replace(b"img_0000500", b"img_\xff000500"),  # invalid UTF-8
        lambda d: d.replace(b"img_0000900.JPEG", b"img_" + b"z" * 300),  # over the line bound
    ],
)
async def test_manifest_fast_parse_stream_ingest_matches_reference(
    chunk: int, damage: Callable[[bytes], bytes]
) -> None:
    rows = [
        ManifestRecord(i, f"s3://bucket/c{i // 50}/img_{i:07d}.JPEG", None, 1000 + i, "")
        for i in range(1000)
    ]
    data = damage(encode_manifest(rows))
    max_line = 256
    expected = hashlib.sha256(encode_manifest(rows)).hexdigest()
    want = _reference(data, max_line, expected)

    def build(reader: Any) -> ManifestTable:
        return ManifestTable.from_block_reader(
            reader, max_line_bytes=max_line, expected_hash=expected, block_bytes=2048
        )

    try:
        table = await ingest_chunk_stream(_chunks(data, chunk), build, max_line_bytes=max_line)
        got: tuple[Any, ...] = ("ok", _state(table))
    except ManifestError as exc:
        got = (type(exc), str(exc), exc.line_no)
    assert got == want


@pytest.mark.parametrize("digits", range(1, 11))
def test_manifest_fast_parse_numbers_match_reference_at_every_width(digits: int) -> None:
    # Widths up to 8 take the one-word (SWAR) path, wider ones the digit matrix: every
    # edge (largest, smallest, leading zero, a non-digit just past "9" or before "0").
    largest, smallest = "9" * digits, "1" + "0" * (digits - 1)
    fields = [largest, smallest, "0" + largest[1:], largest[:-1] + ":", "/" + smallest[1:]]
    if digits > 1:
        fields.append(smallest[:-1] + "é")
    for field in fields:
        for column in (0, 2, 3):  # sample_id, byte_offset, byte_length
            rows = [["0", "s3://b/a", "", "7", ""], ["1", "s3://b/b", "3", "5", ""]]
            rows[1][column] = field
            data = b"schema_version=0\n" + "".join("\t".join(r) + "\n" for r in rows).encode()
            want = _reference(data, DEFAULT_MAX_LINE_BYTES, None)
            assert _fast(data, DEFAULT_MAX_LINE_BYTES, None, 1 << 18, 1 << 20) == want, field


@pytest.mark.parametrize("digits", range(1, 19))
def test_manifest_fast_parse_block_reads_numbers_of_every_width(digits: int) -> None:
    # The vectorized path itself (not the row-by-row fallback) must take these.
    values = [10**digits - 1, 10 ** (digits - 1), int("123456789012345678"[:digits])]
    body = "".join(f"{i}\ts3://b/f\t{v}\t{v}\t\n" for i, v in enumerate(values)).encode()
    block = parse_block(body, first_id=0, max_line_bytes=1024)
    assert block is not None
    assert block.byte_offset.tolist() == values and block.byte_length.tolist() == values
    assert block.length_range == (min(values), max(values))

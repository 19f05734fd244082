"""The reader-first canonical manifest parser (spec Phase 1 test names)."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import pytest

from mx8_common.errors import (
    ManifestBadRow,
    ManifestError,
    ManifestHashMismatch,
    ManifestLineTooLong,
    ManifestNonSequentialId,
    ManifestSchemaMismatch,
    ManifestTruncated,
)
from mx8_common.manifest.format import (
    ManifestRecord,
    ManifestWriter,
    encode_manifest,
    manifest_hash,
)
from mx8_common.manifest.reader import (
    parse_canonical_manifest_tsv_bytes,
    parse_canonical_manifest_tsv_path,
    parse_canonical_manifest_tsv_reader,
)

VALID = (
    b"schema_version=0\n"
    b"0\ts3://bkt/a.jpg\t\t10\tmx8:vision:imagefolder;label_id=0\n"
    b"1\ts3://bkt/b.jpg\t\t\t\n"
    b"2\t/data/shard.bin\t0\t100\t\n"
    b"3\t/data/shard.bin\t100\t50\t\n"
)


def _outcome(fn, data: bytes) -> tuple[str, object]:
    try:
        return ("ok", list(fn(data)))
    except ManifestError as exc:
        return (type(exc).__name__, str(exc))


def test_manifest_reader_accepts_valid_canonical_tsv() -> None:
    records = list(parse_canonical_manifest_tsv_reader(io.BytesIO(VALID)))
    assert records == [
        ManifestRecord(0, "s3://bkt/a.jpg", None, 10, "mx8:vision:imagefolder;label_id=0"),
        ManifestRecord(1, "s3://bkt/b.jpg", None, None, ""),
        ManifestRecord(2, "/data/shard.bin", 0, 100, ""),
        ManifestRecord(3, "/data/shard.bin", 100, 50, ""),
    ]
    assert encode_manifest(records) == VALID


def test_manifest_reader_rejects_missing_schema_header() -> None:
    with pytest.raises(ManifestSchemaMismatch, match="schema_version=0"):
        list(parse_canonical_manifest_tsv_bytes(VALID.split(b"\n", 1)[1]))
    with pytest.raises(ManifestSchemaMismatch, match="schema version 0"):
        list(parse_canonical_manifest_tsv_bytes(b"schema_version=1\n"))
    with pytest.raises(ManifestTruncated, match="empty"):
        list(parse_canonical_manifest_tsv_bytes(b""))


@pytest.mark.parametrize(
    "rows",
    [
        b"1\ta\t\t\t\n",  # does not start at 0
        b"0\ta\t\t\t\n2\tb\t\t\t\n",  # gap
        b"0\ta\t\t\t\n1\tb\t\t\t\n1\tc\t\t\t\n",  # repeat
    ],
)
def test_manifest_reader_rejects_non_sequential_sample_ids(rows: bytes) -> None:
    with pytest.raises(ManifestNonSequentialId, match="line") as info:
        list(parse_canonical_manifest_tsv_bytes(b"schema_version=0\n" + rows))
    assert info.value.line_no is not None and info.value.line_no >= 2


@pytest.mark.parametrize(
    ("row", "error", "fragment"),
    [
        (b"0\ta\t\t\n", ManifestBadRow, "5 TAB-separated"),
        (b"0\ta\t\t\t\t\n", ManifestBadRow, "found 6"),
        (b"0\t\t\t\t\n", ManifestBadRow, "location is empty"),
        (b"0\ta\t5\t\t\n", ManifestBadRow, "byte_offset without byte_length"),
        (b"0\ta\t\t0\t\n", ManifestBadRow, "must be > 0"),
        (b"0\ta\t\t012\t\n", ManifestBadRow, "plain decimal"),
        (b"0\ta\t\t-3\t\n", ManifestBadRow, "plain decimal"),
        (b"0\ta\t\t 3\t\n", ManifestBadRow, "plain decimal"),
        (b"00\ta\t\t\t\n", ManifestBadRow, "plain decimal"),
        (b"0\ta\r\t\t\t\n", ManifestBadRow, "CR"),
        (b"0\t\xff\t\t\t\n", ManifestBadRow, "UTF-8"),
        (b"0\ta\t\t\t", ManifestTruncated, "no final LF"),
    ],
)
def test_manifest_reader_rejects_bad_rows_naming_the_line(
    row: bytes, error: type[ManifestError], fragment: str
) -> None:
    with pytest.raises(error, match=fragment) as info:
        list(parse_canonical_manifest_tsv_bytes(b"schema_version=0\n" + row))
    assert "line 2" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        VALID,
        VALID[:-1],
        VALID.replace(b"2\t/data", b"7\t/data"),
        b"schema_version=0\n",
        b"schema_version=0",
        VALID + b"\n",
        b"garbage",
        VALID.replace(b"\t50\t", b"\t5x\t"),
    ],
)
def test_manifest_reader_matches_bytes_parser_semantics(data: bytes, tmp_path) -> None:
    path = tmp_path / "m.tsv"
    path.write_bytes(data)
    via_reader = _outcome(lambda d: parse_canonical_manifest_tsv_reader(io.BytesIO(d)), data)
    via_bytes = _outcome(parse_canonical_manifest_tsv_bytes, data)
    via_path = _outcome(lambda _d: parse_canonical_manifest_tsv_path(path), data)
    assert via_reader == via_bytes == via_path


def test_manifest_reader_checks_expected_hash() -> None:
    good = manifest_hash(VALID)
    assert len(list(parse_canonical_manifest_tsv_bytes(VALID, expected_hash=good))) == 4
    with pytest.raises(ManifestHashMismatch, match="announced"):
        list(parse_canonical_manifest_tsv_bytes(VALID, expected_hash="0" * 64))


def test_manifest_reader_rejects_line_longer_than_bound() -> None:
    data = b"schema_version=0\n0\t" + b"x" * 5000 + b"\t\t\t\n"
    with pytest.raises(ManifestLineTooLong, match="longer than 1024"):
        list(parse_canonical_manifest_tsv_bytes(data, max_line_bytes=1024))
    assert len(list(parse_canonical_manifest_tsv_bytes(data, max_line_bytes=8192))) == 1


class _GeneratedManifest(io.RawIOBase):
    """A reader that makes a large canonical manifest on the fly, never holding it whole."""

    def __init__(self, rows: int) -> None:
        self._rows = iter(self._generate(rows))
        self._pending = b""

    @staticmethod
    def _generate(rows: int) -> Iterator[bytes]:
        yield b"schema_version=0\n"
        batch: list[bytes] = []
        for i in range(rows):
            batch.append(
                b"%d\ts3://bucket/train/class_%03d/img_%08d.jpg\t\t%d\t\n"
                % (i, i % 997, i, 1000 + i)
            )
            if len(batch) == 1024:
                yield b"".join(batch)
                batch.clear()
        yield b"".join(batch)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._rows)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def test_manifest_reader_handles_large_input_without_full_buffer_requirement() -> None:
    rows = 1_000_000
    reader = io.BufferedReader(_GeneratedManifest(rows), buffer_size=1 << 16)
    tracemalloc.start()
    try:
        count = 0
        total_bytes = 0
        for rec in parse_canonical_manifest_tsv_reader(reader):
            count += 1
            total_bytes += len(rec.location)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    # The manifest is ~55 MB; parsing it must not need more than a sliver of that.
    assert total_bytes > 40_000_000
    assert peak < 2 * 1024 * 1024, f"peak traced memory {peak} bytes"


def test_manifest_writer_streams_to_temp_file_with_hash(tmp_path) -> None:
    with ManifestWriter(tmp_path) as writer:
        writer.write("s3://bkt/a.jpg", byte_length=10, decode_hint="h")
        writer.write("s3://bkt/b.jpg")
        written = writer.finish()
    data = written.path.read_bytes()
    assert written.manifest_hash == manifest_hash(data)
    assert written.samples == 2 and written.manifest_bytes == len(data)
    assert list(parse_canonical_manifest_tsv_path(written.path))[1].location == "s3://bkt/b.jpg"


def test_manifest_writer_removes_temp_file_on_error(tmp_path) -> None:
    from mx8_common.errors import ManifestUnwritable

    with pytest.raises(ManifestUnwritable, match="TAB"), ManifestWriter(tmp_path) as writer:
        writer.write("s3://bkt/ok")
        writer.write("s3://bkt/bad\tname")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"location": "a\nb"}, "LF"),
        ({"location": "a\rb"}, "CR"),
        ({"location": "a", "decode_hint": "x\ty"}, "TAB"),
        ({"location": ""}, "empty location"),
        ({"location": "a", "byte_length": 0}, "> 0"),
        ({"location": "a", "byte_offset": 3}, "needs both"),
    ],
)
def test_manifest_writer_refuses_unwritable_records_naming_the_key(tmp_path, kwargs, fragment):
    from mx8_common.errors import ManifestUnwritable

    with pytest.raises(ManifestUnwritable, match=fragment), ManifestWriter(tmp_path) as writer:
        writer.write(**kwargs)


def test_manifest_reader_number_beyond_int64_is_a_bad_row() -> None:
    from mx8_common.manifest.table import ManifestTable

    data = b"schema_version=0\n0\ta\t\t99999999999999999999\t\n"
    with pytest.raises(ManifestBadRow, match="larger than 2\\*\\*63-1"):
        list(parse_canonical_manifest_tsv_bytes(data))
    with pytest.raises(ManifestBadRow, match="larger than 2\\*\\*63-1"):
        ManifestTable.from_bytes(data)

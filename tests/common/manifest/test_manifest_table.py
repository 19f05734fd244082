"""ManifestTable: exact round trip of rows, compact columns, and its measured memory."""

from __future__ import annotations

import gc
import hashlib
import pickle
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mx8_common.errors import ManifestHashMismatch, ManifestNonSequentialId
from mx8_common.manifest import table as manifest_table
from mx8_common.manifest.format import ManifestRecord, encode_manifest, manifest_hash
from mx8_common.manifest.table import ManifestTable, parse_label_id

MIXED = [
    ManifestRecord(
        0, "s3://bkt/train/cat/0001.jpg", None, 120, "mx8:vision:imagefolder;label_id=0"
    ),
    ManifestRecord(1, "s3://bkt/train/dog/0002.jpg", None, 99, "mx8:vision:imagefolder;label_id=1"),
    ManifestRecord(2, "s3://bkt/shards/a.tar", 0, 4096, ""),
    ManifestRecord(3, "s3://bkt/shards/a.tar", 4096, 10, "custom;crop=1"),
    ManifestRecord(4, "top-level-file", None, None, ""),
    ManifestRecord(5, "/data/ünïcode dir/ß.png", None, 7, "mx8:vision:imagefolder;label_id=12"),
]


def _imagenet_like(n: int, classes: int = 1000) -> Iterator[ManifestRecord]:
    for i in range(n):
        c = i % classes
        yield ManifestRecord(
            i,
            f"s3://bucket/imagenet/train/n{c:08d}/n{c:08d}_{i}.JPEG",
            None,
            100_000 + i % 5000,
            f"mx8:vision:imagefolder;label_id={c}",
        )


def _rows(table: ManifestTable) -> list[ManifestRecord]:
    return [table.record(i) for i in range(len(table))]


def test_manifest_table_round_trips_mixed_rows() -> None:
    data = encode_manifest(MIXED)
    table = ManifestTable.from_bytes(data)
    assert len(table) == len(MIXED)
    assert _rows(table) == MIXED
    assert encode_manifest(_rows(table)) == data
    assert table.manifest_hash == manifest_hash(data)
    assert [table.location(i) for i in range(len(MIXED))] == [r.location for r in MIXED]
    assert table.byte_offset.tolist() == [-1, -1, 0, 4096, -1, -1]
    assert table.byte_length.tolist() == [120, 99, 4096, 10, -1, 7]
    assert table.label_id.tolist() == [0, 1, -1, -1, -1, 12]
    assert table.has_labels
    assert table.record(-1) == MIXED[-1]


def test_manifest_table_columns_are_read_only() -> None:
    table = ManifestTable.from_bytes(encode_manifest(MIXED))
    for column in (table.byte_offset, table.byte_length, table.label_id):
        with pytest.raises(ValueError, match="read-only"):
            column[0] = 5


def test_manifest_table_from_path_verifies_expected_hash(tmp_path: Path) -> None:
    data = encode_manifest(MIXED)
    path = tmp_path / "m.tsv"
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    assert ManifestTable.from_path(path).manifest_hash == good
    assert _rows(ManifestTable.from_path(path, expected_hash=good)) == MIXED
    with pytest.raises(ManifestHashMismatch, match="not the announced"):
        ManifestTable.from_path(path, expected_hash="0" * 64)
    with pytest.raises(ManifestHashMismatch):
        ManifestTable.from_bytes(data, expected_hash="f" * 64)


def test_manifest_table_rejects_non_sequential_ids() -> None:
    recs = [ManifestRecord(0, "a"), ManifestRecord(2, "b")]
    with pytest.raises(ManifestNonSequentialId, match="sample_id 2"):
        ManifestTable.from_records(recs, manifest_hash="x")


def test_manifest_table_empty_manifest() -> None:
    table = ManifestTable.from_bytes(encode_manifest([]))
    assert len(table) == 0
    assert not table.has_labels
    with pytest.raises(IndexError, match="outside this manifest of 0 samples"):
        table.record(0)


def test_manifest_table_absent_columns_cost_nothing() -> None:
    recs = [ManifestRecord(i, f"/d/{i}.bin", None, i + 1, "") for i in range(1000)]
    table = ManifestTable.from_records(recs, manifest_hash="h")
    assert not table.has_labels
    # Offsets and labels are all "none": zero-stride views, no per-row memory.
    assert table.byte_offset.strides == (0,) and table.label_id.strides == (0,)
    assert table.byte_offset.shape == (1000,) and int(table.byte_offset[999]) == -1
    assert _rows(table) == recs
    # Per row: the file name, tail offset (8), dir id (4), byte_length (8); nothing else.
    names = sum(len(f"{i}.bin") for i in range(1000))
    assert table.nbytes <= names + 1000 * 20 + 8 + 2 * 100


def test_manifest_table_keeps_arbitrary_hints() -> None:
    recs = [
        ManifestRecord(i, f"s3://b/x/{i}", None, 5, "mx8:vision:imagefolder;label_id=007")
        if i % 2
        else ManifestRecord(i, f"s3://b/x/{i}", None, 5, f"other;k={i % 3}")
        for i in range(30)
    ]
    recs.append(
        ManifestRecord(30, "s3://b/x/30", None, 5, "mx8:vision:imagefolder;label_id=99999999999")
    )
    table = ManifestTable.from_records(recs, manifest_hash="h")
    # Non-canonical or int32-overflowing label hints are kept verbatim, with no label.
    assert _rows(table) == recs
    assert not table.has_labels


def test_manifest_table_intern_overflow_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny intern cap: later directories and hints are stored per row instead.
    monkeypatch.setattr(manifest_table, "MAX_INTERNED", 4)
    recs = [
        ManifestRecord(
            i, f"s3://b/dir{i % 9}/f{i}.bin", None, 10 + i, f"mx8:vision:imagefolder;label_id={i}"
        )
        for i in range(40)
    ]
    table = ManifestTable.from_records(recs, manifest_hash="h")
    assert _rows(table) == recs
    assert table.label_id.tolist() == list(range(40))


def test_manifest_table_pickles_compactly() -> None:
    recs = [ManifestRecord(i, f"/d/c{i % 10}/{i}.jpg", None, 100 + i, "") for i in range(10_000)]
    table = ManifestTable.from_records(recs, manifest_hash="h")
    data = pickle.dumps(table)
    assert len(data) < table.nbytes + 4096  # all -1 columns stay zero-cost
    copy = pickle.loads(data)
    assert _rows(copy) == recs and copy.manifest_hash == "h"
    assert copy.byte_offset.strides == (0,)
    with pytest.raises(ValueError, match="read-only"):
        copy.byte_length[0] = 1
    labeled = ManifestTable.from_bytes(encode_manifest(MIXED))
    assert _rows(pickle.loads(pickle.dumps(labeled))) == MIXED


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("mx8:vision:imagefolder;label_id=0", 0),
        ("mx8:vision:imagefolder;label_id=999", 999),
        ("mx8:vision:imagefolder;label_id=", None),
        ("mx8:vision:imagefolder;label_id=-1", None),
        ("mx8:vision:imagefolder;label_id=01", None),
        ("mx8:vision:imagefolder;label_id=1;x", None),
        ("", None),
        ("label_id=3", None),
    ],
)
def test_parse_label_id_accepts_only_the_imagefolder_hint(hint: str, expected: int | None) -> None:
    assert parse_label_id(hint) == expected


@pytest.mark.slow
def test_manifest_table_memory_for_1m_rows() -> None:
    """1M ImageNet-like rows: measured bytes/row of the table and peak while building."""
    n = 1_000_000
    gc.collect()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        table = ManifestTable.from_records(_imagenet_like(n), manifest_hash="h" * 64)
        build_s = time.perf_counter() - started
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_row = table.nbytes / n
    print(
        f"\nmanifest table, {n} rows: nbytes={table.nbytes} ({per_row:.1f} B/row), "
        f"traced held={held / n:.1f} B/row, build peak={peak / n:.1f} B/row, "
        f"build {build_s:.1f}s under tracemalloc; 10M rows ~ {per_row * 10_000_000 / 2**20:.0f} MiB"
    )
    # Columns: tail (~20 B) + tail offset 4 + dir id 2 + byte_length 4 + label 2 (int32/int16).
    assert per_row < 48
    # What tracemalloc sees held is the table itself (no per-row Python objects left)...
    assert held < table.nbytes * 1.15 + (1 << 20)
    # ...and building never needed much more than the final size (buffer growth slack).
    assert peak < table.nbytes * 1.6 + (4 << 20)
    assert table.record(123_456) == next(
        r for r in _imagenet_like(123_457) if r.sample_id == 123_456
    )
    assert np.array_equal(table.label_id[:2000], np.arange(2000) % 1000)


def _widths(table: ManifestTable) -> dict[str, str]:
    names = ("_tail_offsets", "_dir_id", "byte_offset", "byte_length", "label_id")
    return {name: getattr(table, name).dtype.name for name in names}


@pytest.mark.parametrize(
    ("length", "width"), [(7, "int32"), (2**31 - 1, "int32"), (2**31, "int64")]
)
def test_manifest_table_columns_are_as_narrow_as_their_values(length: int, width: str) -> None:
    records = [
        ManifestRecord(i, f"s3://b/d{i % 3}/f{i}", 0 if i == 5 else None, 9 + i, "")
        for i in range(20)
    ]
    records[7] = records[7]._replace(byte_offset=length, byte_length=length)
    data = encode_manifest(records)
    for table in (
        ManifestTable.from_bytes(data),
        ManifestTable.from_records(records, manifest_hash="h" * 64),
    ):
        assert _widths(table) == {
            "_tail_offsets": "int32",
            "_dir_id": "int16",
            "byte_offset": width,
            "byte_length": width,
            "label_id": "int16",
        }
        assert [table.record(i) for i in range(20)] == records


def test_manifest_table_widens_dir_ids_past_int16() -> None:
    # 40,000 directories: ids past 32767 need int32, whichever builder sees them.
    records = [ManifestRecord(i, f"s3://b/{i}/x", None, 1, "") for i in range(40_000)]
    data = encode_manifest(records)
    fast = ManifestTable.from_bytes(data)
    slow = ManifestTable.from_records(records, manifest_hash=fast.manifest_hash)
    for table in (fast, slow):
        assert table._dir_id.dtype == np.int32
        assert table.record(39_999) == records[39_999] and table.record(100) == records[100]
    assert fast._dir_id.tolist() == slow._dir_id.tolist()


def test_manifest_table_from_bytes_holds_no_copy_of_the_manifest() -> None:
    # The file reader refills 1 MiB at a time: building from a 4 MiB manifest must never
    # hold it (or the default 8 MiB line cap) again beside the table being built.
    data = encode_manifest(
        ManifestRecord(i, f"s3://bucket/train/part-{i // 1000:05d}/obj-{i:08d}.jpg", None, 1 + i)
        for i in range(80_000)
    )
    assert len(data) > 4 << 20
    gc.collect()
    tracemalloc.start()
    try:
        table = ManifestTable.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < table.nbytes + (3 << 20), (peak, table.nbytes)

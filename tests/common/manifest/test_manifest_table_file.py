"""File-backed ManifestTable: every lookup equals the in-memory table's; builds fail closed."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mx8_common.errors import (
    ManifestBadRow,
    ManifestError,
    ManifestHashMismatch,
    ManifestTruncated,
    ManifestUnwritable,
)
from mx8_common.manifest import table as manifest_table
from mx8_common.manifest.fast_parse import FileBlockReader
from mx8_common.manifest.format import ManifestRecord, encode_manifest, manifest_hash
from mx8_common.manifest.table import ManifestTable
from mx8_common.manifest.table_file import build_file_table, is_mapped, open_table_dir

_text = st.text(
    alphabet=st.characters(blacklist_characters="\t\r\n", blacklist_categories=("Cs",)),
    max_size=12,
)
_dirs = st.sampled_from(["s3://b/a/", "s3://b/a/ü/", "/data/x/", "", "s3://b/"])
_hints = st.one_of(
    st.sampled_from(["", "custom;k=1"]),
    st.integers(0, 40).map(lambda n: f"mx8:vision:imagefolder;label_id={n}"),
    _text,
)


@st.composite
def _fields(draw: st.DrawFn) -> tuple[str, int | None, int | None, str]:
    location = draw(_dirs) + draw(_text.filter(bool))
    length = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=2**40)))
    offset = None if length is None else draw(st.one_of(st.none(), st.integers(0, 2**40)))
    return (location, offset, length, draw(_hints))


_manifests = st.lists(_fields(), max_size=60).map(
    lambda rows: [ManifestRecord(i, *row) for i, row in enumerate(rows)]
)


def _file_table(data: bytes, root: Path, *, block_bytes: int = 1 << 18) -> ManifestTable:
    reader = FileBlockReader(io.BytesIO(data), max_line_bytes=1 << 20)
    return build_file_table(
        reader, root=root, expected_hash=manifest_hash(data), block_bytes=block_bytes
    )


def _assert_same_lookups(mem: ManifestTable, disk: ManifestTable) -> None:
    assert len(disk) == len(mem)
    assert disk.manifest_hash == mem.manifest_hash
    assert disk.has_labels == mem.has_labels
    for i in range(len(mem)):
        assert disk.record(i) == mem.record(i)
        assert disk.location(i) == mem.location(i)
        assert disk.decode_hint(i) == mem.decode_hint(i)
    for name in ("byte_offset", "byte_length", "label_id"):
        assert getattr(disk, name).tolist() == getattr(mem, name).tolist(), name
    if len(mem):
        ids = np.arange(len(mem))[::-1]
        # Fancy indexing, as the fetch path and the trainer hub do.
        assert disk.byte_offset[ids].tolist() == mem.byte_offset[ids].tolist()
        assert disk.label_id[ids].astype(np.int64).tolist() == mem.label_id[ids].tolist()
        assert disk.record(-1) == mem.record(-1)
    with pytest.raises(IndexError):
        disk.record(len(mem))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_manifests, block_bytes=st.sampled_from([64, 1 << 18]))
def test_file_table_lookups_equal_memory_table(
    records: list[ManifestRecord], block_bytes: int
) -> None:
    data = encode_manifest(records)
    mem = ManifestTable.from_bytes(data, expected_hash=manifest_hash(data))
    with tempfile.TemporaryDirectory() as root:
        disk = _file_table(data, Path(root), block_bytes=block_bytes)
        _assert_same_lookups(mem, disk)
        _assert_same_lookups(mem, pickle.loads(pickle.dumps(disk)))
        assert disk.source == Path(root) / manifest_hash(data)
        # Only the sealed table is left: no build directory.
        assert [p.name for p in Path(root).iterdir()] == [manifest_hash(data)]


def test_file_table_parity_past_the_intern_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny cap: spilled hints and per-row directories take the row-by-row path.
    monkeypatch.setattr(manifest_table, "MAX_INTERNED", 4)
    records = [
        ManifestRecord(
            i, f"s3://b/dir{i % 9}/f{i}.bin", None, 10 + i, f"mx8:vision:imagefolder;label_id={i}"
        )
        for i in range(400)
    ]
    data = encode_manifest(records)
    mem = ManifestTable.from_bytes(data)
    _assert_same_lookups(mem, _file_table(data, tmp_path, block_bytes=512))


def test_file_table_columns_are_mapped_not_held(tmp_path: Path) -> None:
    records = [
        ManifestRecord(i, f"s3://b/c{i % 50}/{i}.jpg", None, 100 + i, f"x;{i % 3}")
        for i in range(20_000)
    ]
    data = encode_manifest(records)
    mem = ManifestTable.from_bytes(data)
    disk = _file_table(data, tmp_path)
    assert is_mapped(disk.byte_length) and is_mapped(disk.label_id) is False
    assert disk.nbytes < mem.nbytes // 20  # only the intern tables are process memory
    with pytest.raises(ValueError, match="read-only"):
        disk.byte_length[0] = 1


def _corrupt_cases(data: bytes) -> dict[str, tuple[bytes, str, type[ManifestError]]]:
    good = manifest_hash(data)
    bad_row = data.replace(b"\t12\t", b"\t1x2\t", 1)
    return {
        "hash": (data.replace(b"d/4999.bin", b"d/4990.bin"), good, ManifestHashMismatch),
        "truncated": (data[: len(data) - 5], good, ManifestTruncated),
        "cut_at_line": (data[: data.rindex(b"\n", 0, len(data) // 2) + 1], good, ManifestError),
        "bad_row": (bad_row, manifest_hash(bad_row), ManifestBadRow),
    }


@pytest.mark.parametrize("case", ["hash", "truncated", "cut_at_line", "bad_row"])
def test_file_table_build_fails_closed_leaving_no_file(tmp_path: Path, case: str) -> None:
    records = [ManifestRecord(i, f"s3://b/d/{i}.bin", None, 12, "") for i in range(5000)]
    data = encode_manifest(records)
    corrupt, announced, error = _corrupt_cases(data)[case]
    reader = FileBlockReader(io.BytesIO(corrupt), max_line_bytes=1 << 20)
    with pytest.raises(error):
        build_file_table(reader, root=tmp_path, expected_hash=announced, block_bytes=4096)
    assert list(tmp_path.iterdir()) == []


def test_file_table_failed_rebuild_keeps_sealed_table_and_good_one_replaces_it(
    tmp_path: Path,
) -> None:
    records = [ManifestRecord(i, f"s3://b/d/{i}.bin", None, 12, "") for i in range(100)]
    data = encode_manifest(records)
    first = _file_table(data, tmp_path)
    reader = FileBlockReader(io.BytesIO(data[:-4]), max_line_bytes=1 << 20)
    with pytest.raises(ManifestTruncated):
        build_file_table(reader, root=tmp_path, expected_hash=manifest_hash(data))
    assert [p.name for p in tmp_path.iterdir()] == [manifest_hash(data)]
    second = _file_table(data, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [manifest_hash(data)]
    # The first table's mapping still reads its (now unlinked) files.
    assert first.record(99) == second.record(99) == records[99]


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "/x"])
def test_file_table_refuses_a_hash_that_is_not_hex_before_any_path(
    tmp_path: Path, bad: str
) -> None:
    reader = FileBlockReader(io.BytesIO(b""), max_line_bytes=1024)
    with pytest.raises(ManifestHashMismatch, match="64 lowercase hex"):
        build_file_table(reader, root=tmp_path / "root", expected_hash=bad)
    assert not (tmp_path / "root").exists()


def test_open_table_dir_refuses_another_manifests_table(tmp_path: Path) -> None:
    data = encode_manifest([ManifestRecord(0, "s3://b/k", None, 1, "")])
    disk = _file_table(data, tmp_path)
    assert disk.source is not None
    with pytest.raises(ManifestHashMismatch, match="delete it and ingest again"):
        open_table_dir(disk.source, expected_hash="0" * 64)


def test_file_table_unwritable_root_is_one_typed_error(tmp_path: Path) -> None:
    data = encode_manifest([ManifestRecord(0, "s3://b/k", None, 1, "")])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the table root should be")
    with pytest.raises(ManifestUnwritable, match="--cache-dir"):
        _file_table(data, blocker / "tables")


def test_file_table_build_removes_a_dead_process_build_and_keeps_a_live_one(
    tmp_path: Path,
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    other = "b" * 64
    orphan = tmp_path / f".{other}.{dead_pid}.abc123.building"
    live = tmp_path / f".{other}.{os.getpid()}.def456.building"
    for path in (orphan, live):
        path.mkdir()
        (path / "tails.bin").write_bytes(b"partial")
    data = encode_manifest([ManifestRecord(0, "s3://b/k", None, 1, "")])
    _file_table(data, tmp_path)
    assert not orphan.exists()  # its process is gone: nobody will finish it
    assert live.exists()  # a build in progress elsewhere is left alone
    assert (tmp_path / manifest_hash(data)).is_dir()

"""The one hash-while-copy helper: what passes is hashed, copied whole, and checked."""

from __future__ import annotations

import hashlib
import io

import pytest

from mx8_common.errors import ManifestHashMismatch
from mx8_common.manifest.hashing import (
    HashingReader,
    HashingSink,
    copy_hashed,
    file_sha256,
    sha256_hex,
)

DATA = b"schema_version=0\n" + b"".join(b"%d\tx\t\t\t\n" % i for i in range(5000))
WANT = hashlib.sha256(DATA).hexdigest()


def test_copy_hashed_copies_every_chunk_and_returns_the_digest() -> None:
    out = io.BytesIO()
    assert copy_hashed(io.BytesIO(DATA).read, out.write, chunk=1000) == WANT
    assert out.getvalue() == DATA
    assert copy_hashed(io.BytesIO(b"").read) == sha256_hex(b"")


def test_file_sha256_matches_hashlib(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.tsv"
    path.write_bytes(DATA)
    assert file_sha256(path) == WANT


def test_hashing_sink_forwards_and_checks() -> None:
    seen: list[bytes] = []
    sink = HashingSink(seen.append)
    for i in range(0, len(DATA), 777):
        sink(DATA[i : i + 777])
    assert b"".join(seen) == DATA
    sink.check(WANT, what="m", fix="f")
    with pytest.raises(ManifestHashMismatch, match=r"^m hashes to [0-9a-f]{64}, not 0+; f$"):
        sink.check("0" * 64, what="m", fix="f")


def test_hashing_reader_hashes_lines_and_reads() -> None:
    reader = HashingReader(io.BytesIO(DATA))
    first = reader.readline()
    rest = reader.read()
    assert first + rest == DATA
    assert reader.hexdigest() == WANT

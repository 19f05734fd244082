"""Property tests: write/read round trips, and corruption never escapes ManifestError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mx8_common.errors import ManifestError
from mx8_common.manifest.format import (
    ManifestRecord,
    ManifestWriter,
    encode_manifest,
    manifest_hash,
)
from mx8_common.manifest.reader import parse_canonical_manifest_tsv_bytes

_text = st.text(
    alphabet=st.characters(blacklist_characters="\t\r\n", blacklist_categories=("Cs",)),
    max_size=20,
)


@st.composite
def _fields(draw: st.DrawFn) -> tuple[str, int | None, int | None, str]:
    location = draw(_text.filter(bool))
    length = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=2**40)))
    offset = None if length is None else draw(st.one_of(st.none(), st.integers(0, 2**40)))
    return (location, offset, length, draw(_text))


_record_lists = st.lists(_fields(), max_size=30).map(
    lambda rows: [ManifestRecord(i, *row) for i, row in enumerate(rows)]
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_record_lists)
def test_manifest_roundtrip_gives_same_records_and_hash(tmp_path, records) -> None:
    data = encode_manifest(records)
    parsed = list(parse_canonical_manifest_tsv_bytes(data))
    assert parsed == records
    assert manifest_hash(encode_manifest(parsed)) == manifest_hash(data)
    with ManifestWriter(tmp_path) as writer:
        for rec in records:
            writer.write(*rec[1:])
        written = writer.finish()
    assert written.path.read_bytes() == data
    assert written.manifest_hash == manifest_hash(data)
    written.path.unlink()


@settings(max_examples=300)
@given(records=_record_lists.filter(bool), data=st.data())
def test_manifest_single_byte_corruption_changes_records_or_raises(records, data) -> None:
    original = encode_manifest(records)
    pos = data.draw(st.integers(0, len(original) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    corrupt = original[:pos] + bytes([new_byte]) + original[pos + 1 :]
    try:
        parsed = list(parse_canonical_manifest_tsv_bytes(corrupt))
    except ManifestError:
        return
    assert parsed != records

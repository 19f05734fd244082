"""``ManifestWriter.write_page``: byte-identical to per-row ``write``, with the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mx8_common.errors import ManifestUnwritable
from mx8_common.manifest.format import ManifestWriter

# Mostly valid text, sometimes a TAB/CR/LF or a lone surrogate, so bad rows turn up too.
_text = st.text(alphabet=st.sampled_from(["a", "é", "/", "\t", "\r", "\n", "\ud800", "0"]))
_row = st.tuples(
    st.one_of(_text, st.just("s3://b/k")),
    st.one_of(st.none(), st.integers(-3, 2**40)),
    st.one_of(st.just(""), _text),
)


def _per_row(tmp: Path, pages: list[list[tuple[str, int | None, str]]]) -> bytes | Exception:
    try:
        with ManifestWriter(tmp) as writer:
            for page in pages:
                for location, length, hint in page:
                    writer.write(location, None, length, hint)
            written = writer.finish()
    except (ManifestUnwritable, UnicodeEncodeError) as exc:
        return exc
    data = written.path.read_bytes()
    written.path.unlink()
    return data


def _paged(
    tmp: Path, pages: list[list[tuple[str, int | None, str]]], hints: bool
) -> bytes | Exception:
    try:
        with ManifestWriter(tmp) as writer:
            for page in pages:
                first = writer.samples
                got = writer.write_page(
                    [loc for loc, _, _ in page],
                    [length for _, length, _ in page],
                    [hint for _, _, hint in page] if hints else None,
                )
                assert got == first and writer.samples == first + len(page)
            written = writer.finish()
    except (ManifestUnwritable, UnicodeEncodeError) as exc:
        return exc
    data = written.path.read_bytes()
    written.path.unlink()
    return data


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pages=st.lists(st.lists(_row, max_size=8), max_size=5), hints=st.booleans())
def test_manifest_writer_write_page_matches_per_row_bytes_and_errors(
    tmp_path: Path, pages: list[list[tuple[str, int | None, str]]], hints: bool
) -> None:
    if not hints:
        pages = [[(loc, length, "") for loc, length, _ in page] for page in pages]
    expected = _per_row(tmp_path, pages)
    got = _paged(tmp_path, pages, hints)
    if isinstance(expected, Exception):
        assert type(got) is type(expected) and str(got) == str(expected)
    else:
        assert got == expected
    assert not list(tmp_path.glob(".manifest-*"))  # failed writers delete their temp file


def test_manifest_writer_write_page_names_the_bad_row(tmp_path: Path) -> None:
    with ManifestWriter(tmp_path) as writer:
        writer.write_page(["s3://b/ok"], [5])
        with pytest.raises(ManifestUnwritable, match=r"'s3://b/x\\ty'.*TAB"):
            writer.write_page(["s3://b/a", "s3://b/x\ty"], [1, 2])
        with pytest.raises(ManifestUnwritable, match="byte_length 0"):
            writer.write_page(["s3://b/a"], [0])
        with pytest.raises(ValueError, match="one byte_length"):
            writer.write_page(["s3://b/a"], [1, 2])
        assert writer.samples == 1

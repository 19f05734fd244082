"""The one manifest writer of the tests, and a local dataset built on it.

``write_manifest(directory, rows)`` writes canonical rows with ``ManifestWriter`` and
renames the file to ``directory/manifest.tsv`` (what a coordinator serves), or keeps the
finished temp file with ``name=None`` (what a resolver hands to a store). ``rows`` is a
number of generated rows (``location`` a ``str.format`` template of ``i`` or a function
of ``i``, as sizes and hints are) or explicit ``(location, byte_offset, byte_length,
decode_hint)`` tuples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mx8_common.manifest.format import ManifestWriter, WrittenManifest

__all__ = [
    "PADDED_LOCATION",
    "Row",
    "sample_bytes",
    "sample_size",
    "write_local_dataset",
    "write_manifest",
]

#: One manifest row: ``(location, byte_offset, byte_length, decode_hint)``.
Row = tuple[str, int | None, int | None, str]

#: A ``location`` template with a 200-character path: megabytes of manifest from few rows.
PADDED_LOCATION = "s3://bucket/" + "x" * 200 + "obj-{i:08d}.bin"


def _default_length(i: int) -> int | None:
    return 100 + i % 7


def _numbered(
    samples: int,
    location: str | Callable[[int], str],
    byte_length: Callable[[int], int | None],
    decode_hint: Callable[[int], str] | None,
) -> Iterator[Row]:
    template = location
    at = (lambda i: template.format(i=i)) if isinstance(template, str) else template
    for i in range(samples):
        yield at(i), None, byte_length(i), decode_hint(i) if decode_hint else ""


def write_manifest(
    directory: Path,
    rows: int | Iterable[Row],
    *,
    location: str | Callable[[int], str] = "s3://bucket/obj-{i:08d}.bin",
    byte_length: Callable[[int], int | None] = _default_length,
    decode_hint: Callable[[int], str] | None = None,
    name: str | None = "manifest.tsv",
) -> WrittenManifest:
    """A canonical manifest of ``rows``; its path is ``directory/name`` (or the temp file)."""
    if isinstance(rows, int):
        rows = _numbered(rows, location, byte_length, decode_hint)
    with ManifestWriter(directory) as writer:
        for loc, offset, length, hint in rows:
            writer.write(loc, byte_offset=offset, byte_length=length, decode_hint=hint)
        written = writer.finish()
    if name is None:
        return written
    path = directory / name
    os.replace(written.path, path)
    return written._replace(path=path)


def sample_size(i: int) -> int:
    """Byte size of sample ``i`` of ``write_local_dataset`` (varied, never 0)."""
    return 50 + (i * 37) % 200


def sample_bytes(i: int) -> bytes:
    """The content of sample ``i`` of ``write_local_dataset`` (names its id)."""
    return i.to_bytes(4, "big") * (sample_size(i) // 4) + b"x" * (sample_size(i) % 4)


def write_local_dataset(
    root: Path, samples: int, *, labels: int = 0, with_lengths: bool = True
) -> Path:
    """Files ``root/data/NNNNNN.bin`` and a manifest of them; returns ``root/manifest.tsv``.

    With ``labels`` > 0 each row carries ``label_id = i % labels`` as its decode hint.
    """
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(samples):
        (data / f"{i:06d}.bin").write_bytes(sample_bytes(i))
    written = write_manifest(
        root,
        samples,
        location=lambda i: str(data / f"{i:06d}.bin"),
        byte_length=sample_size if with_lengths else lambda _i: None,
        decode_hint=(lambda i: f"mx8:vision:imagefolder;label_id={i % labels}") if labels else None,
    )
    return written.path

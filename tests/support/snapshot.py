"""Helpers shared by the snapshot resolver and manifest store tests (local and S3)."""

from __future__ import annotations

from pathlib import Path

from mx8_common.manifest.format import ManifestWriter, WrittenManifest
from mx8_common.manifest.reader import parse_canonical_manifest_tsv_bytes
from mx8_common.snapshot.resolver import ResolvedSnapshot, SnapshotResolverConfig

__all__ = ["cfg", "rows", "write_manifest"]


def cfg(store_root: str, **kw: object) -> SnapshotResolverConfig:
    """A resolver config over ``store_root`` with the progress bar off."""
    return SnapshotResolverConfig(store_root=store_root, show_progress=False, **kw)  # type: ignore[arg-type]


def rows(resolved: ResolvedSnapshot) -> list[tuple[str, int | None, str]]:
    """(location, byte_length, decode_hint) of every row, hash-checked."""
    assert resolved.manifest_data is not None
    return [
        (r.location, r.byte_length, r.decode_hint)
        for r in parse_canonical_manifest_tsv_bytes(
            resolved.manifest_data, expected_hash=resolved.manifest_hash
        )
    ]


def write_manifest(directory: Path, n: int, tag: str = "x") -> WrittenManifest:
    """A finished manifest of ``n`` rows (not renamed anywhere)."""
    with ManifestWriter(directory) as w:
        for i in range(n):
            w.write(f"s3://bkt/{tag}/{i:05d}.bin", None, i + 1, "")
        return w.finish()

"""Where the coordinator's manifest bytes come from, and how they go out in pieces.

The coordinator never holds a whole manifest: ``iter_manifest_chunks`` asks its
``ManifestSource`` for the length and then for ranges of at most 1 MiB, in order. Two
sources: ``StoreManifestSource`` (the manifest store the resolver wrote to) and
``FileManifestSource`` (one local canonical manifest file: tests and pinned files).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mx8_common.errors import ManifestHashMismatch, ManifestTooLargeError, ManifestTruncated
from mx8_common.manifest.hashing import HashingReader
from mx8_common.manifest.reader import parse_canonical_manifest_tsv_reader

__all__ = [
    "CHUNK_BYTES",
    "FileManifestSource",
    "ManifestPiece",
    "ManifestSource",
    "StoreManifestSource",
    "iter_manifest_chunks",
    "read_whole_manifest",
]

#: Largest piece ``GetManifestStream`` sends (and so the most it holds at a time).
CHUNK_BYTES = 1 << 20


@runtime_checkable
class ManifestSource(Protocol):
    """The job's canonical manifest, readable by range."""

    @property
    def manifest_hash(self) -> str: ...

    @property
    def total_samples(self) -> int: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def listed_at(self) -> float | None:
        """When the dataset was listed (Unix seconds), or None when unknown."""
        ...

    async def manifest_len(self) -> int: ...

    async def read_range(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class ManifestPiece:
    """``data`` sits at ``offset`` of a manifest of ``total_bytes`` bytes."""

    offset: int
    data: bytes
    total_bytes: int


async def iter_manifest_chunks(
    source: ManifestSource, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[ManifestPiece]:
    """The manifest in order, ``chunk_bytes`` at most per piece, never loaded whole."""
    total = await source.manifest_len()
    offset = 0
    while offset < total:
        data = await source.read_range(offset, min(chunk_bytes, total - offset))
        if not data:
            raise ManifestTruncated(
                f"manifest {source.manifest_hash} ended at byte {offset} of {total}; the "
                "stored copy is damaged: re-resolve the dataset with @refresh"
            )
        yield ManifestPiece(offset, data, total)
        offset += len(data)


async def read_whole_manifest(source: ManifestSource, max_bytes: int) -> bytes:
    """The whole manifest, refused when it would not fit one ``max_bytes`` message."""
    total = await source.manifest_len()
    if total > max_bytes:
        raise ManifestTooLargeError(
            f"manifest {source.manifest_hash} is {total} bytes, over the {max_bytes}-byte "
            "gRPC message cap (MX8_GRPC_MAX_MESSAGE_BYTES); use GetManifestStream"
        )
    return b"".join([piece.data async for piece in iter_manifest_chunks(source)])


class FileManifestSource:
    """A local canonical manifest file; use ``await FileManifestSource.open(path)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        manifest_hash: str,
        total_samples: int,
        size: int,
        class_names: tuple[str, ...] = (),
    ) -> None:
        self.path = Path(path)
        self.manifest_hash = manifest_hash
        self.total_samples = total_samples
        self.class_names = class_names
        # A manifest file given directly carries no listing time: readers check sizes only.
        self.listed_at: float | None = None
        self._size = size

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_hash: str | None = None,
        class_names: tuple[str, ...] = (),
    ) -> FileManifestSource:
        """Validate ``path`` (streaming, off the loop), counting samples and hashing it."""
        return await asyncio.to_thread(cls._open_sync, Path(path), expected_hash, class_names)

    @classmethod
    def _open_sync(
        cls, path: Path, expected_hash: str | None, class_names: tuple[str, ...]
    ) -> FileManifestSource:
        with open(path, "rb", buffering=1 << 20) as f:
            reader = HashingReader(f)
            count = sum(1 for _ in parse_canonical_manifest_tsv_reader(reader))
            size = f.tell()
        digest = reader.hexdigest()
        if expected_hash is not None and digest != expected_hash:
            raise ManifestHashMismatch(
                f"manifest file {path} hashes to {digest}, not the pinned {expected_hash}; "
                "the file changed since it was pinned"
            )
        return cls(
            path,
            manifest_hash=digest,
            total_samples=count,
            size=size,
            class_names=class_names,
        )

    async def manifest_len(self) -> int:
        return self._size

    async def read_range(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._pread, offset, length)

    def _pread(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb", buffering=0) as f:
            return os.pread(f.fileno(), length, offset)


class StoreManifestSource:
    """A manifest in the manifest store (``mx8_common.store``), read by range."""

    def __init__(
        self,
        store: Any,
        *,
        manifest_hash: str,
        total_samples: int,
        class_names: tuple[str, ...] = (),
        listed_at: float | None = None,
    ) -> None:
        self._store = store
        self.manifest_hash = manifest_hash
        self.total_samples = total_samples
        self.class_names = class_names
        #: From the snapshot's stored metadata; None for snapshots stored before mx8 kept it.
        self.listed_at = listed_at

    async def manifest_len(self) -> int:
        return int(await self._store.manifest_len(self.manifest_hash))

    async def read_range(self, offset: int, length: int) -> bytes:
        return bytes(await self._store.read_range(self.manifest_hash, offset, length))

"""SHA-256 of manifest bytes on their way through: the dataset's identity, computed once per copy.

Every place that moves a whole manifest (the stores writing and streaming it, the agent
caching the coordinator's stream, the coordinator serving a file) hashes the bytes as they
pass and refuses them if they miss the hash they are stored or announced under. These
helpers are that loop, written once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from mx8_common.errors import ManifestHashMismatch

__all__ = ["CHUNK", "HashingReader", "HashingSink", "copy_hashed", "file_sha256", "sha256_hex"]

CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_hashed(
    read: Callable[[int], bytes],
    write: Callable[[bytes], object] | None = None,
    *,
    chunk: int = CHUNK,
) -> str:
    """Copy ``read(chunk)`` to ``write`` until it returns b""; the SHA-256 of what passed."""
    sha = hashlib.sha256()
    while data := read(chunk):
        sha.update(data)
        if write is not None:
            write(data)
    return sha.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return copy_hashed(f.read)


class HashingSink:
    """A chunk sink that hashes each chunk and passes it on to ``sink`` (if any)."""

    def __init__(self, sink: Callable[[bytes], object] | None = None) -> None:
        self._sha = hashlib.sha256()
        self._sink = sink

    def __call__(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        if self._sink is not None:
            self._sink(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def check(self, expected: str, *, what: str, fix: str) -> None:
        """Raise ``ManifestHashMismatch`` unless the bytes seen hash to ``expected``."""
        actual = self.hexdigest()
        if actual != expected:
            raise ManifestHashMismatch(f"{what} hashes to {actual}, not {expected}; {fix}")


class HashingReader:
    """A reader (``read``/``readline``) that hashes what passes through it."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.sha = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._file.read(size)
        self.sha.update(data)
        return data

    def readline(self, size: int = -1, /) -> bytes:
        line: bytes = self._file.readline(size)
        self.sha.update(line)
        return line

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

"""External sort of listed ``(key, size)`` pairs: sorted run files, then a k-way merge.

For S3-protocol endpoints that do not list keys in order. At most ``keys_per_run`` keys
are held in memory; each full buffer is sorted and spilled to a run file of
``<key>\\t<size>\\n`` lines, and ``merged()`` streams the runs back through
``heapq.merge`` (one buffered line per run). Keys must not hold TAB/CR/LF: the resolver
rejects those before they reach the sorter.
"""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["ExternalSorter"]

_RUN_BUFFER = 1 << 16


def _read_run(path: Path) -> Iterator[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="\n", buffering=_RUN_BUFFER) as f:
        for line in f:
            key, _, size = line[:-1].rpartition("\t")
            yield key, int(size)


class ExternalSorter:
    """Collects ``(key, size)`` pairs in any order and yields them sorted by key.

    Not thread-safe; the resolver drives it from one worker thread at a time. Run files
    live in a private temp directory removed by ``close()`` (or ``with``).
    """

    def __init__(self, *, keys_per_run: int, directory: str | os.PathLike[str] | None = None):
        if keys_per_run < 1:
            raise ValueError(f"keys_per_run must be >= 1, got {keys_per_run}")
        self.keys_per_run = keys_per_run
        self._dir = Path(tempfile.mkdtemp(prefix="mx8-sort-", dir=directory))
        self._buffer: list[tuple[str, int]] = []
        self._runs: list[Path] = []
        self.keys = 0

    @property
    def runs(self) -> int:
        """Run files spilled so far."""
        return len(self._runs)

    def add(self, items: Iterable[tuple[str, int]]) -> None:
        """Buffer pairs, spilling a sorted run each time the buffer reaches ``keys_per_run``."""
        for key, size in items:
            if "\t" in key or "\n" in key or "\r" in key:
                raise ValueError(f"key {key!r} holds TAB/CR/LF; reject it before sorting")
            self._buffer.append((key, size))
            self.keys += 1
            if len(self._buffer) >= self.keys_per_run:
                self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        path = self._dir / f"run-{len(self._runs):06d}.tsv"
        with open(path, "w", encoding="utf-8", newline="\n", buffering=_RUN_BUFFER) as f:
            f.writelines(f"{key}\t{size}\n" for key, size in self._buffer)
        self._runs.append(path)
        self._buffer = []

    def merged(self) -> Iterator[tuple[str, int]]:
        """All pairs in key order (ties keep both: the caller rejects duplicate keys)."""
        if not self._runs:
            # Everything fit in one buffer: no file round trip needed.
            self._buffer.sort()
            yield from self._buffer
            return
        if self._buffer:
            self._spill()
        yield from heapq.merge(*(_read_run(p) for p in self._runs))

    def close(self) -> None:
        """Delete the run files."""
        self._buffer = []
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ExternalSorter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

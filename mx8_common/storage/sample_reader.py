"""``SampleReader``: what the fetch pipeline asks of a reader of sample bytes.

Two calls: ``read`` (one sample, local or S3) and ``read_local_many`` (several local
samples in one thread-pool job, errors returned in place). ``ObjectReader`` is the real
reader; anything the pipeline is given must offer both, so local grouping never silently
turns off behind a wrapper. Whoever wants per-read timings passes an ``on_read`` observer
to the reader instead of wrapping it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

import obstore

from mx8_common.errors import StorageError
from mx8_common.storage.local_read import LocalRead

__all__ = ["LocalRead", "Payload", "ReadObserver", "ReadStats", "SampleReader"]

#: One sample's bytes as a reader hands them out: ``bytes``, or the native client's
#: read-only buffer kept as it arrived (no copy per sample). ``len()``, ``==``,
#: ``memoryview`` and ``b"".join`` treat both alike; ``bytes(p)`` copies when needed.
Payload: TypeAlias = bytes | obstore.Bytes

#: Told ``(seconds, nbytes)`` of every sample read (an agent's latency histogram).
ReadObserver = Callable[[float, int], None]


@dataclass(slots=True)
class ReadStats:
    """Counters of one reader (or one pipeline that passes its own to ``read``).

    ``local_batches`` counts ``read_local_many`` jobs: several local files per trip to a
    read thread instead of one.
    """

    reads: int = 0
    bytes: int = 0
    retries: int = 0
    local_batches: int = 0


@runtime_checkable
class SampleReader(Protocol):
    """Reads the bytes of samples; ``ObjectReader`` is the implementation."""

    async def read(
        self,
        location: str,
        byte_offset: int | None = None,
        byte_length: int | None = None,
        *,
        stats: ReadStats | None = None,
    ) -> Payload:
        """The bytes of one sample (the range, or the whole object checked against its size)."""
        ...

    async def read_local_many(
        self, items: Sequence[LocalRead], *, stats: ReadStats | None = None
    ) -> list[bytes | StorageError]:
        """Several local samples in one job; a failed sample's error is returned in its place."""
        ...

"""The trainer's side of the same-host hand-over: batches read from the agent's segments.

A rank-exact stream offers the agent a probe file (``mx8_common.shm``); an agent that
shares this host's ``/dev/shm`` then sends each batch as ``SharedBytes`` (segment name,
offset, length). ``SharedSegments.read`` copies those bytes into the batch's own
``bytes`` at once, before the batch is acknowledged, so the agent may reuse the space
after the acknowledgement and no ``Batch`` ever points into shared memory (a batch kept
for later, or pickled to a DataLoader worker, stays valid). Only the agent's newest
segment is kept mapped: it writes new batches only there.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from mx8_common import shm
from mx8_common.errors import AgentError

__all__ = ["SharedMemoryUnreadable", "SharedSegments"]


class SharedMemoryUnreadable(AgentError):
    """This trainer may not open the agent's segment (another user, another directory):
    the stream is reopened without shared memory."""


class SharedSegments:
    """The agent's segments this stream reads from, mapped read-only."""

    def __init__(self, url: str, directory: Path = shm.SHM_DIR) -> None:
        self.url = url
        self.directory = directory
        self._maps: dict[str, mmap.mmap] = {}
        self.batches = 0

    def _map(self, segment: str) -> mmap.mmap:
        if not shm.valid_name(segment) or not segment.startswith(shm.SEGMENT_PREFIX):
            raise AgentError(
                f"mx8d-agent at {self.url} named shared-memory segment {segment!r}, which is "
                "not one of its files; restart the trainer with an agent of the same version",
                address=self.url,
            )
        try:
            fd = os.open(self.directory / segment, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise SharedMemoryUnreadable(
                f"cannot open mx8d-agent's shared-memory segment {self.directory / segment} "
                f"({exc.strerror}); the agent at {self.url} must run on this host with the "
                "same /dev/shm",
                address=self.url,
            ) from None
        try:
            mapped = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        # Older segments are never named again: the agent moved to this one.
        self.close()
        self._maps[segment] = mapped
        return mapped

    def read(self, segment: str, offset: int, length: int) -> bytes:
        """A copy of bytes ``[offset, offset + length)`` of ``segment``."""
        mapped = self._maps.get(segment) or self._map(segment)
        if offset + length > len(mapped):
            raise AgentError(
                f"mx8d-agent at {self.url} named bytes {offset}..{offset + length} of "
                f"shared-memory segment {segment}, which has {len(mapped)}",
                address=self.url,
            )
        self.batches += 1
        return mapped[offset : offset + length]

    def close(self) -> None:
        """Unmap every segment; safe to call twice."""
        maps, self._maps = self._maps, {}
        for mapped in maps.values():
            mapped.close()

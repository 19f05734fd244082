"""``ShmRing``: one trainer stream's batches in shared memory, freed by acknowledgements.

A stream's batches are acknowledged in the order they were sent, so its shared memory is
a ring: ``put`` copies a batch's parts to the tail (wrapping to the start when the end is
too short) and ``release_through(seq)`` frees from the head. The ring is one segment
sized for the stream's window (``window + 1`` batches of the largest seen); a batch that
does not fit (bigger batches arrived, or the window is full of them) moves the ring to a
new, larger segment, and the old one is closed once its last batch is acknowledged. A
batch bigger than ``max_bytes``, one that would take the ring's segments past twice
``max_bytes``, or a segment that cannot be made (``/dev/shm`` full) gets None: the
caller sends that batch's bytes in the message instead.

Making a segment reserves and maps all its pages (``shm.create_segment``): for a window
of 4 MiB batches that took 13-15 ms, which the agent's event loop spent not serving any
trainer, at every trainer's first batch. ``prepare`` makes the first segment in a thread
while the stream joins its world, so the first batch finds its room ready.

A segment's name is unlinked as soon as the trainer acknowledges one of its batches (the
trainer has it open by then), so a segment outlives its name only while both sides map
it, and the kernel frees it when both have let go.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mx8_common import shm

__all__ = ["ShmRing", "ShmSlot"]

_ALIGN = 4096
_MIN_SEGMENT = 1 << 20


@dataclass(eq=False)
class ShmSlot:
    """Where one batch's bytes are: ``segment`` name, ``offset``, ``length``; ``seq`` is
    its ``batch_seq`` once sent (0 before: a reserved slot is never released)."""

    seq: int
    segment: str
    offset: int
    length: int
    #: The segment itself (read workers get its descriptor; ``owner.map`` writes it).
    owner: shm.Segment | None = field(default=None, repr=False)


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Live:
    __slots__ = ("seg", "slot")

    def __init__(self, seg: shm.Segment, slot: ShmSlot) -> None:
        self.seg = seg
        self.slot = slot


class ShmRing:
    """Shared memory of one stream (see the module docstring)."""

    def __init__(self, *, window: int, max_bytes: int, directory: Path = shm.SHM_DIR) -> None:
        self.window = max(1, window)
        self.max_bytes = max_bytes
        self.directory = directory
        self._seg: shm.Segment | None = None
        self._live: collections.deque[_Live] = collections.deque()
        self._old: list[shm.Segment] = []
        self._largest = 0
        self._head = 0  # offset of the oldest live batch in the current segment
        self._tail = 0  # where the next batch goes in the current segment
        self.batches = 0  # batches placed in shared memory
        self.segments = 0  # segments created
        self.closed = False

    @property
    def live(self) -> int:
        """Batches placed and not yet released."""
        return len(self._live)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the segments this ring holds now (current and draining)."""
        return sum(s.size for s in self._old) + (self._seg.size if self._seg else 0)

    def mapped_bytes_draining(self) -> int:
        """Bytes of segments that would stay after a move to a new one (they hold live
        batches)."""
        seg = self._seg
        held = seg is not None and any(x.seg is seg for x in self._live)
        return sum(s.size for s in self._old) + (seg.size if held and seg else 0)

    def _fit(self, length: int) -> int | None:
        """Offset for ``length`` bytes in the current segment, or None."""
        seg = self._seg
        if seg is None:
            return None
        live = [x for x in self._live if x.seg is seg]
        if not live:
            self._head = self._tail = 0
            return 0 if length <= seg.size else None
        if self._tail >= self._head:
            if self._tail + length <= seg.size:
                return self._tail
            if length < self._head:  # wrap; strictly below head keeps full != empty
                return 0
            return None
        if self._tail + length < self._head:
            return self._tail
        return None

    def _segment_size(self, length: int) -> int:
        size = _round_up(max(_MIN_SEGMENT, (self.window + 1) * max(self._largest, length)))
        return min(size, _round_up(self.max_bytes))

    async def prepare(self, batch_bytes: int) -> None:
        """Make the first segment, for ``window + 1`` batches of ``batch_bytes``, in a
        thread (see the module docstring). A ring that has a segment by then, or was
        closed meanwhile, closes the new one; a caller cancelled meanwhile leaves it to
        that rule too. Nothing made (no room): ``reserve`` tries again as usual."""
        if self._seg is not None or self.closed or not 0 < batch_bytes <= self.max_bytes:
            return
        size = self._segment_size(batch_bytes)
        loop = asyncio.get_running_loop()
        made = loop.run_in_executor(None, shm.create_segment, size, self.directory)
        made.add_done_callback(self._adopt)
        await asyncio.wait({made})  # not cancelled with the caller: _adopt takes the result

    def _adopt(self, made: asyncio.Future[shm.Segment | None]) -> None:
        seg = None if made.cancelled() or made.exception() else made.result()
        if seg is None:
            return
        if self.closed or self._seg is not None:
            seg.close()
            return
        self._seg = seg
        self._head = self._tail = 0
        self.segments += 1

    def _grow(self, length: int) -> bool:
        size = self._segment_size(length)
        # Bounded: the segments draining plus the new one stay within twice the budget.
        if length > size or self.mapped_bytes_draining() + size > 2 * _round_up(self.max_bytes):
            return False
        seg = shm.create_segment(size, self.directory)
        if seg is None:
            return False
        if self._seg is not None:
            if any(x.seg is self._seg for x in self._live):
                self._old.append(self._seg)
            else:
                self._seg.close()
        self._seg = seg
        self._head = self._tail = 0
        self.segments += 1
        return True

    def reserve(self, length: int) -> ShmSlot | None:
        """Room for the next batch, ``length`` bytes, to be filled by the caller and sent
        (``sent``) in the order reserved; None: no room, send it inline."""
        if self.closed or length > self.max_bytes:
            return None
        self._largest = max(self._largest, length)
        offset = self._fit(length)
        if offset is None:
            if not self._grow(length):
                return None
            offset = 0
        seg = self._seg
        assert seg is not None
        slot = ShmSlot(0, seg.name, offset, length, seg)
        if not any(x.seg is seg for x in self._live):
            self._head = offset
        self._live.append(_Live(seg, slot))
        self._tail = offset + length
        return slot

    def sent(self, slot: ShmSlot, seq: int) -> None:
        """``slot`` went to the trainer as ``batch_seq`` ``seq``."""
        slot.seq = seq
        self.batches += 1

    def put(self, seq: int, parts: Sequence[bytes], length: int) -> ShmSlot | None:
        """Copy batch ``seq`` (``parts``, ``length`` bytes in all) in; None: send it inline."""
        slot = self.reserve(length)
        if slot is None:
            return None
        assert slot.owner is not None
        view, at = slot.owner.map, slot.offset
        for part in parts:
            end = at + len(part)
            view[at:end] = part
            at = end
        self.sent(slot, seq)
        return slot

    def release_through(self, seq: int) -> int:
        """Free every batch up to ``seq`` (the trainer acknowledged it); how many."""
        n = 0
        while self._live and 0 < self._live[0].slot.seq <= seq:
            done = self._live.popleft()
            # The trainer read from this segment: it has it open, the name can go.
            done.seg.unlink()
            n += 1
        if n:
            seg = self._seg
            rest = [x for x in self._live if x.seg is seg]
            if rest:
                self._head = rest[0].slot.offset
            else:
                self._head = self._tail = 0
            held = {id(x.seg) for x in self._live}
            for old in [s for s in self._old if id(s) not in held]:
                old.close()
                self._old.remove(old)
        return n

    def close(self) -> None:
        """Unlink and unmap every segment (the stream ended); safe to call twice."""
        self.closed = True
        self._live.clear()
        for seg in self._old:
            seg.close()
        self._old.clear()
        if self._seg is not None:
            self._seg.close()
            self._seg = None

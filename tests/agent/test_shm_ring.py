"""``ShmRing``, one trainer stream's shared memory: allocation, free on ack, growth,
bounds and clean-up, on a private directory standing in for ``/dev/shm``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from support.eventually import assert_eventually

from mx8_agent.serve.shm_ring import ShmRing, ShmSlot


def _parts(seed: int, sizes: list[int]) -> list[bytes]:
    return [bytes([(seed + i) % 251]) * n for i, n in enumerate(sizes)]


_OPEN: dict[str, int] = {}


def _read(directory: Path, slot: ShmSlot) -> bytes:
    """Like a trainer: open a segment when first named (before any ack unlinks it)."""
    fd = _OPEN.get(str(directory / slot.segment))
    if fd is None:
        fd = _OPEN[str(directory / slot.segment)] = os.open(directory / slot.segment, os.O_RDONLY)
    return os.pread(fd, slot.length, slot.offset)


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_shm_ring_batches_are_byte_identical_and_never_overlap_while_live(tmp_path: Path) -> None:
    ring = ShmRing(window=3, max_bytes=64 << 20, directory=tmp_path)
    live: list[tuple[ShmSlot, bytes]] = []
    for seq in range(1, 40):
        parts = _parts(seq, [1000 + 37 * seq, 500, 3])
        slot = ring.put(seq, parts, sum(map(len, parts)))
        assert slot is not None and slot.seq == seq
        live.append((slot, b"".join(parts)))
        for other, _ in live[:-1]:  # no live batch shares a byte with another
            if other.segment == slot.segment:
                assert (
                    other.offset + other.length <= slot.offset
                    or slot.offset + slot.length <= other.offset
                )
        for s, data in live:
            assert _read(tmp_path, s) == data
        if len(live) == 3:  # the window is full: the trainer acknowledges the oldest
            assert ring.release_through(live[0][0].seq) == 1
            live.pop(0)
    assert ring.segments == 1  # the first segment was sized for the window: it wrapped
    ring.close()
    assert _files(tmp_path) == []


def test_shm_ring_ack_unlinks_the_segment_name_and_frees_in_order(tmp_path: Path) -> None:
    ring = ShmRing(window=2, max_bytes=1 << 30, directory=tmp_path)
    a = ring.put(1, [b"a" * 100], 100)
    b = ring.put(2, [b"b" * 100], 100)
    assert a is not None and b is not None
    assert _files(tmp_path) == [a.segment]  # named until the trainer has read from it
    assert ring.release_through(0) == 0 and ring.live == 2
    assert ring.release_through(1) == 1 and ring.live == 1
    assert _files(tmp_path) == []  # acknowledged: the trainer has it open, the name goes
    assert ring.release_through(5) == 1 and ring.live == 0
    ring.close()


def test_shm_ring_grows_to_a_new_segment_and_closes_the_old_after_its_last_ack(
    tmp_path: Path,
) -> None:
    ring = ShmRing(window=1, max_bytes=1 << 30, directory=tmp_path)
    small = ring.put(1, [b"s" * 1000], 1000)
    assert small is not None
    first = ring.mapped_bytes
    big = ring.put(2, [b"B" * (3 << 20)], 3 << 20)  # does not fit beside the live batch
    assert big is not None and big.segment != small.segment and ring.segments == 2
    assert ring.mapped_bytes > first  # the old segment still holds batch 1
    ring.release_through(1)
    assert ring.mapped_bytes == os.path.getsize(tmp_path / big.segment)
    assert _read(tmp_path, big) == b"B" * (3 << 20)
    ring.close()
    assert _files(tmp_path) == []


def test_shm_ring_is_bounded_by_max_bytes_and_falls_back_inline(tmp_path: Path) -> None:
    ring = ShmRing(window=4, max_bytes=2 << 20, directory=tmp_path)
    assert ring.put(1, [b"x" * (3 << 20)], 3 << 20) is None  # bigger than the budget
    for seq in range(2, 30):
        ring.put(seq, [b"y" * (700 << 10)], 700 << 10)  # never acknowledged
        assert ring.mapped_bytes <= 2 * (2 << 20)  # never past twice the budget
    ring.close()
    assert ring.put(99, [b"z"], 1) is None  # closed: inline


def test_shm_ring_without_room_in_the_directory_sends_inline(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    ring = ShmRing(window=2, max_bytes=1 << 20, directory=missing)
    assert ring.put(1, [b"x" * 10], 10) is None


def test_shm_ring_reserved_slot_is_kept_until_sent_and_acknowledged(tmp_path: Path) -> None:
    ring = ShmRing(window=2, max_bytes=1 << 30, directory=tmp_path)
    sent = ring.put(1, [b"p" * 10], 10)
    assert sent is not None and _read(tmp_path, sent) == b"p" * 10  # the trainer opens it
    reserved = ring.reserve(20)  # being filled by a read thread
    assert sent is not None and reserved is not None and reserved.owner is not None
    reserved.owner.map[reserved.offset : reserved.offset + 20] = b"r" * 20
    assert ring.release_through(99) == 1 and ring.live == 1  # unsent: not released
    ring.sent(reserved, 2)
    assert _read(tmp_path, reserved) == b"r" * 20 and ring.batches == 2
    assert ring.release_through(2) == 1 and ring.live == 0
    ring.close()


async def test_shm_ring_prepare_makes_the_segment_the_first_batch_goes_into(tmp_path: Path) -> None:
    ring = ShmRing(window=3, max_bytes=64 << 20, directory=tmp_path)
    await ring.prepare(10_000)
    assert ring.segments == 1 and len(_files(tmp_path)) == 1
    parts = _parts(1, [6_000, 4_000])
    slot = ring.put(1, parts, 10_000)
    assert slot is not None and _read(tmp_path, slot) == b"".join(parts)
    assert ring.segments == 1  # no second segment made at the first batch
    await ring.prepare(10_000)  # a ring with a segment keeps it
    assert ring.segments == 1 and len(_files(tmp_path)) == 1
    ring.close()
    assert _files(tmp_path) == []


async def test_shm_ring_prepare_left_or_outlived_by_its_ring_leaves_no_segment(
    tmp_path: Path,
) -> None:
    for cancel_first in (True, False):
        ring = ShmRing(window=3, max_bytes=64 << 20, directory=tmp_path)
        task = asyncio.ensure_future(ring.prepare(1 << 20))
        await asyncio.sleep(0)  # the segment is being made in a thread
        if cancel_first:
            task.cancel()
        ring.close()
        await asyncio.gather(task, return_exceptions=True)
        # Whenever the thread's segment lands, a closed ring closes it.
        await assert_eventually(lambda: _files(tmp_path) == [], timeout_s=10)
        assert ring.put(1, [b"x"], 1) is None


async def test_shm_ring_prepare_for_a_batch_past_the_budget_makes_nothing(tmp_path: Path) -> None:
    ring = ShmRing(window=3, max_bytes=1 << 20, directory=tmp_path)
    await ring.prepare(2 << 20)
    await ring.prepare(0)  # sizes unknown
    assert ring.segments == 0 and _files(tmp_path) == []

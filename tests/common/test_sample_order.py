"""Deterministic epoch order: pure functions of (manifest_hash, seed, epoch)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mx8_common.sample_order import EpochOrder, rank_positions, splitmix64

HASH = "ab" * 32


@given(
    total=st.integers(0, 3000),
    block=st.integers(1, 700),
    seed=st.integers(0, 2**64 - 1),
    epoch=st.integers(0, 1000),
    shuffle=st.booleans(),
)
def test_sample_order_is_a_permutation_with_contiguous_blocks(total, block, seed, epoch, shuffle):
    order = EpochOrder(total, block, shuffle, seed, epoch, HASH)
    ids = order.ids(0, total).tolist()
    assert sorted(ids) == list(range(total))
    ranges = order.block_ranges()
    assert [s for s, _ in ranges] == [0, *[e for _, e in ranges][:-1]] if ranges else total == 0
    for start, end in ranges:
        # Each block range holds exactly one id block, permuted inside.
        block_ids = ids[start:end]
        first = min(block_ids)
        assert first % block == 0 and sorted(block_ids) == list(range(first, first + end - start))


@given(total=st.integers(1, 2000), start=st.integers(0, 2000), length=st.integers(0, 300))
def test_sample_order_any_slice_matches_the_whole(total, start, length):
    order = EpochOrder(total, 64, True, 7, 3, HASH)
    start = min(start, total)
    end = min(total, start + length)
    assert order.ids(start, end).tolist() == order.ids(0, total).tolist()[start:end]


def test_sample_order_is_reproducible_and_keyed_by_seed_epoch_and_hash() -> None:
    base = EpochOrder(10_000, 100, True, 1, 0, HASH).ids(0, 10_000).tolist()
    assert EpochOrder(10_000, 100, True, 1, 0, HASH).ids(0, 10_000).tolist() == base
    for other in (
        EpochOrder(10_000, 100, True, 2, 0, HASH),
        EpochOrder(10_000, 100, True, 1, 1, HASH),
        EpochOrder(10_000, 100, True, 1, 0, "cd" * 32),
    ):
        assert other.ids(0, 10_000).tolist() != base


def test_sample_order_without_shuffle_is_identity() -> None:
    order = EpochOrder(1000, 64, False, 5, 9, HASH)
    assert order.ids(0, 1000).tolist() == list(range(1000))
    assert order.block_ranges()[1] == (64, 128)


def test_sample_order_splitmix64_reference_values() -> None:
    # First outputs of the reference splitmix64 generator seeded with 0.
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("total", [0, 1, 10, 101])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_positions_are_equal_length_and_cover(world, total, drop_last):
    shards = [rank_positions(total, r, world, drop_last=drop_last) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    flat = [p % total for s in shards for p in s] if total else []
    if drop_last:
        assert len(set(flat)) == len(flat) == (total // world) * world
    else:
        assert set(flat) == set(range(total))
        assert len(flat) - total < world

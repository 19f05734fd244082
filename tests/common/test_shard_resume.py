"""Rank shards and resume points: pure functions shared by embedded loaders and agents.

The property: a state saved at world W after k steps and loaded at world W' (any batch
size) delivers, with the ids taken before it, every sample of the epoch exactly once
(plus the wrap padding that keeps ranks equal, or minus the drop_last tail), and at
W' == W exactly the uninterrupted batches from step k on.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mx8._state import EpochCursor, LoaderShape, build_state, resume_cursor
from mx8_common.errors import ConfigError
from mx8_common.sample_order import (
    EpochOrder,
    JobOrder,
    Shard,
    consumed_positions,
    rank_positions,
    shard_samples,
)

HASH = "cd" * 32


def _positions(shard: Shard, start: int, end: int) -> list[int]:
    """Unwrapped positions of rank-local samples [start, end) (>= total: padding)."""
    return [shard.offset + shard.rank + i * shard.world_size for i in range(start, end)]


def _batches(shard: Shard, first: int = 0) -> list[list[int]]:
    return [shard.batch_ids(b).tolist() for b in range(first, shard.batches)]


@settings(deadline=None)  # whole epochs per example; a loaded box is slow
@given(
    total=st.integers(1, 400),
    world=st.integers(1, 8),
    batch=st.integers(1, 16),
    drop_last=st.booleans(),
    offset=st.integers(0, 450),
)
def test_shard_ids_are_the_orders_ids_at_the_strided_positions(
    total: int, world: int, batch: int, drop_last: bool, offset: int
) -> None:
    order = EpochOrder(total, 32, True, 5, 1, HASH)
    offset = min(offset, total)
    every = order.ids(0, total).tolist()
    lengths = set()
    for rank in range(world):
        shard = Shard(order, rank, world, drop_last, batch, offset=offset)
        positions = _positions(shard, 0, shard.samples)
        assert list(rank_positions(total, rank, world, drop_last=drop_last, offset=offset)) == (
            positions
        )
        assert shard.ids(0, shard.samples).tolist() == [every[p % total] for p in positions]
        assert sum(len(b) for b in _batches(shard)) == shard.samples
        lengths.add(shard.batches)
    assert len(lengths) == 1  # every rank takes the same number of steps


@settings(deadline=None)  # whole epochs per example; a loaded box is slow
@given(
    total=st.integers(1, 300),
    world=st.integers(1, 6),
    new_world=st.integers(1, 6),
    batch=st.integers(1, 12),
    new_batch=st.integers(1, 12),
    drop_last=st.booleans(),
    data=st.data(),
)
def test_shard_resume_at_any_world_covers_the_epoch_once(
    total: int,
    world: int,
    new_world: int,
    batch: int,
    new_batch: int,
    drop_last: bool,
    data: st.DataObject,
) -> None:
    order = EpochOrder(total, 16, True, 9, 2, HASH)
    shards = [Shard(order, r, world, drop_last, batch) for r in range(world)]
    steps = data.draw(st.integers(0, shards[0].batches), label="steps before the checkpoint")
    position = shards[0].batch_bounds(steps - 1)[1] if steps else 0
    before = [p for s in shards for p in _positions(s, 0, position)]
    consumed = consumed_positions(total, world, offset=0, position=position, drop_last=drop_last)
    resumed = [Shard(order, r, new_world, drop_last, new_batch, consumed) for r in range(new_world)]
    after = [p for s in resumed for p in _positions(s, 0, s.samples)]
    real = Counter(p for p in before + after if p < total)
    assert all(n == 1 for n in real.values())  # nothing twice, padding aside
    if drop_last:
        # The cut tail of each world is fewer than its world size; the rest is whole.
        assert sorted(real) == list(range(len(real)))
        assert total - len(real) < max(world, new_world)
    else:
        assert sorted(real) == list(range(total))
        # Padding only wraps to the epoch's start (ids already seen).
        assert all(p - total < new_world for p in after if p >= total)
    lengths = {s.batches for s in resumed}
    assert len(lengths) == 1


@settings(deadline=None)  # whole epochs per example; a loaded box is slow
@given(
    total=st.integers(1, 300),
    world=st.integers(1, 6),
    batch=st.integers(1, 12),
    drop_last=st.booleans(),
    data=st.data(),
)
def test_shard_resume_at_the_same_world_is_the_uninterrupted_continuation(
    total: int, world: int, batch: int, drop_last: bool, data: st.DataObject
) -> None:
    order = EpochOrder(total, 16, True, 3, 0, HASH)
    n = Shard(order, 0, world, drop_last, batch).batches
    steps = data.draw(st.integers(0, n), label="steps before the checkpoint")
    for rank in range(world):
        whole = Shard(order, rank, world, drop_last, batch)
        position = whole.batch_bounds(steps - 1)[1] if steps else 0
        consumed = consumed_positions(
            total, world, offset=0, position=position, drop_last=drop_last
        )
        rest = Shard(order, rank, world, drop_last, batch, consumed)
        assert _batches(rest) == _batches(whole, steps)


def _shape(total: int, world: int, rank: int, batch: int, drop_last: bool = False) -> LoaderShape:
    job = JobOrder(manifest_hash=HASH, total_samples=total, block_size=16, shuffle=True, seed=4)
    return LoaderShape(
        link="/data", job=job, rank=rank, world_size=world, batch_size=batch, drop_last=drop_last
    )


@settings(deadline=None)  # whole epochs per example; a loaded box is slow
@given(
    total=st.integers(1, 300),
    world=st.integers(1, 6),
    new_world=st.integers(1, 6),
    batch=st.integers(1, 12),
    drop_last=st.booleans(),
    data=st.data(),
)
def test_state_round_trip_restores_the_cursor_or_resumes_at_consumed(
    total: int, world: int, new_world: int, batch: int, drop_last: bool, data: st.DataObject
) -> None:
    shape = _shape(total, world, 0, batch, drop_last)
    cursor = EpochCursor(epoch=3)
    whole = shape.shard(cursor)
    steps = data.draw(st.integers(0, whole.batches), label="steps")
    cursor.position = whole.batch_bounds(steps - 1)[1] if steps else 0
    state = build_state(shape, cursor)
    assert state["step"] == steps and state["epoch"] == 3
    new_shape = _shape(total, new_world, new_world - 1, batch, drop_last)
    resumed, seed = resume_cursor(new_shape, state, fixed_seed=True)
    assert seed == 4 and resumed.epoch == 3 and resumed.loaded
    if new_world == world:
        # The same shape (any rank) restores the cursor: len(loader) and the next batch
        # index are what they were.
        assert (resumed.offset, resumed.base_step, resumed.position) == (0, 0, cursor.position)
        assert resumed.base_step + new_shape.shard(resumed).batches == whole.batches
    else:
        assert (resumed.offset, resumed.base_step, resumed.position) == (
            state["consumed"],
            steps,
            0,
        )
        rest = new_shape.shard(resumed)
        assert rest.samples == shard_samples(
            total, new_world, drop_last=drop_last, offset=state["consumed"]
        )


def test_state_of_version_1_loads_as_the_same_position() -> None:
    shape = _shape(100, 4, 1, 5)
    old = {
        "version": 1,
        "manifest_hash": HASH,
        "epoch": 2,
        "seed": 4,
        "shuffle": True,
        "position": 10,
        "rank": 1,
        "world_size": 4,
        "batch_size": 5,
        "block_size": 16,
    }
    cursor, _ = resume_cursor(shape, old, fixed_seed=True)
    assert (cursor.epoch, cursor.offset, cursor.base_step, cursor.position) == (2, 0, 0, 10)
    # At another world size it resumes from what the whole world consumed: 4 ranks x 10.
    two = _shape(100, 2, 1, 5)
    elastic, _ = resume_cursor(two, old, fixed_seed=True)
    assert (elastic.offset, elastic.base_step, elastic.position) == (40, 2, 0)
    rest = Shard(shape.job.order(2), 1, 2, False, 5, offset=40)
    assert _batches(two.shard(elastic)) == _batches(rest)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("manifest_hash", "ef" * 32, "belongs to snapshot"),
        ("shuffle", False, "shuffle=False"),
        ("block_size", 8, "block_size=8"),
        ("seed", 5, "seed=5"),
        ("drop_last", True, "drop_last=True"),
        ("consumed", 101, "more than"),
        ("offset", 101, "more than"),
        ("step", -1, "negative"),
        ("version", 9, "version 9"),
    ],
)
def test_state_of_another_order_is_a_config_error_naming_the_value(
    key: str, value: object, match: str
) -> None:
    shape = _shape(100, 2, 0, 5)
    state = build_state(shape, EpochCursor())
    state[key] = value
    with pytest.raises(ConfigError, match=match):
        resume_cursor(shape, state, fixed_seed=True)

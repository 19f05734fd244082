"""Deterministic sample order: block shuffle + in-block shuffle, as pure functions.

An epoch's order is a pure function of (manifest_hash, seed, epoch). The N sample ids are
cut into blocks of ``block_size`` consecutive ids; with shuffle the blocks are sorted by a
splitmix64 key of (manifest_hash, seed, epoch, block start), and the ids inside each block
are permuted by a keyed Feistel network (cycle-walking onto the block length), so any
position maps to its id in O(1) without materialising the order.

Positions are what the coordinator leases: block k of the order covers a contiguous
position range, so a lease, its cursor and a re-queued remainder are all plain ranges.
Without shuffle, position == sample id. The embedded loader and the coordinator use the
same ``EpochOrder``, so both deliver the same order.

A rank's share of an epoch is a ``Shard``: the strided positions
``offset + rank + i * world_size`` of the order, equal in length on every rank (wrapped
to the order's start as padding, or cut with ``drop_last``). ``offset`` is how many
positions of the epoch were consumed before this world started (0 normally): resuming at
world W' from a state saved at world W is the same function with ``offset = consumed``
(``consumed_positions``), and with W' == W it is exactly the uninterrupted continuation.
Embedded loaders and the agents of the distributed mode both cut batches with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DYNAMIC",
    "MAX_BLOCK_SIZE",
    "MODES",
    "RANK_EXACT",
    "EpochOrder",
    "JobOrder",
    "Shard",
    "consumed_positions",
    "rank_positions",
    "shard_samples",
    "splitmix64",
]

#: How a distributed job splits its samples (the coordinator's ``--mode``): every trainer
#: rank gets the ``Shard`` embedded mode gives it, or trainers take leased batches as they ask.
RANK_EXACT = "rank-exact"
DYNAMIC = "dynamic"
MODES = (RANK_EXACT, DYNAMIC)

#: No sane job cuts shuffle blocks of more samples than this (flags, API and the agents'
#: check of a coordinator's registration reply share the bound).
MAX_BLOCK_SIZE = 1 << 32

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_FEISTEL_ROUNDS = 6


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int (the scalar twin of ``_splitmix64_np``)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _job_key(manifest_hash: str, seed: int, epoch: int) -> int:
    h = int(manifest_hash[:16], 16) if manifest_hash else 0
    return splitmix64(splitmix64(h ^ (seed & _MASK64)) ^ splitmix64(epoch + 0x5851F42D4C957F2D))


def _feistel_permute(idx: np.ndarray, n: int, key: int) -> np.ndarray:
    """Bijection of [0, n) applied to ``idx`` (uint64), keyed by ``key``."""
    if n <= 1:
        return idx.copy()
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = _U64((1 << half_bits) - 1)
    shift = _U64(half_bits)
    round_keys = [
        splitmix64(key ^ (r * 0xD1B54A32D192ED03 & _MASK64)) for r in range(_FEISTEL_ROUNDS)
    ]

    def rounds(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for rk in round_keys:
            left, right = right, left ^ (_splitmix64_np(right ^ _U64(rk)) & mask)
        return (left << shift) | right

    out = rounds(idx)
    bad = out >= _U64(n)
    while bad.any():  # cycle-walk back into [0, n); domain is < 4n so this ends fast
        out[bad] = rounds(out[bad])
        bad = out >= _U64(n)
    return out


@dataclass(frozen=True)
class EpochOrder:
    """The order of one epoch over ``total`` samples."""

    total: int
    block_size: int = 65536
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0
    manifest_hash: str = ""
    _blocks: np.ndarray = field(init=False, repr=False, compare=False)
    _pos_starts: np.ndarray = field(init=False, repr=False, compare=False)
    _key: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.total < 0 or self.block_size <= 0:
            raise ValueError("total must be >= 0 and block_size > 0")
        n_blocks = -(-self.total // self.block_size)
        key = _job_key(self.manifest_hash, self.seed, self.epoch)
        starts = np.arange(n_blocks, dtype=np.uint64) * _U64(self.block_size)
        if self.shuffle and n_blocks > 1:
            keys = _splitmix64_np(starts ^ _U64(key))
            blocks = np.lexsort((starts, keys)).astype(np.int64)
        else:
            blocks = np.arange(n_blocks, dtype=np.int64)
        lengths = np.minimum(self.block_size, self.total - blocks * self.block_size).astype(
            np.int64
        )
        pos_starts = np.zeros(n_blocks + 1, dtype=np.int64)
        np.cumsum(lengths, out=pos_starts[1:])
        object.__setattr__(self, "_blocks", blocks)
        object.__setattr__(self, "_pos_starts", pos_starts)
        object.__setattr__(self, "_key", key)

    def block_ranges(self) -> list[tuple[int, int]]:
        """Half-open position ranges of the blocks, in the epoch's order."""
        p = self._pos_starts.tolist()
        return list(itertools.pairwise(p))

    def ids(self, start: int, end: int) -> np.ndarray:
        """Sample ids (uint64) at positions [start, end)."""
        if not 0 <= start <= end <= self.total:
            raise ValueError(f"positions [{start}, {end}) outside [0, {self.total})")
        if not self.shuffle:
            return np.arange(start, end, dtype=np.uint64)
        out = np.empty(end - start, dtype=np.uint64)
        k = int(np.searchsorted(self._pos_starts, start, side="right")) - 1
        pos = start
        while pos < end:
            b_start_pos, b_end_pos = int(self._pos_starts[k]), int(self._pos_starts[k + 1])
            stop = min(end, b_end_pos)
            block = int(self._blocks[k])
            first_id = block * self.block_size
            n = b_end_pos - b_start_pos
            local = np.arange(pos - b_start_pos, stop - b_start_pos, dtype=np.uint64)
            perm = _feistel_permute(local, n, splitmix64(self._key ^ first_id))
            out[pos - start : stop - start] = perm + _U64(first_id)
            pos = stop
            k += 1
        return out

    def id_at(self, position: int) -> int:
        return int(self.ids(position, position + 1)[0])


@dataclass(frozen=True, kw_only=True)
class JobOrder:
    """What positions mean in a job: the inputs of each epoch's ``EpochOrder``.

    The coordinator's job spec and the agent (from ``RegisterNode``) hold the same one, so
    both turn a lease's positions into the same sample ids.
    """

    manifest_hash: str
    total_samples: int
    block_size: int = 65536
    shuffle: bool = False
    seed: int = 0

    def order(self, epoch: int) -> EpochOrder:
        """The sample order of ``epoch`` (positions -> sample ids)."""
        return EpochOrder(
            self.total_samples, self.block_size, self.shuffle, self.seed, epoch, self.manifest_hash
        )


def shard_samples(total: int, world_size: int, *, drop_last: bool = False, offset: int = 0) -> int:
    """Samples of every rank's shard of the positions ``[offset, total)``.

    ceil((total - offset) / world_size), or floor with ``drop_last``; 0 once consumed.
    """
    if world_size <= 0:
        raise ValueError(f"world_size must be > 0, got {world_size}")
    remaining = max(0, total - offset)
    return remaining // world_size if drop_last else -(-remaining // world_size)


def rank_positions(
    total: int, rank: int, world_size: int, *, drop_last: bool = False, offset: int = 0
) -> range:
    """Positions of ``rank``'s shard: strided, equal length for every rank.

    Without ``drop_last`` the order is padded by wrapping to its start so each rank gets
    ceil((total - offset) / world_size) positions; with it the tail is dropped (floor).
    Positions past ``total`` must be taken modulo ``total`` (see ``Shard.ids``).
    """
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    per_rank = shard_samples(total, world_size, drop_last=drop_last, offset=offset)
    first = offset + rank
    return range(first, first + per_rank * world_size, world_size)


def consumed_positions(
    total: int, world_size: int, *, offset: int, position: int, drop_last: bool = False
) -> int:
    """Positions of the epoch consumed by the whole world once each rank took ``position``
    samples of its shard starting at ``offset``: ``offset + position * world_size``,
    clamped to ``total`` (wrap padding consumes nothing new). A finished shard counts as
    the whole epoch, so the tail ``drop_last`` cut is not served by a resumed world.
    """
    if position >= shard_samples(total, world_size, drop_last=drop_last, offset=offset):
        return total
    return min(total, offset + position * world_size)


@dataclass(frozen=True)
class Shard:
    """One rank's batches of an epoch, from global position ``offset`` on.

    Rank-local sample ``i`` is position ``offset + rank + i * world_size`` of the epoch's
    order (modulo ``total``: the padding that keeps every rank's length equal). Batches
    are ``batch_size`` consecutive rank-local samples, the last one possibly shorter.
    """

    order: EpochOrder
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    batch_size: int = 32
    offset: int = 0

    @property
    def samples(self) -> int:
        """Samples of this rank in the epoch (equal for every rank)."""
        return shard_samples(
            self.order.total, self.world_size, drop_last=self.drop_last, offset=self.offset
        )

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)

    def batch_bounds(self, batch_index: int) -> tuple[int, int]:
        """Half-open range of rank-local sample indices in batch ``batch_index``."""
        start = batch_index * self.batch_size
        return start, min(self.samples, start + self.batch_size)

    def ids(self, start: int, end: int) -> np.ndarray:
        """Sample ids at rank-local indices [start, end)."""
        total = self.order.total
        if end <= start or total == 0:
            return np.empty(0, dtype=np.uint64)
        first = self.offset + self.rank + start * self.world_size
        last = self.offset + self.rank + (end - 1) * self.world_size  # inclusive
        if last < total:
            return self.order.ids(first, last + 1)[:: self.world_size].copy()
        positions = np.arange(first, last + 1, self.world_size, dtype=np.int64) % total
        lo, hi = int(positions.min()), int(positions.max())
        span = self.order.ids(lo, hi + 1)
        return span[positions - lo]

    def batch_ids(self, batch_index: int) -> np.ndarray:
        """Sample ids of batch ``batch_index``."""
        return self.ids(*self.batch_bounds(batch_index))

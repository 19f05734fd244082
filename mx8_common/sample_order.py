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
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MAX_BLOCK_SIZE", "EpochOrder", "JobOrder", "rank_positions", "splitmix64"]

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


def rank_positions(total: int, rank: int, world_size: int, *, drop_last: bool = False) -> range:
    """Positions of ``rank``'s shard: strided, equal length for every rank.

    Without ``drop_last`` the order is padded by wrapping to its start so each rank gets
    ceil(total / world_size) positions; with it the tail is dropped (floor). Positions
    past ``total`` must be taken modulo ``total`` (see ``shard_position``).
    """
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    per_rank = total // world_size if drop_last else -(-total // world_size)
    return range(rank, rank + per_rank * world_size, world_size)

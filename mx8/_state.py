"""Where a loader is in the job, and the ``state_dict`` both modes save and load.

An ``EpochCursor`` is the loader's place: the epoch, the segment of it this world serves
(``offset`` positions of the epoch's order were consumed before it, in ``base_step``
batches) and how many rank-local samples of that segment were consumed. With the loader's
shape it gives the rank's ``Shard`` (``mx8_common.sample_order``), so embedded and
distributed loaders cut the same batches.

The state is O(1). It holds the cursor itself (``offset``, ``base_step``, ``position``),
restored exactly by a loader of the same world size and batch size (any rank: lockstep
ranks are at the same place), and the global progress (``step``, ``consumed`` positions
of the epoch), from which a loader of another world size or batch size continues the
epoch (elastic resume: a new segment at ``offset = consumed``). For a same-size world
both are the uninterrupted continuation. States of version 1 (``position`` only, from
before segments) still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mx8_common.errors import ResumeError
from mx8_common.sample_order import JobOrder, Shard, consumed_positions

__all__ = ["STATE_VERSION", "EpochCursor", "LoaderShape", "build_state", "resume_cursor"]

STATE_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class LoaderShape:
    """What a loader reads and how it cuts it: the inputs of its ``Shard``s."""

    link: str
    job: JobOrder
    rank: int
    world_size: int
    batch_size: int
    drop_last: bool

    def shard(self, cursor: EpochCursor) -> Shard:
        return Shard(
            self.job.order(cursor.epoch),
            self.rank,
            self.world_size,
            self.drop_last,
            self.batch_size,
            offset=cursor.offset,
        )


@dataclass
class EpochCursor:
    """A loader's place in the job (see the module docstring)."""

    epoch: int = 0
    #: Positions of the epoch's order consumed before this segment (0 unless resumed).
    offset: int = 0
    #: Batches of this epoch taken before this segment.
    base_step: int = 0
    #: Rank-local samples of this segment consumed.
    position: int = 0
    #: Loaded from a state and not iterated since: ``set_epoch`` of its epoch keeps it.
    loaded: bool = False

    def restart(self, epoch: int) -> None:
        """Epoch ``epoch`` from its beginning, except right after a resume of that epoch:
        the usual ``for epoch in ...: loader.set_epoch(epoch)`` loop then resumes."""
        if self.loaded and epoch == self.epoch:
            return
        self.epoch = epoch
        self.offset = self.base_step = self.position = 0
        self.loaded = False

    def step(self, batch_size: int) -> int:
        """Batches of this epoch consumed (the resume point is a batch boundary)."""
        return self.base_step + -(-self.position // batch_size)


def build_state(shape: LoaderShape, cursor: EpochCursor) -> dict[str, Any]:
    """The ``state_dict`` of a loader of ``shape`` at ``cursor``."""
    job = shape.job
    return {
        "version": STATE_VERSION,
        "manifest_hash": job.manifest_hash,
        "epoch": cursor.epoch,
        "seed": job.seed,
        "shuffle": job.shuffle,
        "block_size": job.block_size,
        "batch_size": shape.batch_size,
        "drop_last": shape.drop_last,
        "world_size": shape.world_size,
        "rank": shape.rank,
        "step": cursor.step(shape.batch_size),
        "offset": cursor.offset,
        "base_step": cursor.base_step,
        "position": cursor.position,
        "consumed": consumed_positions(
            job.total_samples,
            shape.world_size,
            offset=cursor.offset,
            position=cursor.position,
            drop_last=shape.drop_last,
        ),
    }


#: What each entry of a ``state_dict()`` must be (bool is checked before int: it is one).
_STATE_TYPES: dict[str, type] = {
    "manifest_hash": str,
    "epoch": int,
    "seed": int,
    "shuffle": bool,
    "drop_last": bool,
    "position": int,
    "step": int,
    "consumed": int,
    "offset": int,
    "base_step": int,
    "rank": int,
    "world_size": int,
    "batch_size": int,
    "block_size": int,
}


def _check_types(state: dict[str, Any]) -> None:
    """A ``ResumeError`` naming the first entry of the wrong type: a garbage state never
    reaches the order arithmetic."""
    for key, kind in _STATE_TYPES.items():
        if key not in state:
            continue
        value = state[key]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok or (kind is int and value < 0):
            raise ResumeError(
                f"loader state {key}={value!r} is not a{' non-negative' if kind is int else ''} "
                f"{kind.__name__}; pass a state_dict() of this loader, unchanged",
                key=key,
            )


def _int(state: dict[str, Any], key: str) -> int:
    if key not in state:
        raise ResumeError(f"loader state has no {key!r}; pass a dict from state_dict()", key=key)
    return int(state[key])


def resume_cursor(
    shape: LoaderShape, state: dict[str, Any], *, fixed_seed: bool
) -> tuple[EpochCursor, int]:
    """The cursor and seed a loader of ``shape`` continues ``state`` with.

    Refuses a state of another snapshot, order (shuffle, block size; the seed too when
    ``fixed_seed``, i.e. the job owns it) or ``drop_last``. The same world size and batch
    size (any rank) restore the state's cursor; another one is an elastic resume from its
    ``consumed``. Without ``fixed_seed`` the state's seed is taken.
    """
    if not isinstance(state, dict):
        raise ResumeError(
            f"loader state is a {type(state).__name__}; pass a dict from state_dict()"
        )
    version = state.get("version")
    if version not in (1, STATE_VERSION):
        raise ResumeError(
            f"unknown loader state version {version!r}; pass a state_dict() of this mx8 "
            f"version ({STATE_VERSION}) or of version 1",
            key="version",
        )
    _check_types(state)
    job = shape.job
    if state.get("manifest_hash") != job.manifest_hash:
        raise ResumeError(
            f"this state belongs to snapshot {state.get('manifest_hash')}, but the loader reads "
            f"{job.manifest_hash}; pin the snapshot with '{shape.link}@sha256:"
            f"{state.get('manifest_hash')}' to resume it",
            key="manifest_hash",
        )
    ours: dict[str, Any] = {"shuffle": job.shuffle, "block_size": job.block_size}
    if fixed_seed:
        ours["seed"] = job.seed
    if version == STATE_VERSION:
        ours["drop_last"] = shape.drop_last
    for key, value in ours.items():
        if key in state and state[key] != value:
            raise ResumeError(
                f"state was taken with {key}={state[key]!r} but this loader has "
                f"{key}={value!r}; build the loader with the same value",
                key=key,
            )
    epoch = _int(state, "epoch")
    position = _int(state, "position")
    world, batch = _int(state, "world_size"), _int(state, "batch_size")
    if world < 1 or batch < 1:
        raise ResumeError(
            f"loader state world_size={world} / batch_size={batch} is no shape",
            key="world_size" if world < 1 else "batch_size",
        )
    # Version 1 had no segments: its position counted from the epoch's start.
    offset = _int(state, "offset") if version == STATE_VERSION else 0
    base_step = _int(state, "base_step") if version == STATE_VERSION else 0
    if version == STATE_VERSION:
        step, consumed = _int(state, "step"), _int(state, "consumed")
    else:
        step = -(-position // batch)
        consumed = consumed_positions(
            job.total_samples, world, offset=0, position=position, drop_last=shape.drop_last
        )
    for key, value in (("offset", offset), ("consumed", consumed)):
        if value > job.total_samples:
            raise ResumeError(
                f"loader state {key}={value} is more than the snapshot's "
                f"{job.total_samples} samples",
                key=key,
            )
    if (world, batch) == (shape.world_size, shape.batch_size):
        cursor = EpochCursor(
            epoch=epoch, offset=offset, base_step=base_step, position=position, loaded=True
        )
        samples = shape.shard(cursor).samples
        if position > samples:
            raise ResumeError(
                f"state position {position} is outside this rank's epoch [0, {samples}]; the "
                "state is corrupt or from another dataset: pass a state_dict() of this loader",
                key="position",
            )
    else:
        cursor = EpochCursor(epoch=epoch, offset=consumed, base_step=step, loaded=True)
    return cursor, _int(state, "seed") if "seed" in state else job.seed

"""Rank-exact mode: the trainer ranks of a job, their contract and the worlds they form.

In rank-exact mode (``--mode rank-exact``, the default) every trainer rank gets exactly
the batches embedded ``mx8.load`` would give it; those are a pure function of the job's
order and the rank's (rank, world size, batch size, drop_last, start point), so the
agents cut them on their own. The coordinator keeps the job one contract:

* a rank's ``seed``/``shuffle``, when the trainer set them, must be the job's;
* the ranks of one world must agree on world size, batch size and ``drop_last``, and on
  where they start (epoch, step, consumed positions: the same checkpoint, or a fresh
  epoch): a mismatch is a ``ContractError`` naming both values, for every rank of that
  world (they would otherwise wait for a world that cannot form);
* a world forms when all its ranks registered; until then agents re-register and tell
  their trainers who is missing. Members not heard from for ``stale_ms`` are dropped
  (a trainer that died while waiting).

A trainer is known by its loader's ``instance_id``: the same id again after its world
formed (or once its progress was reported, or its agent forwarded it with the world it
was served in, which covers a restart of this coordinator) is that trainer coming back
and is served at once, at the position it presents: the trainer, not a log here, knows
what it consumed. What agents say of worlds this coordinator did not see form is
checked and learnt by ``KnownWorlds`` (rebuilding after a lost coordinator). New ids
form a new world (a restarted job, possibly at another world size). Agents report each
rank's acknowledged progress; the job is drained once every rank of a world finished
the last epoch. No gRPC and no I/O here: ``Job`` owns one, the servicer converts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mx8_common.errors import ContractError, RequestError
from mx8_common.obs.events import emit
from mx8_coordinator.state.known_worlds import Claim, KnownWorlds, WorldContract
from mx8_coordinator.state.node_registry import monotonic_ms

__all__ = [
    "RankJoin",
    "RankReport",
    "RankStart",
    "WorldAnswer",
    "WorldRegistry",
]

_COMPONENT = "coordinator"
#: Finished-world ids remembered for ``drained`` and instance ids of formed worlds kept
#: for rejoining trainers: a few per restart, so a bound only matters for odd jobs.
_MAX_INSTANCES = 65536


@dataclass(frozen=True, kw_only=True)
class RankStart:
    """Where a rank starts: step ``step`` of ``epoch``, ``consumed`` positions of it done."""

    epoch: int = 0
    step: int = 0
    consumed: int = 0
    resumed: bool = False

    def describe(self) -> str:
        return f"epoch {self.epoch} step {self.step} (consumed {self.consumed})"


@dataclass(frozen=True, kw_only=True)
class RankJoin:
    """One trainer rank asking to join its world (an agent forwards it)."""

    node_id: str
    instance_id: str
    rank: int
    world_size: int
    batch_size: int
    drop_last: bool = False
    seed: int | None = None
    shuffle: bool | None = None
    start: RankStart = field(default_factory=RankStart)
    #: The world its agent served it in before (a rejoin after this coordinator lost
    #: its state); empty for a trainer joining afresh.
    world_id: str = ""


@dataclass(frozen=True)
class WorldAnswer:
    """The world of a join: complete (serve the rank) or still missing ranks."""

    ready: bool
    world_id: str
    world_size: int
    registered: tuple[int, ...]
    missing: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class RankReport:
    """A rank's acknowledged progress, as its agent reports it."""

    rank: int
    instance_id: str
    world_id: str
    world_size: int
    epoch: int
    step: int
    finished: bool = False
    node_id: str = ""
    #: The rank's world contract (batch_size 0: an agent that does not send it).
    batch_size: int = 0
    drop_last: bool = False

    def claim(self) -> Claim:
        return Claim(
            world_id=self.world_id,
            rank=self.rank,
            instance_id=self.instance_id,
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            epoch=self.epoch,
            step=self.step,
            node_id=self.node_id,
        )

    def as_join(self) -> RankJoin | None:
        """The join this rank must have made (to check a rejoin), if the contract is known."""
        if not self.batch_size:
            return None
        return RankJoin(
            node_id=self.node_id,
            instance_id=self.instance_id,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            world_id=self.world_id,
        )


@dataclass
class _World:
    world_id: str
    world_size: int
    #: rank -> (its join, when it was last heard from)
    members: dict[int, tuple[RankJoin, int]] = field(default_factory=dict)


class WorldRegistry:
    """The rank contract and world formation of one job (see the module docstring)."""

    def __init__(
        self,
        *,
        job_id: str,
        seed: int,
        shuffle: bool,
        epochs: int | None = None,
        total_samples: int | None = None,
        stale_ms: int = 10_000,
        clock: Callable[[], int] = monotonic_ms,
        new_world_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
    ) -> None:
        self.job_id = job_id
        self.seed = seed
        self.shuffle = shuffle
        self._stale_ms = stale_ms
        self._clock = clock
        self._new_world_id = new_world_id
        self._forming: _World | None = None
        #: instance_id -> (world_id, its join) for members of formed worlds (join None:
        #: learnt from a progress report, e.g. after this coordinator restarted).
        self._formed: dict[str, tuple[str, RankJoin | None]] = {}
        #: instance_id -> the error that broke its world (told on its next join).
        self._refused: dict[str, ContractError] = {}
        #: (world_id, rank) -> latest report; finished ranks per world.
        self._progress: dict[tuple[str, int], RankReport] = {}
        self._finished: dict[str, set[int]] = {}
        self._latest_world = ""
        self.worlds_formed = 0
        self._drained = False
        self.worlds = KnownWorlds(
            job_id=job_id, epochs=epochs, total_samples=total_samples, clock=clock
        )

    # -- joining ------------------------------------------------------------------------

    def join(self, j: RankJoin) -> WorldAnswer:
        """Register ``j``; raises ``ContractError`` when it breaks the job's contract."""
        self._check_request(j)
        self._check_job_order(j)
        refused = self._refused.get(j.instance_id)
        if refused is not None:
            raise refused
        known = self._formed.get(j.instance_id)
        if known is not None:
            world_id, first = known
            if first is not None:
                self._check_same_trainer(first, j)
            return WorldAnswer(True, world_id, j.world_size, tuple(range(j.world_size)), ())
        if j.world_id:
            return self._rejoin(j)
        now = self._clock()
        world = self._forming
        if world is not None:
            self._drop_stale(world, now, keep=j.instance_id)
            old = world.members.get(j.rank)
            if old is not None and old[0].instance_id != j.instance_id:
                del world.members[j.rank]  # a restarted trainer of this rank replaces it
        if world is None or not world.members:
            world = self._forming = _World(self._new_world_id(), j.world_size)
        else:
            self._check_same_world(world, j)
        world.members[j.rank] = (j, now)
        if len(world.members) < world.world_size:
            registered = tuple(sorted(world.members))
            missing = tuple(r for r in range(world.world_size) if r not in world.members)
            return WorldAnswer(False, world.world_id, world.world_size, registered, missing)
        self._check_starts(world)
        return self._form(world)

    def _rejoin(self, j: RankJoin) -> WorldAnswer:
        """A trainer of a world this coordinator did not see form (it lost its state): its
        agent says which; checked against what other agents said, then served at once."""
        self.worlds.claim(
            [
                Claim(
                    world_id=j.world_id,
                    rank=j.rank,
                    instance_id=j.instance_id,
                    world_size=j.world_size,
                    batch_size=j.batch_size,
                    drop_last=j.drop_last,
                    epoch=j.start.epoch,
                    step=j.start.step,
                    node_id=j.node_id,
                )
            ]
        )
        self._remember(j.instance_id, j.world_id, j)
        return WorldAnswer(True, j.world_id, j.world_size, tuple(range(j.world_size)), ())

    def _remember(self, instance_id: str, world_id: str, join: RankJoin | None) -> None:
        self._formed[instance_id] = (world_id, join)
        while len(self._formed) > _MAX_INSTANCES:
            del self._formed[next(iter(self._formed))]

    def restore_worlds(self, worlds: list[dict[str, Any]]) -> None:
        """Worlds read back from the state dir: their trainers rejoin at once."""
        self.worlds.restore(worlds)
        for w in worlds:
            for instance in dict(w["holders"]).values():
                self._formed.setdefault(str(instance), (str(w["world_id"]), None))

    def _check_request(self, j: RankJoin) -> None:
        if not j.instance_id:
            raise RequestError("instance_id is empty; every trainer loader needs one", field="id")
        if j.world_size < 1 or not 0 <= j.rank < j.world_size:
            raise ContractError(
                f"rank {j.rank} is not in a world of {j.world_size} ranks; set RANK and "
                "WORLD_SIZE (torchrun does) or rank= and world_size= with 0 <= rank < world_size",
                field="rank",
            )
        if j.batch_size < 1:
            raise ContractError(
                f"batch_size is {j.batch_size}; it must be at least 1", field="batch_size"
            )

    def _check_job_order(self, j: RankJoin) -> None:
        if j.seed is not None and j.seed != self.seed:
            raise ContractError(
                f"seed {j.seed} of rank {j.rank} differs from the job's --seed {self.seed}; "
                f"pass seed={self.seed} or leave seed out to take the job's",
                field="seed",
            )
        if j.shuffle is not None and j.shuffle != self.shuffle:
            flag = "--shuffle" if self.shuffle else "no --shuffle"
            raise ContractError(
                f"shuffle={j.shuffle} of rank {j.rank} differs from the job's shuffle="
                f"{self.shuffle} ({flag}); pass shuffle={self.shuffle} or leave it out",
                field="shuffle",
            )

    def _check_same_trainer(self, first: RankJoin, j: RankJoin) -> None:
        for name in ("rank", "world_size", "batch_size", "drop_last"):
            was, now = getattr(first, name), getattr(j, name)
            if was != now:
                raise ContractError(
                    f"trainer {j.instance_id} rejoined with {name} {now}, but joined its world "
                    f"with {was}; a loader keeps its {name} for life",
                    field=name,
                )

    def _drop_stale(self, world: _World, now: int, *, keep: str) -> None:
        for rank, (member, seen) in list(world.members.items()):
            if member.instance_id != keep and now - seen > self._stale_ms:
                del world.members[rank]
                emit(
                    _COMPONENT,
                    "rank_join_expired",
                    job_id=self.job_id,
                    rank=rank,
                    node_id=member.node_id,
                    silent_ms=now - seen,
                )

    def _refuse(self, world: _World, j: RankJoin, error: ContractError) -> ContractError:
        """``error`` breaks ``world``: every member hears it on its next join."""
        for member, _seen in world.members.values():
            self._refused[member.instance_id] = error
        self._refused[j.instance_id] = error
        while len(self._refused) > _MAX_INSTANCES:
            del self._refused[next(iter(self._refused))]
        self._forming = None
        emit(_COMPONENT, error.event, job_id=self.job_id, field=error.field, error=str(error))
        return error

    def _check_same_world(self, world: _World, j: RankJoin) -> None:
        others = [r for r in world.members if r != j.rank]
        if not others:
            return
        # The members agree with each other: comparing with one of them is enough.
        rank = min(others)
        member = world.members[rank][0]
        for name in ("world_size", "batch_size", "drop_last"):
            theirs, ours = getattr(member, name), getattr(j, name)
            if theirs != ours:
                raise self._refuse(
                    world,
                    j,
                    ContractError(
                        f"{name} {ours} of rank {j.rank} differs from {theirs} of rank "
                        f"{rank}; every rank of a job must use the same {name}",
                        field=name,
                    ),
                )

    def _check_starts(self, world: _World) -> None:
        starts = {
            r: (j.start.epoch, j.start.step, j.start.consumed)
            for r, (j, _) in world.members.items()
        }
        if len(set(starts.values())) == 1:
            return
        groups: dict[tuple[int, int, int], list[int]] = {}
        for rank in sorted(starts):
            groups.setdefault(starts[rank], []).append(rank)
        parts = [
            f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))} at epoch {e} "
            f"step {s} (consumed {c})"
            for (e, s, c), ranks in sorted(groups.items(), key=lambda kv: kv[1][0])
        ]
        last = world.members[max(world.members)][0]
        raise self._refuse(
            world,
            last,
            ContractError(
                f"the ranks of job {self.job_id!r} start from different points: "
                f"{'; '.join(parts)}; load the same checkpoint's state on every rank "
                "(or none)",
                field="start",
            ),
        )

    def _form(self, world: _World) -> WorldAnswer:
        for member, _seen in world.members.values():
            self._remember(member.instance_id, world.world_id, member)
        first = next(iter(world.members.values()))[0]
        self.worlds.add_formed(
            WorldContract(
                world_id=world.world_id,
                world_size=world.world_size,
                batch_size=first.batch_size,
                drop_last=first.drop_last,
            ),
            {rank: m.instance_id for rank, (m, _seen) in world.members.items()},
        )
        self._forming = None
        self.worlds_formed += 1
        start = next(iter(world.members.values()))[0].start
        emit(
            _COMPONENT,
            "world_formed",
            job_id=self.job_id,
            world_id=world.world_id,
            world_size=world.world_size,
            batch_size=next(iter(world.members.values()))[0].batch_size,
            epoch=start.epoch,
            step=start.step,
            consumed=start.consumed,
            resumed=start.resumed,
        )
        ranks = tuple(range(world.world_size))
        return WorldAnswer(True, world.world_id, world.world_size, ranks, ())

    # -- progress -----------------------------------------------------------------------

    def report(self, reports: Iterable[RankReport]) -> bool:
        """Take agents' progress reports; True once the job is drained.

        The whole batch is checked first (``RankReportError``: nothing of it is taken).
        """
        reports = list(reports)
        self.worlds.claim([r.claim() for r in reports])
        for r in reports:
            self._progress[(r.world_id, r.rank)] = r
            self._latest_world = r.world_id
            # A trainer streaming in a world this coordinator did not see form (it
            # restarted) is known from here on: its agent's restart rejoins at once.
            if r.instance_id not in self._formed:
                self._remember(r.instance_id, r.world_id, r.as_join())
            if r.finished:
                done = self._finished.setdefault(r.world_id, set())
                done.add(r.rank)
                if not self._drained and len(done) >= r.world_size:
                    self._drained = True
                    emit(
                        _COMPONENT,
                        "job_drained",
                        job_id=self.job_id,
                        world_id=r.world_id,
                        world_size=r.world_size,
                        epoch=r.epoch,
                    )
        while len(self._progress) > _MAX_INSTANCES:
            del self._progress[next(iter(self._progress))]
        return self._drained

    @property
    def drained(self) -> bool:
        return self._drained

    def waiting(self) -> WorldAnswer | None:
        """The world being formed, if any (for the status page)."""
        world = self._forming
        if world is None:
            return None
        registered = tuple(sorted(world.members))
        missing = tuple(r for r in range(world.world_size) if r not in world.members)
        return WorldAnswer(False, world.world_id, world.world_size, registered, missing)

    def progress(self) -> list[RankReport]:
        """The latest report of each rank of the most recently reported world."""
        latest = self._latest_world
        return sorted(
            (replace(r) for (w, _), r in self._progress.items() if w == latest),
            key=lambda r: r.rank,
        )

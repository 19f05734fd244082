"""Rank-exact mode: the worlds a coordinator knows, and rebuilding them from the agents.

A world is its contract (world size, batch size, ``drop_last``) and which trainer
instance holds each of its ranks. The coordinator knows a world because it formed it,
because it read it back from its state dir, or because agents told it: a coordinator
that lost its state (fresh disk, another host) learns each world from what the agents
report when they re-register, report progress or forward a rejoining trainer, rank by
rank, with each rank's position. Positions need no log: a rank's batches are a pure
function of the job's order and its contract, so an agent's report of where a rank is
is all there is to know.

Nothing an agent says is taken on trust. A claim is refused (``RankReportError``, event
``rank_report_refused``, one line naming both values) when:

* its contract differs from the one known for that world (another agent said otherwise);
* its rank is held by another trainer instance, or its instance already holds another
  rank (a rank is claimed twice);
* its position is outside the job: rank outside the world, epoch past the job's end, or
  more steps in an epoch than it has samples (a step takes at least one).

A batch of claims (one request) is checked whole before any of it is taken. A world
learnt from agents is incomplete until every rank was claimed (``world_rebuilt``); until
then nothing depends on it beyond answering its own trainers, which are served at the
position they present. No gRPC and no I/O: ``WorldRegistry`` owns one, ``Job`` saves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mx8_common.errors import RankReportError
from mx8_common.obs.events import emit
from mx8_coordinator.state.node_registry import monotonic_ms

__all__ = ["Claim", "KnownWorld", "KnownWorlds", "WorldContract"]

_COMPONENT = "coordinator"
#: Worlds remembered (each restart from a checkpoint forms one): old ones are dropped.
_MAX_WORLDS = 64


@dataclass(frozen=True, kw_only=True)
class WorldContract:
    """What every rank of one world agrees on (``batch_size`` 0: not told yet)."""

    world_id: str
    world_size: int
    batch_size: int = 0
    drop_last: bool = False


@dataclass(frozen=True, kw_only=True)
class Claim:
    """An agent's word on one trainer rank: its world, contract and acknowledged position."""

    world_id: str
    rank: int
    instance_id: str
    world_size: int
    batch_size: int = 0
    drop_last: bool = False
    epoch: int = 0
    step: int = 0
    node_id: str = ""

    @property
    def contract(self) -> WorldContract:
        return WorldContract(
            world_id=self.world_id,
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
        )


@dataclass
class KnownWorld:
    """One world: its contract, who holds each rank, and whether agents rebuilt it."""

    contract: WorldContract
    #: rank -> instance id holding it
    holders: dict[int, str] = field(default_factory=dict)
    rebuilt: bool = False
    started_ms: int = 0

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(r for r in range(self.contract.world_size) if r not in self.holders)

    @property
    def complete(self) -> bool:
        return not self.missing


class KnownWorlds:
    """The known worlds of one job and the rules for learning them (module docstring)."""

    def __init__(
        self,
        *,
        job_id: str,
        epochs: int | None = None,
        total_samples: int | None = None,
        clock: Callable[[], int] = monotonic_ms,
    ) -> None:
        self.job_id = job_id
        self._epochs = epochs
        self._total = total_samples
        self._clock = clock
        self._worlds: dict[str, KnownWorld] = {}
        #: instance id -> (world id, rank)
        self._instances: dict[str, tuple[str, int]] = {}
        #: Bumped on every change, so the owner knows when to save.
        self.version = 0

    # -- views --------------------------------------------------------------------------

    def get(self, world_id: str) -> KnownWorld | None:
        return self._worlds.get(world_id)

    def holder_of(self, instance_id: str) -> tuple[str, int] | None:
        """``(world id, rank)`` of a known trainer instance."""
        return self._instances.get(instance_id)

    def incomplete(self) -> list[KnownWorld]:
        """Worlds learnt from agents that still miss ranks (the status page, tests)."""
        return [w for w in self._worlds.values() if not w.complete]

    # -- learning -----------------------------------------------------------------------

    def add_formed(self, contract: WorldContract, holders: dict[int, str]) -> None:
        """A world this coordinator formed: complete, its contract from the joins."""
        self._worlds[contract.world_id] = KnownWorld(contract, dict(holders))
        for rank, instance in holders.items():
            self._instances[instance] = (contract.world_id, rank)
        self._trim()
        self.version += 1

    def claim(self, claims: Sequence[Claim]) -> None:
        """Check every claim (``RankReportError`` on the first bad one), then take them."""
        self.check(claims)
        for c in claims:
            self._take(c)

    def check(self, claims: Sequence[Claim]) -> None:
        """Raise ``RankReportError`` if any claim breaks a rule; changes nothing."""
        contracts: dict[str, WorldContract] = {}
        holders: dict[tuple[str, int], str] = {}
        instances: dict[str, tuple[str, int]] = {}
        for c in claims:
            self._check_position(c)
            world = self._worlds.get(c.world_id)
            known = contracts.get(c.world_id) or (world.contract if world else None)
            if known is not None:
                _check_contract(known, c)
            if known is None or known.batch_size == 0:
                contracts[c.world_id] = c.contract
            holder = holders.get((c.world_id, c.rank))
            if holder is None and world is not None:
                holder = world.holders.get(c.rank)
            if holder is not None and holder != c.instance_id:
                raise RankReportError(
                    f"rank {c.rank} of world {c.world_id} is claimed by trainer "
                    f"{c.instance_id} (node {c.node_id or '?'}) but held by trainer {holder}; "
                    "two trainers cannot hold one rank: stop the stray trainer or agent, "
                    "or restart the job's trainers from a checkpoint",
                    field="rank",
                )
            held = instances.get(c.instance_id) or self._instances.get(c.instance_id)
            if held is not None and held != (c.world_id, c.rank):
                raise RankReportError(
                    f"trainer {c.instance_id} is reported as rank {c.rank} of world "
                    f"{c.world_id} but holds rank {held[1]} of world {held[0]}; a trainer "
                    "keeps its rank and world for life",
                    field="rank",
                )
            holders[(c.world_id, c.rank)] = c.instance_id
            instances[c.instance_id] = (c.world_id, c.rank)

    def _check_position(self, c: Claim) -> None:
        if not c.instance_id or not c.world_id:
            raise RankReportError(
                f"a report of rank {c.rank} names no trainer instance or world; the agent "
                "must send both (upgrade it to the coordinator's version)",
                field="instance_id",
            )
        if c.world_size < 1 or not 0 <= c.rank < c.world_size:
            raise RankReportError(
                f"rank {c.rank} of world {c.world_id} is not in a world of {c.world_size} "
                "ranks; the agent's report is corrupt",
                field="rank",
            )
        if self._epochs is not None and c.epoch > self._epochs:
            raise RankReportError(
                f"rank {c.rank} of world {c.world_id} is reported at epoch {c.epoch}, past "
                f"this job's {self._epochs} epochs; the agent serves another job (check "
                "--epochs and --job-id of both coordinators)",
                field="epoch",
            )
        if self._total is not None:
            # A step takes at least one sample of the epoch, also after resumes that kept
            # a checkpoint's step count at another batch size (doubled: their rounding).
            most = 2 * self._total + 2
            if c.step > most:
                raise RankReportError(
                    f"rank {c.rank} of world {c.world_id} is reported at step {c.step} of "
                    f"epoch {c.epoch}, but an epoch of {self._total} samples has at most "
                    f"{most} steps; the agent serves another snapshot",
                    field="step",
                )

    def _take(self, c: Claim) -> None:
        world = self._worlds.get(c.world_id)
        if world is None:
            world = self._worlds[c.world_id] = KnownWorld(
                c.contract, rebuilt=True, started_ms=self._clock()
            )
            self._trim()
            emit(
                _COMPONENT,
                "world_rebuild_started",
                job_id=self.job_id,
                world_id=c.world_id,
                world_size=c.world_size,
                batch_size=c.batch_size,
                drop_last=c.drop_last,
            )
            self.version += 1
        elif world.contract.batch_size == 0 and c.batch_size > 0:
            world.contract = c.contract
            self.version += 1
        if c.rank in world.holders:
            return
        world.holders[c.rank] = c.instance_id
        self._instances[c.instance_id] = (c.world_id, c.rank)
        self.version += 1
        if not world.rebuilt:
            return
        emit(
            _COMPONENT,
            "rank_rejoined",
            job_id=self.job_id,
            world_id=c.world_id,
            rank=c.rank,
            node_id=c.node_id,
            epoch=c.epoch,
            step=c.step,
            missing=list(world.missing),
        )
        if world.complete:
            emit(
                _COMPONENT,
                "world_rebuilt",
                job_id=self.job_id,
                world_id=c.world_id,
                world_size=world.contract.world_size,
                batch_size=world.contract.batch_size,
                took_ms=self._clock() - world.started_ms,
            )

    def _trim(self) -> None:
        while len(self._worlds) > _MAX_WORLDS:
            old_id = next(iter(self._worlds))
            old = self._worlds.pop(old_id)
            for instance in old.holders.values():
                if self._instances.get(instance, ("",))[0] == old_id:
                    del self._instances[instance]

    # -- saving -------------------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """The worlds as plain data (``world_file`` writes it to the state dir)."""
        return [
            {
                "world_id": w.contract.world_id,
                "world_size": w.contract.world_size,
                "batch_size": w.contract.batch_size,
                "drop_last": w.contract.drop_last,
                "holders": {str(r): i for r, i in sorted(w.holders.items())},
            }
            for w in self._worlds.values()
        ]

    def restore(self, worlds: Iterable[dict[str, Any]]) -> None:
        """Take back what ``to_json`` gave (a restart with the state dir)."""
        for w in worlds:
            contract = WorldContract(
                world_id=str(w["world_id"]),
                world_size=int(w["world_size"]),
                batch_size=int(w["batch_size"]),
                drop_last=bool(w["drop_last"]),
            )
            holders = {int(r): str(i) for r, i in dict(w["holders"]).items()}
            self._worlds[contract.world_id] = KnownWorld(contract, holders)
            for rank, instance in holders.items():
                self._instances[instance] = (contract.world_id, rank)
        self._trim()


def _check_contract(known: WorldContract, c: Claim) -> None:
    pairs = [("world_size", known.world_size, c.world_size)]
    if known.batch_size and c.batch_size:
        pairs += [
            ("batch_size", known.batch_size, c.batch_size),
            ("drop_last", known.drop_last, c.drop_last),
        ]
    for name, was, now in pairs:
        if was != now:
            raise RankReportError(
                f"rank {c.rank} of world {c.world_id} is reported with {name} {now} (node "
                f"{c.node_id or '?'}), but that world runs with {name} {was}; the agents "
                "disagree about one world: restart the stray agent or the job's trainers",
                field=name,
            )

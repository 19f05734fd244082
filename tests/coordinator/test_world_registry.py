"""Rank-exact mode's contract and world formation, driven directly (no sockets)."""

from __future__ import annotations

import itertools

import pytest

from mx8_common.errors import ContractError, RequestError
from mx8_coordinator.state.ranks import RankJoin, RankReport, RankStart, WorldRegistry


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def registry(clock: Clock | None = None, **kw: object) -> WorldRegistry:
    ids = itertools.count(1)
    return WorldRegistry(
        job_id="job",
        seed=1,
        shuffle=True,
        stale_ms=5_000,
        clock=clock or Clock(),
        new_world_id=lambda: f"w{next(ids)}",
        **kw,  # type: ignore[arg-type]
    )


def join(rank: int, world: int = 4, instance: str | None = None, **kw: object) -> RankJoin:
    values: dict[str, object] = {
        "node_id": f"node-{rank // 2}",
        "instance_id": instance or f"i{rank}",
        "rank": rank,
        "world_size": world,
        "batch_size": 8,
    }
    values.update(kw)
    return RankJoin(**values)  # type: ignore[arg-type]


def test_world_registry_forms_when_every_rank_joined_and_names_the_missing_ones() -> None:
    reg = registry()
    first = reg.join(join(2))
    assert not first.ready and first.registered == (2,) and first.missing == (0, 1, 3)
    assert not reg.join(join(0)).ready
    assert reg.join(join(2)).missing == (1, 3)  # joining again only refreshes
    assert not reg.join(join(1)).ready
    done = reg.join(join(3))
    assert done.ready and done.world_id == "w1" and done.missing == ()
    assert reg.worlds_formed == 1 and reg.waiting() is None


def test_world_registry_seed_other_than_the_jobs_is_refused_naming_both() -> None:
    reg = registry()
    with pytest.raises(ContractError, match=r"seed 7 of rank 0 differs from the job's --seed 1"):
        reg.join(join(0, seed=7))
    with pytest.raises(ContractError, match=r"shuffle=False of rank 1 differs .* shuffle=True"):
        reg.join(join(1, shuffle=False))
    # The job's own values, or none, are fine.
    assert not reg.join(join(0, seed=1, shuffle=True)).ready


def test_world_registry_batch_size_mismatch_fails_every_rank_of_that_world() -> None:
    reg = registry()
    reg.join(join(0, world=2, batch_size=64))
    with pytest.raises(ContractError) as err:
        reg.join(join(1, world=2, batch_size=32))
    assert str(err.value).startswith("batch_size 32 of rank 1 differs from 64 of rank 0")
    assert err.value.field == "batch_size"
    # The waiting rank hears the same line instead of waiting for a world that cannot form.
    with pytest.raises(ContractError, match="batch_size 32 of rank 1 differs from 64"):
        reg.join(join(0, world=2, batch_size=64))
    # A restarted job (new loader instances) starts over.
    assert not reg.join(join(0, world=2, instance="n0")).ready
    assert reg.join(join(1, world=2, instance="n1")).ready


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [("world_size", 2, "world_size 2 of rank 1 differs from 4"), ("drop_last", True, "drop_last")],
)
def test_world_registry_other_world_settings_are_refused(
    field: str, value: object, text: str
) -> None:
    reg = registry()
    reg.join(join(0))
    with pytest.raises(ContractError, match=text):
        reg.join(join(1, **{field: value}))


def test_world_registry_ranks_at_different_steps_are_named_with_their_steps() -> None:
    reg = registry()
    at = {0: 5, 1: 5, 2: 7, 3: 5}
    for rank in range(3):
        reg.join(join(rank, start=RankStart(epoch=1, step=at[rank], consumed=at[rank] * 32)))
    with pytest.raises(ContractError) as err:
        reg.join(join(3, start=RankStart(epoch=1, step=5, consumed=160)))
    message = str(err.value)
    assert "ranks 0,1,3 at epoch 1 step 5 (consumed 160)" in message
    assert "rank 2 at epoch 1 step 7 (consumed 224)" in message
    assert err.value.field == "start"
    with pytest.raises(ContractError, match="different points"):
        reg.join(join(0, start=RankStart(epoch=1, step=5, consumed=160)))


def test_world_registry_same_instance_rejoins_a_formed_world_at_once_at_any_position() -> None:
    reg = registry()
    for rank in range(4):
        reg.join(join(rank))
    # Its agent restarted mid-epoch: the trainer presents where it is.
    again = reg.join(join(2, start=RankStart(epoch=1, step=40, consumed=999)))
    assert again.ready and again.world_id == "w1"
    with pytest.raises(ContractError, match="rejoined with batch_size 16"):
        reg.join(join(2, batch_size=16))


def test_world_registry_new_instances_form_a_new_world_elastically() -> None:
    reg = registry()
    for rank in range(4):
        reg.join(join(rank))
    # The job restarted at 2 ranks from a checkpoint: it waits for both, then forms.
    start = RankStart(epoch=0, step=3, consumed=96, resumed=True)
    waiting = reg.join(join(0, world=2, instance="b0", start=start))
    assert not waiting.ready and waiting.missing == (1,)
    formed = reg.join(join(1, world=2, instance="b1", start=start))
    assert formed.ready and formed.world_id == "w2" and formed.world_size == 2
    # The old world's trainers are still known (an agent restart of theirs is not refused).
    assert reg.join(join(3)).world_id == "w1"


def test_world_registry_drops_members_silent_for_the_stale_time() -> None:
    clock = Clock()
    reg = registry(clock)
    reg.join(join(0, world=2, batch_size=64))
    clock.ms = 6_000
    # Rank 0's trainer died while waiting; a new job with another batch size may form.
    assert not reg.join(join(1, world=2, instance="x1", batch_size=32)).ready
    assert reg.waiting() is not None and reg.waiting().registered == (1,)  # type: ignore[union-attr]


def test_world_registry_restarted_rank_replaces_its_waiting_entry() -> None:
    reg = registry()
    reg.join(join(0, world=2))
    answer = reg.join(join(0, world=2, instance="again"))
    assert answer.registered == (0,)
    assert reg.join(join(1, world=2)).ready


def test_world_registry_rejects_impossible_ranks_and_empty_ids() -> None:
    reg = registry()
    with pytest.raises(ContractError, match="rank 4 is not in a world of 4"):
        reg.join(join(4))
    with pytest.raises(ContractError, match="batch_size is 0"):
        reg.join(join(0, batch_size=0))
    with pytest.raises(RequestError):
        reg.join(join(0, instance_id=""))


def _report(rank: int, *, finished: bool, world: str = "w1", size: int = 2) -> RankReport:
    return RankReport(
        rank=rank,
        instance_id=f"i{rank}" if world == "w1" else f"{world}-i{rank}",
        world_id=world,
        world_size=size,
        epoch=1,
        step=9,
        finished=finished,
    )


def test_world_registry_drained_once_every_rank_of_a_world_finished() -> None:
    reg = registry()
    assert not reg.report([_report(0, finished=True), _report(1, finished=False)])
    assert not reg.drained
    assert not reg.report([_report(1, finished=True, world="w0")])  # another world's rank
    assert reg.report([_report(1, finished=True)])
    assert reg.drained
    assert [r.rank for r in reg.progress()] == [0, 1]


def test_world_registry_after_a_restart_knows_trainers_from_their_reports() -> None:
    reg = registry()  # a coordinator that restarted: it never saw the world form
    reg.report([_report(0, finished=False), _report(1, finished=False)])
    answer = reg.join(join(1, world=2, start=RankStart(epoch=1, step=9, consumed=300)))
    assert answer.ready and answer.world_id == "w1"

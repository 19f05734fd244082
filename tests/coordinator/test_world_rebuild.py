"""Rank-exact mode: a coordinator that lost its state rebuilds the worlds from what agents
report (``KnownWorlds`` through ``WorldRegistry`` and ``Job``), driven directly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.logs import Events

from mx8_common.errors import ContractError, LeaseLogError, RankReportError
from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.ranks import RankJoin, RankReport, RankStart, WorldRegistry
from mx8_coordinator.state.world_file import WorldFile

JOB = "job-r"
TOTAL = 200
EPOCHS = 2


def registry() -> WorldRegistry:
    return WorldRegistry(job_id=JOB, seed=1, shuffle=True, epochs=EPOCHS, total_samples=TOTAL)


def rep(rank: int, *, node: str = "", world: str = "w", size: int = 4, **kw: object) -> RankReport:
    values: dict[str, object] = {
        "rank": rank,
        "instance_id": f"{world}-t{rank}",
        "world_id": world,
        "world_size": size,
        "epoch": 0,
        "step": 3,
        "node_id": node or f"host-{'ab'[rank // 2 % 2]}",
        "batch_size": 8,
    }
    values.update(kw)
    return RankReport(**values)  # type: ignore[arg-type]


def test_rebuild_partial_rejoin_waits_for_every_rank_then_world_rebuilt(logs: Events) -> None:
    reg = registry()
    assert not reg.report([rep(0), rep(1)])  # host-a is back, host-b not yet
    (waiting,) = reg.worlds.incomplete()
    assert waiting.contract.world_id == "w" and waiting.missing == (2, 3)
    assert [e["rank"] for e in logs.named("rank_rejoined")] == [0, 1]
    assert logs.named("rank_rejoined")[-1]["missing"] == [2, 3]
    assert logs.named("world_rebuild_started")[0]["world_size"] == 4
    assert not logs.named("world_rebuilt")
    reg.report([rep(2), rep(3)])
    assert reg.worlds.incomplete() == []
    (rebuilt,) = logs.named("world_rebuilt")
    assert rebuilt["world_id"] == "w" and rebuilt["batch_size"] == 8
    # Reports again change nothing; the job drains only once every rank finished.
    reg.report([rep(0), rep(1)])
    assert len(logs.named("rank_rejoined")) == 4
    assert not reg.report([rep(r, epoch=1, step=7, finished=True) for r in range(3)])
    assert reg.report([rep(3, epoch=1, step=7, finished=True)])


def test_rebuild_other_batch_size_for_a_known_world_is_refused_and_nothing_taken() -> None:
    reg = registry()
    reg.report([rep(0), rep(1)])
    with pytest.raises(RankReportError, match=r"batch_size 4 .* runs with batch_size 8") as err:
        reg.report([rep(2, batch_size=8), rep(3, batch_size=4)])
    assert err.value.field == "batch_size" and err.value.event == "rank_report_refused"
    assert reg.worlds.incomplete()[0].missing == (2, 3)  # rank 2's good report not taken
    with pytest.raises(RankReportError, match="world_size 2"):
        reg.report([rep(1, size=2)])
    with pytest.raises(RankReportError, match="drop_last True"):
        reg.report([rep(2, drop_last=True)])


def test_rebuild_conflicting_contracts_inside_one_report_are_refused() -> None:
    with pytest.raises(RankReportError, match="batch_size 16"):
        registry().report([rep(0), rep(1, batch_size=16)])


def test_rebuild_rank_claimed_twice_is_refused_naming_both_trainers() -> None:
    reg = registry()
    reg.report([rep(0), rep(1)])
    with pytest.raises(RankReportError, match=r"claimed by trainer stray .* held by trainer w-t1"):
        reg.report([rep(1, instance_id="stray", node_id="host-c")])
    with pytest.raises(RankReportError, match="holds rank 0 of world w"):
        reg.report([rep(2, instance_id="w-t0")])  # one trainer, two ranks


def test_rebuild_position_outside_the_job_is_refused() -> None:
    reg = registry()
    with pytest.raises(RankReportError, match="epoch 3, past this job's 2 epochs"):
        reg.report([rep(0, epoch=3)])
    reg.report([rep(0, step=300)])  # a checkpoint's steps at a smaller batch size count on
    with pytest.raises(RankReportError, match="200 samples has at most 402 steps") as err:
        reg.report([rep(1, step=403)])
    assert err.value.field == "step"
    with pytest.raises(RankReportError, match="rank 4 of world w is not in a world of 4"):
        reg.report([rep(4)])
    with pytest.raises(RankReportError, match="names no trainer instance"):
        reg.report([rep(0, instance_id="")])
    # Nothing learnt from the refused reports.
    assert reg.worlds.incomplete()[0].missing == (1, 2, 3)


def test_rebuild_world_formed_here_refuses_a_report_of_a_stranger() -> None:
    reg = registry()
    for r in range(2):
        answer = reg.join(
            RankJoin(node_id="a", instance_id=f"t{r}", rank=r, world_size=2, batch_size=8)
        )
    world_id = answer.world_id
    reg.report([rep(0, world=world_id, size=2, instance_id="t0")])
    with pytest.raises(RankReportError, match="held by trainer t1"):
        reg.report([rep(1, world=world_id, size=2, instance_id="x")])


def test_rebuild_rejoining_trainer_names_its_world_and_is_served_at_once() -> None:
    reg = registry()
    reg.report([rep(0), rep(1)])

    def join(rank: int, **kw: object) -> RankJoin:
        values: dict[str, object] = {
            "node_id": "host-b",
            "instance_id": f"w-t{rank}",
            "rank": rank,
            "world_size": 4,
            "batch_size": 8,
            "world_id": "w",
            "start": RankStart(epoch=0, step=4, consumed=128),
        }
        values.update(kw)
        return RankJoin(**values)  # type: ignore[arg-type]

    answer = reg.join(join(2))  # before host-b re-registered: a rejoin, not a new world
    assert answer.ready and answer.world_id == "w" and reg.waiting() is None
    assert reg.worlds.incomplete()[0].missing == (3,)
    with pytest.raises(RankReportError, match="held by trainer w-t2"):
        reg.join(join(2, instance_id="other"))
    with pytest.raises(RankReportError, match="batch_size 16"):
        reg.join(join(3, batch_size=16))
    # Known from a report: a rejoin with another contract is refused as before.
    with pytest.raises(ContractError, match="rejoined with batch_size 4"):
        reg.join(join(0, batch_size=4))
    assert reg.join(join(3)).ready and reg.worlds.incomplete() == []


def spec() -> JobSpec:
    return JobSpec(
        job_id=JOB,
        dataset_link="s3://bucket/ds/",
        manifest_hash="cd" * 32,
        total_samples=TOTAL,
        epochs=EPOCHS,
    )


async def test_rebuild_job_learns_ranks_from_re_registration_and_saves_the_worlds(
    tmp_path: Path,
) -> None:
    file = WorldFile(tmp_path, JOB, "cd" * 32)
    job = Job(spec(), world_file=file)
    await job.register(JOB, "host-a", ranks=[rep(0), rep(1)])
    await job.register(JOB, "host-b", ranks=[rep(2), rep(3)])
    assert [r.rank for r in job.status().ranks] == [0, 1, 2, 3]
    with pytest.raises(RankReportError):
        await job.register(JOB, "host-c", ranks=[rep(3, instance_id="dup")])
    assert "host-c" not in {n.node_id for n in job.status().nodes}  # refused whole
    saved = json.loads(file.path.read_text())
    assert saved["worlds"][0]["holders"] == {str(r): f"w-t{r}" for r in range(4)}

    # A restart with the state dir knows the world before any agent reports.
    again = Job(spec(), world_file=WorldFile(tmp_path, JOB, "cd" * 32))
    again.restore_worlds()
    join = RankJoin(node_id="host-a", instance_id="w-t1", rank=1, world_size=4, batch_size=8)
    assert again.ranks.join(join).world_id == "w"
    with pytest.raises(RankReportError, match="batch_size 4"):
        await again.report_ranks([rep(2, batch_size=4)])
    # Another snapshot's file is ignored; a corrupt one is one clear error.
    other = Job(spec(), world_file=WorldFile(tmp_path, JOB, "ef" * 32))
    other.restore_worlds()
    assert other.ranks.worlds.to_json() == []
    file.path.write_text("{not json")
    with pytest.raises(LeaseLogError, match=r"unreadable .* delete it"):
        Job(spec(), world_file=file).restore_worlds()
    file.path.write_text(json.dumps({**saved, "worlds": [{"world_id": "w"}]}))
    with pytest.raises(LeaseLogError, match="malformed world"):
        Job(spec(), world_file=file).restore_worlds()


async def test_rebuild_job_world_file_unwritable_warns_and_the_job_goes_on(
    tmp_path: Path, logs: Events
) -> None:
    job = Job(spec(), world_file=WorldFile(tmp_path / "gone", JOB, "cd" * 32))
    reports = [rep(r) for r in range(4)]
    await asyncio.gather(*(job.report_ranks([r]) for r in reports))  # concurrent saves
    assert job.ranks.worlds.incomplete() == []
    assert logs.named("world_file_write_failed")[0]["log_level"] == "warning"

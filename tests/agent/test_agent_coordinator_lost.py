"""Rank-exact mode: a real agent whose coordinator is lost and replaced by one without its
state. The agent re-registers with its ranks and the new coordinator rebuilds the world
(trainers finish with embedded mode's batches); a coordinator that refuses the ranks or
runs another job order fails the agent closed; one that never comes back fails it after
``--coordinator-lost-timeout-s``. Trainers are threads, coordinators in-process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from support.eventually import assert_eventually
from support.logs import Events
from support.manifests import write_local_dataset

import mx8
from mx8_common.errors import (
    CoordinatorError,
    ManifestChangedError,
    Mx8Error,
    RankReportError,
)
from mx8_common.sample_order import Shard
from mx8_coordinator.state.ranks import RankReport

SAMPLES = 120
WORLD = 2
BATCH = 6
JOB = {"mode": "rank-exact", "epochs": 2, "shuffle": True, "seed": 3, "block_size": 16}


class Trainers:
    """``WORLD`` trainer ranks in threads that stop after each batch until ``go`` is set."""

    def __init__(self, url: str) -> None:
        self.go = threading.Event()
        self.ids: dict[int, list[list[list[int]]]] = {r: [[], []] for r in range(WORLD)}
        self.errors: dict[int, BaseException] = {}
        self.tasks = [
            asyncio.create_task(asyncio.to_thread(self._run, url, r)) for r in range(WORLD)
        ]

    def _run(self, url: str, rank: int) -> None:
        loader = mx8.load("ignored", agent=url, rank=rank, world_size=WORLD, batch_size=BATCH)
        try:
            for epoch in range(2):
                loader.set_epoch(epoch)
                for b in loader:
                    self.ids[rank][epoch].append(b.sample_ids.tolist())
                    self.go.wait(30)
        except Mx8Error as exc:
            self.errors[rank] = exc
        finally:
            loader.close()

    async def wait(self) -> None:
        self.go.set()
        await asyncio.gather(*self.tasks)


async def _started(tmp_path: Path, start_coordinator: Any, start_agent: Any, **agent: Any) -> Any:
    manifest = write_local_dataset(tmp_path, SAMPLES)
    first = await start_coordinator(manifest, **JOB)
    running = await start_agent(first.address, **agent)
    trainers = Trainers(running.url)

    def streaming() -> bool:
        return all(len(trainers.ids[r][0]) >= 1 for r in range(WORLD))

    await assert_eventually(streaming, timeout_s=20)
    (world,) = first.job.ranks.worlds.to_json()
    return manifest, first, running, trainers, world["world_id"]


async def test_agent_coordinator_restarted_without_state_rebuilds_and_trainers_finish(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    manifest, first, agent, trainers, world_id = await _started(
        tmp_path, start_coordinator, start_agent
    )
    address = first.address
    await first.shutdown()
    await assert_eventually(lambda: logs.named("coordinator_lost"))
    second = await start_coordinator(manifest, listen=address, **JOB)  # no state

    def rebuilt() -> bool:
        world = second.job.ranks.worlds.get(world_id)
        return world is not None and world.complete

    await assert_eventually(rebuilt, timeout_s=20)
    await trainers.wait()
    await agent.result(timeout_s=30)
    assert trainers.errors == {}
    order = second.job.spec
    for rank in range(WORLD):
        for epoch in range(2):
            shard = Shard(order.order(epoch), rank, WORLD, False, BATCH)
            expected = [shard.batch_ids(b).tolist() for b in range(shard.batches)]
            assert trainers.ids[rank][epoch] == expected
    assert second.job.drained
    [back] = logs.named("coordinator_reconnected")
    assert back["lost_s"] >= 0
    assert "registers again with its 2 ranks" in logs.named("coordinator_lost")[0]["waiting_for"]
    assert [e["world_id"] for e in logs.named("world_rebuilt")] == [world_id]


async def test_agent_coordinator_restarted_with_its_state_dir_knows_the_world_at_once(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    manifest = write_local_dataset(tmp_path, SAMPLES)
    state = tmp_path / "state"
    first = await start_coordinator(manifest, state_dir=str(state), **JOB)
    running = await start_agent(first.address)
    trainers = Trainers(running.url)
    await assert_eventually(lambda: all(trainers.ids[r][0] for r in range(WORLD)), timeout_s=20)
    (world,) = first.job.ranks.worlds.to_json()
    address = first.address
    await first.shutdown()
    second = await start_coordinator(manifest, listen=address, state_dir=str(state), **JOB)
    assert second.job.ranks.worlds.to_json() == [world]  # before any agent reported
    assert logs.named("worlds_restored")[0]["worlds"] == 1
    await trainers.wait()
    await running.result(timeout_s=30)
    assert trainers.errors == {} and second.job.drained
    assert not logs.named("world_rebuild_started")  # known, not rebuilt


async def test_agent_coordinator_refusing_its_ranks_fails_it_closed(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    manifest, first, agent, trainers, world_id = await _started(
        tmp_path, start_coordinator, start_agent
    )
    address = first.address
    await first.shutdown()
    second = await start_coordinator(manifest, listen=address, **JOB)
    # Another agent got there first and holds rank 0 of that world with another trainer.
    stray = RankReport(
        rank=0, instance_id="stray", world_id=world_id, world_size=WORLD, epoch=0, step=1
    )
    await second.job.report_ranks([stray])
    with pytest.raises(RankReportError, match="held by trainer stray"):
        await agent.result(timeout_s=30)
    await trainers.wait()
    assert all(isinstance(e, RankReportError) for e in trainers.errors.values()), trainers.errors
    # Its heartbeat's re-registration and its progress report may both hear the refusal.
    refused = [e for e in logs.named("rank_report_refused") if e["component"] == "agent"]
    assert refused and all(e["log_level"] == "error" and e["field"] == "rank" for e in refused)


async def test_agent_coordinator_restarted_with_another_seed_fails_it_closed(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    manifest, first, agent, trainers, _world_id = await _started(
        tmp_path, start_coordinator, start_agent
    )
    address = first.address
    await first.shutdown()
    await start_coordinator(manifest, listen=address, **{**JOB, "seed": 4})
    with pytest.raises(ManifestChangedError, match=r"restarted with seed 4.*--seed 3") as info:
        await agent.result(timeout_s=30)
    assert (info.value.expected, info.value.got) == ("3", "4")
    await trainers.wait()
    assert trainers.errors and all(
        isinstance(e, ManifestChangedError) for e in trainers.errors.values()
    )


async def test_agent_coordinator_lost_past_the_timeout_fails_it_naming_the_flag(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    _manifest, first, agent, trainers, _world_id = await _started(
        tmp_path, start_coordinator, start_agent, coordinator_lost_timeout_s=1.0
    )
    await first.shutdown()
    with pytest.raises(CoordinatorError, match=r"--coordinator-lost-timeout-s 1\)") as info:
        await agent.result(timeout_s=30)
    assert "\n" not in str(info.value) and "start it again" in str(info.value)
    await trainers.wait()
    assert trainers.errors and all(
        isinstance(e, CoordinatorError) for e in trainers.errors.values()
    )
    assert logs.named("coordinator_lost_timeout")[0]["log_level"] == "error"

"""Re-registration after a coordinator restart: same snapshot and job incarnation continues;
another snapshot, or (dynamic mode) another job incarnation, fails closed (event, trainers
told, ``run()`` raises, the CLI exits non-zero)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess, TrainerRun, run_trainer
from support.eventually import assert_eventually
from support.fake_coordinator import FakeCoordinator
from support.logs import Events
from support.manifests import write_local_dataset

from mx8_common.errors import CoordinatorStateLostError, ManifestChangedError

OTHER_HASH = "f" * 64


async def started_fake(tmp_path: Path, samples: int = 200) -> FakeCoordinator:
    data = write_local_dataset(tmp_path, samples).read_bytes()
    fake = FakeCoordinator(data, total_samples=samples)
    await fake.start()
    return fake


async def trainer_holding_a_batch(agent: Any, gate: threading.Event) -> asyncio.Task[TrainerRun]:
    """A trainer that stops on its first batch (unacknowledged) until ``gate`` is set."""
    trainer = asyncio.create_task(
        asyncio.to_thread(run_trainer, agent.url, batch_size=10, on_batch=lambda b: gate.wait(10))
    )
    await assert_eventually(lambda: agent.agent.hub.unacked_batches > 0)
    return trainer


@pytest.mark.parametrize("refused_for", ["unknown node", "another token"])
async def test_agent_reregister_same_manifest_hash_continues(
    tmp_path: Path, start_agent: Any, logs: Events, refused_for: str
) -> None:
    """Heartbeats refused because the coordinator does not know the node, or holds a token
    the agent never received (its registration's answer was lost), register it again."""
    fake = await started_fake(tmp_path)
    try:
        gate = threading.Event()
        agent = await start_agent(fake.address)
        logs.clear()
        trainer = await trainer_holding_a_batch(agent, gate)
        fake.forget_nodes(token=refused_for == "another token")
        await assert_eventually(lambda: fake.register_calls >= 2)
        gate.set()
        run = await trainer
        await agent.result()
    finally:
        await fake.stop()
    assert run.error is None and sorted(run.ids) == list(range(200))
    assert logs.named("node_reregistered")
    assert not logs.named("coordinator_manifest_changed")
    assert not logs.named("coordinator_state_lost")


async def test_agent_reregister_other_job_incarnation_fails_closed_without_redelivery(
    tmp_path: Path, start_agent: Any, logs: Events
) -> None:
    fake = await started_fake(tmp_path)
    try:
        gate = threading.Event()
        agent = await start_agent(fake.address)
        logs.clear()
        trainer = await trainer_holding_a_batch(agent, gate)
        first = fake.job_incarnation
        fake.job_incarnation = "1ea40002"  # "restarted without its --state-dir"
        fake.forget_nodes()
        with pytest.raises(CoordinatorStateLostError) as info:
            await agent.result()
        gate.set()
        run = await trainer
    finally:
        await fake.stop()
    assert (info.value.expected, info.value.got) == (first, "1ea40002")
    assert "restarted without its --state-dir" in str(info.value)
    assert "run the coordinator with --state-dir" in str(info.value)
    [lost] = logs.named("coordinator_state_lost")
    assert lost["log_level"] == "error" and lost["got"] == "1ea40002"
    # The trainer is told with the same typed error, and got nothing twice.
    assert isinstance(run.error, CoordinatorStateLostError)
    assert len(run.ids) == len(set(run.ids)) < 200


async def test_agent_reregister_other_manifest_hash_fails_closed(
    tmp_path: Path, start_agent: Any, logs: Events
) -> None:
    fake = await started_fake(tmp_path)
    try:
        gate = threading.Event()
        agent = await start_agent(fake.address)
        logs.clear()
        trainer = await trainer_holding_a_batch(agent, gate)
        expected = fake.manifest_hash
        fake.manifest_hash = OTHER_HASH  # "restarted on another snapshot"
        fake.forget_nodes()
        with pytest.raises(ManifestChangedError) as info:
            await agent.result()
        gate.set()
        run = await trainer
    finally:
        await fake.stop()
    assert info.value.expected == expected and info.value.got == OTHER_HASH
    assert expected in str(info.value) and "restart the whole job" in str(info.value)
    changed = logs.named("coordinator_manifest_changed")
    assert len(changed) == 1 and changed[0]["got"] == OTHER_HASH
    # The running trainer is told, not silently fed another snapshot: the same typed error.
    assert isinstance(run.error, ManifestChangedError)
    assert run.error.expected == expected and run.error.got == OTHER_HASH
    assert len(run.ids) < 200


async def test_agent_process_reregister_other_manifest_hash_exits_2(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    fake = await started_fake(tmp_path / "ds")
    url = f"unix://{sock_dir}/agent.sock"
    agent = DaemonProcess(
        "mx8_agent",
        ["--coordinator", fake.address, "--node-id", "a", "--listen", url],
        tmp_path / "agent.log",
    )
    daemons.append(agent)
    try:
        await agent.wait_event("manifest_ingested")
        fake.manifest_hash = OTHER_HASH
        fake.forget_nodes()
        assert await agent.wait_exit(20) == 2
    finally:
        await fake.stop()
    assert agent.event("coordinator_manifest_changed") is not None
    assert "mx8d-agent:" in agent.text() and OTHER_HASH in agent.text()

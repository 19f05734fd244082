"""A real coordinator, a real agent and trainer threads over local files: delivery semantics."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.agent import committed, run_trainer
from support.eventually import assert_eventually
from support.logs import Events
from support.manifests import sample_bytes, write_local_dataset

from mx8._agent_client import AgentStreamClient
from mx8_agent.agent import Agent
from mx8_agent.config import AgentConfig
from mx8_common.errors import AgentError, ObjectChangedError, RequestError
from mx8_common.rpc.coordinator_client import CoordinatorClient


async def test_agent_two_trainers_share_leases_exactly_once(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    manifest = write_local_dataset(tmp_path, 1000)
    # 100-sample leases with 16-sample batches: leases end mid-batch.
    coordinator = await start_coordinator(manifest, block_size=100)
    agent = await start_agent(coordinator.address)
    # Both consume only once both have a batch, at a pace set by sleeps rather than by
    # who gets the CPU: the share is then the agent's doing, not the box's load.
    both = threading.Barrier(2, timeout=30)
    firsts: list[int] = []

    def first_batch_waits(batch: Any, rank: int) -> None:
        if rank not in firsts:
            firsts.append(rank)
            both.wait()

    runs = await asyncio.gather(
        *(
            asyncio.to_thread(
                run_trainer,
                agent.url,
                local_rank=rank,
                keep_batches=True,
                delay_s=0.002,
                on_batch=lambda b, rank=rank: first_batch_waits(b, rank),
            )
            for rank in (0, 1)
        )
    )
    await agent.result()
    for run in runs:
        assert run.error is None, run.error
    assert sorted(runs[0].ids + runs[1].ids) == list(range(1000))
    # Fair: both trainers got a real share.
    assert min(len(runs[0].ids), len(runs[1].ids)) >= 250
    for run in runs:
        for batch in run.batches:
            ids = batch.sample_ids.tolist()
            assert len({i // 100 for i in ids}) == 1, "a batch crossed a lease boundary"
            assert 1 <= len(ids) <= 16
            assert batch.payloads == [sample_bytes(i) for i in ids]
    assert await committed(coordinator.address) == 1000
    assert coordinator.job is not None and coordinator.job.drained


async def test_agent_batch_size_mismatch_is_refused(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 100))
    agent = await start_agent(coordinator.address)
    gate = threading.Event()
    first = asyncio.create_task(
        asyncio.to_thread(run_trainer, agent.url, batch_size=16, on_batch=lambda b: gate.wait(10))
    )
    await assert_eventually(lambda: agent.agent.hub.batch_size == 16)
    other = await asyncio.to_thread(run_trainer, agent.url, batch_size=8)
    # The agent's typed refusal, rebuilt on the trainer's side (class and field).
    assert isinstance(other.error, RequestError) and other.error.field == "batch_size"
    assert "batch_size 8 differs from 16" in str(other.error)
    gate.set()
    assert (await first).error is None


async def test_agent_disconnected_trainer_batches_go_to_others(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 400), block_size=100)
    agent = await start_agent(coordinator.address)
    # Trainer A consumes two batches, receives more (window 4) and leaves without acking.
    a = await asyncio.to_thread(run_trainer, agent.url, stop_after=3, window=4)
    assert a.error is None and len(a.ids) == 32
    # The agent notices the closed stream asynchronously, then re-queues what A held.
    await assert_eventually(lambda: agent.agent.hub.requeued_batches >= 1)
    b = await asyncio.to_thread(run_trainer, agent.url)
    await agent.result()
    assert b.error is None
    assert sorted(a.ids + b.ids) == list(range(400))
    assert await committed(coordinator.address) == 400


async def test_agent_reports_only_acknowledged_samples(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 300), block_size=100)
    agent = await start_agent(coordinator.address, metrics="127.0.0.1:0")
    seen = 0
    gate = threading.Event()

    def on_batch(_batch: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == 3:
            gate.wait(30)  # "training" on batch 3: batches 1-2 acked, 3 not yet

    trainer = asyncio.create_task(
        asyncio.to_thread(run_trainer, agent.url, window=2, on_batch=on_batch)
    )
    await assert_eventually(lambda: seen == 3)
    # Acknowledgements are reported as they arrive: batch 1's, then batch 2's.
    await assert_eventually(lambda: _greater(committed(coordinator.address), 31), timeout_s=10)
    assert await committed(coordinator.address) == 32

    # Reports keep arriving (the lease stays alive) without committing batch 3.
    async def lease_expiry() -> int:
        async with CoordinatorClient(coordinator.address) as client:
            snap = await client.get_job_snapshot()
        return max(le.expires_unix_ms for le in snap.live_leases)

    before = await lease_expiry()
    await assert_eventually(lambda: _greater(lease_expiry(), before + 250))
    assert await committed(coordinator.address) == 32
    url = f"http://127.0.0.1:{agent.agent.metrics_port}/metrics"
    text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())).decode()
    assert "mx8_agent_samples_acked_total 32.0" in text
    assert "mx8_agent_unacked_batches 2.0" in text
    assert "mx8_agent_fetch_latency_seconds_count" in text
    gate.set()
    run = await trainer
    await agent.result()
    assert run.error is None and sorted(run.ids) == list(range(300))
    assert await committed(coordinator.address) == 300


async def test_agent_reads_local_files_several_per_read_job(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    """The agent's reader keeps ``read_local_many``: local files are read in groups, and the
    fetch latency histogram (a hook inside the reader, not a wrapper) still sees each one."""
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 500), block_size=100)
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url)
    await agent.result()
    assert run.error is None and sorted(run.ids) == list(range(500))
    registry = agent.agent.metrics.registry
    samples = registry.get_sample_value("mx8_agent_samples_fetched_total")
    batches = registry.get_sample_value("mx8_agent_local_read_batches_total")
    assert samples == 500
    assert batches is not None and 1 <= batches < samples / 2, batches
    assert registry.get_sample_value("mx8_agent_fetch_latency_seconds_count") == 500


async def _greater(value: Any, floor: int) -> bool:
    return (await value) > floor


async def test_agent_inflight_bytes_stay_under_budget(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    budget = 32 * 1024
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 2000), block_size=500)
    agent = await start_agent(coordinator.address, max_inflight_bytes=budget, fetch_concurrency=16)
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(agent.agent.inflight_bytes)
            await asyncio.sleep(0.0005)

    sampler = asyncio.create_task(sample())
    try:
        run = await asyncio.to_thread(run_trainer, agent.url, batch_size=8, delay_s=0.001)
        await agent.result()
    finally:
        sampler.cancel()
    assert run.error is None and sorted(run.ids) == list(range(2000))
    stats = agent.agent.stats()
    assert max(samples) <= budget
    assert stats["peak_inflight_bytes"] <= budget
    # The budget was the binding limit (a slow trainer), not an idle pipeline.
    assert max(samples) > budget // 4


async def test_agent_shuffled_epochs_deliver_each_epoch_once_with_labels(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    manifest = write_local_dataset(tmp_path, 300, labels=3)
    coordinator = await start_coordinator(manifest, block_size=50, shuffle=True, seed=7, epochs=2)
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=10, keep_batches=True)
    await agent.result()
    assert run.error is None
    by_epoch: dict[int, list[int]] = {0: [], 1: []}
    for batch in run.batches:
        by_epoch[batch.epoch].extend(batch.sample_ids.tolist())
        assert batch.labels is not None
        assert (batch.labels == batch.sample_ids.astype(np.int64) % 3).all()
        assert batch.payloads == [sample_bytes(int(i)) for i in batch.sample_ids]
    for ids in by_epoch.values():
        assert sorted(ids) == list(range(300))
    assert by_epoch[0] != list(range(300))  # shuffled
    assert Counter(run.epochs) == Counter(b.epoch for b in run.batches)


async def test_agent_describe_reports_the_job(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 50), epochs=3)
    agent = await start_agent(coordinator.address)
    await assert_eventually(lambda: agent.agent.table is not None)

    def describe() -> dict[str, Any]:
        with AgentStreamClient(
            agent.url, job_id="default", local_rank=0, batch_size=4, timeout_s=5
        ) as client:
            return client.describe()

    info = await asyncio.to_thread(describe)
    assert info["total_samples"] == 50
    assert info["epochs"] == 3
    assert info["ready"] is True
    assert info["manifest_hash"] == coordinator.job.spec.manifest_hash  # type: ignore[union-attr]


async def test_agent_object_changed_since_snapshot_fails_loudly(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 100))
    changed = tmp_path / "data" / "000050.bin"
    changed.write_bytes(b"a different, longer object " * 20)
    logs.clear()
    agent = await start_agent(coordinator.address)
    run = await asyncio.to_thread(run_trainer, agent.url, batch_size=10)
    with pytest.raises(ObjectChangedError, match=r"000050\.bin"):
        await agent.result()
    assert isinstance(run.error, ObjectChangedError)
    assert "000050.bin" in str(run.error) and "@refresh" in str(run.error)
    assert all(i < 50 for i in run.ids)  # nothing from or after the changed object
    assert logs.named("object_changed_since_snapshot")
    assert await committed(coordinator.address) <= 50


def test_agent_client_unreachable_agent_names_the_url(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    with pytest.raises(AgentError, match="unreachable") as info:
        AgentStreamClient(url, job_id="default", local_rank=0, batch_size=4, timeout_s=0.3)
    assert url in str(info.value)
    assert "start mx8d-agent" in str(info.value)


async def test_agent_shutdown_is_idempotent(sock_dir: Path) -> None:
    config = AgentConfig(coordinator="127.0.0.1:1", listen=f"unix://{sock_dir}/s.sock")
    async with Agent(config) as agent:
        assert agent.address == f"unix://{sock_dir}/s.sock"
        assert (sock_dir / "s.sock").is_socket()
        await agent.shutdown()
    await agent.shutdown()
    assert not (sock_dir / "s.sock").exists()

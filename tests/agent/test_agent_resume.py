"""A trainer whose stream breaks while the agent lives resumes its place (real agent, real
client, a loopback proxy that drops the TCP connections)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from support.agent import committed
from support.logs import Events
from support.manifests import write_local_dataset
from support.tcp_proxy import TcpProxy

from mx8._agent_client import AgentStreamClient
from mx8_common.errors import TrainerResumeError


def consume(
    url: str, *, on_batch: Any, window: int = 4, batch_size: int = 16
) -> tuple[list[int], AgentStreamClient]:
    """Every sample id the trainer consumed, and its (closed) client."""
    ids: list[int] = []
    with AgentStreamClient(
        url, job_id="default", local_rank=0, batch_size=batch_size, window=window, timeout_s=10
    ) as client:
        for n, batch in enumerate(client, start=1):
            ids.extend(batch.sample_ids.tolist())
            on_batch(n)
    return ids, client


async def test_agent_stream_break_resumes_same_trainer_without_loss_or_duplicates(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, logs: Events
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 600), block_size=100)
    agent = await start_agent(coordinator.address, listen="127.0.0.1:0")
    proxy = TcpProxy(agent.url)
    await proxy.start()
    loop = asyncio.get_running_loop()

    def on_batch(n: int) -> None:
        if n in (5, 20):
            # Batch n is consumed but not yet acknowledged; more are in flight (window 4).
            asyncio.run_coroutine_threadsafe(_cut(proxy), loop).result(5)

    try:
        logs.clear()
        ids, client = await asyncio.to_thread(consume, proxy.address, on_batch=on_batch)
        await agent.result()
    finally:
        await proxy.stop()
    assert proxy.cuts == 2 and client.reconnects >= 2
    assert sorted(ids) == list(range(600)), "a consumed batch was lost or repeated"
    resumes = [e for e in logs.named("trainer_connected") if e.get("resumed_after", 0) > 0]
    assert len(resumes) >= 2
    assert all(e["trainer_id"] == client.trainer_id for e in resumes)
    # Nothing was handed to anybody else: the trainer took its own batches back.
    assert agent.agent.hub.requeued_batches == 0
    assert await committed(coordinator.address) == 600


async def _cut(proxy: TcpProxy) -> None:
    proxy.cut()


async def test_agent_client_resume_refused_by_restarted_agent_is_trainer_resume_error(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    manifest = write_local_dataset(tmp_path, 300)
    first = await start_agent(
        (await start_coordinator(manifest, block_size=100)).address, listen="127.0.0.1:0"
    )
    # "The agent restarted": another agent (that never served this trainer) behind the
    # same address when the trainer reconnects.
    second = await start_agent(
        (await start_coordinator(manifest, block_size=100)).address, listen="127.0.0.1:0"
    )
    proxy = TcpProxy(first.url)
    await proxy.start()
    loop = asyncio.get_running_loop()
    switched = threading.Event()

    async def restart() -> None:
        proxy.target = second.url
        proxy.cut()

    def on_batch(n: int) -> None:
        if n == 3 and not switched.is_set():
            switched.set()
            asyncio.run_coroutine_threadsafe(restart(), loop).result(5)

    try:
        with pytest.raises(TrainerResumeError, match="asks to resume after batch") as info:
            await asyncio.to_thread(consume, proxy.address, on_batch=on_batch)
    finally:
        await proxy.stop()
    assert "restarted" in str(info.value) and "Restart the trainer" in str(info.value)
    # The refused trainer's id came back as the error's field, not inside its text only.
    assert info.value.trainer_id and info.value.trainer_id in str(info.value)
    assert second.agent.hub.sessions == []

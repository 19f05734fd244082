"""Rank-exact batches through shared memory, with a real coordinator and agent: a trainer
that shares the agent's shm directory gets its batches through it, byte for byte the
same as through the stream; one that does not (or an agent with it off) gets them in the
messages; nothing is left in the directory after the job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from support.agent import rank_client
from support.manifests import sample_bytes, write_local_dataset

SAMPLES = 96


def _take(
    url: str, rank: int, *, shm_dir: Path, shared: bool, trainer_reads: bool = False
) -> tuple[list[Any], int]:
    """Rank ``rank`` of 2 for the whole job: its (epoch, step, ids, bytes ok) and how many
    batches came through shared memory (the agent reads the files unless
    ``trainer_reads``)."""
    client = rank_client(
        url, rank, shared_memory=shared, shm_dir=shm_dir, trainer_reads=trainer_reads
    )
    got = []
    try:
        for b in client:
            ids = b.sample_ids.tolist()
            ok = isinstance(b.payload, bytes) and b.payloads == [sample_bytes(i) for i in ids]
            got.append((b.epoch, client.last_step, ids, ok))
    finally:
        client.close()
    return got, client.segments.batches


async def _job(tmp_path: Path, start_coordinator: Any, start_agent: Any, shm_dir: str) -> Any:
    manifest = write_local_dataset(tmp_path, SAMPLES)
    coordinator = await start_coordinator(
        manifest, mode="rank-exact", epochs=2, shuffle=True, seed=5, block_size=16
    )
    return await start_agent(coordinator.address, shm_dir=shm_dir)


async def test_shared_memory_batches_equal_inline_ones_and_leave_nothing_behind(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    agent = await _job(tmp_path / "a", start_coordinator, start_agent, str(shm_dir))
    # Rank 0 shares the agent's directory; rank 1 says it cannot (another host's view).
    (got0, shared0), (got1, shared1) = await asyncio.gather(
        asyncio.to_thread(_take, agent.url, 0, shm_dir=shm_dir, shared=True),
        asyncio.to_thread(_take, agent.url, 1, shm_dir=shm_dir, shared=False),
    )
    assert shared0 == len(got0) == 12 and shared1 == 0 and len(got1) == 12
    assert all(ok for *_, ok in got0 + got1)
    assert agent.agent.stats()["batches_shared"] == 12
    ids = sorted(i for _, _, batch, _ in got0 + got1 for i in batch)
    assert ids == sorted(list(range(SAMPLES)) * 2)
    await agent.result(timeout_s=30)
    assert os.listdir(shm_dir) == []  # segments and probes gone with the job


async def test_shared_memory_off_on_the_agent_sends_bytes_in_the_stream(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    agent = await _job(tmp_path / "a", start_coordinator, start_agent, "")
    runs = await asyncio.gather(
        *(asyncio.to_thread(_take, agent.url, r, shm_dir=shm_dir, shared=True) for r in range(2))
    )
    for got, shared in runs:
        assert shared == 0 and len(got) == 12 and all(ok for *_, ok in got)
    assert agent.agent.stats()["batches_shared"] == 0
    await agent.result(timeout_s=30)
    assert os.listdir(shm_dir) == []  # the refused probes were removed by the trainers


async def test_shared_memory_a_trainer_cannot_open_falls_back_to_the_stream_in_order(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, capfd: Any
) -> None:
    from mx8._shm import SharedSegments

    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    agent = await _job(tmp_path / "a", start_coordinator, start_agent, str(shm_dir))

    def take(rank: int) -> list[Any]:
        client = rank_client(agent.url, rank, shm_dir=shm_dir, trainer_reads=False)
        # The probe passes but the segments are not readable from here (another user).
        client.segments = SharedSegments(agent.url, tmp_path / "elsewhere")
        try:
            return [(b.epoch, client.last_step, b.sample_ids.tolist(), b.payloads) for b in client]
        finally:
            client.close()

    runs = await asyncio.gather(*(asyncio.to_thread(take, r) for r in range(2)))
    for got in runs:
        assert [(e, s) for e, s, _, _ in got] == [(e, s) for e in range(2) for s in range(6)]
        assert all(p == [sample_bytes(i) for i in ids] for _, _, ids, p in got)
    assert "taking batches through the stream instead" in capfd.readouterr().err
    await agent.result(timeout_s=30)
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("trainer_reads", [False, True], ids=["agent_reads", "trainer_reads"])
async def test_shared_memory_local_file_gone_is_the_typed_error_for_trainer_and_agent(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, trainer_reads: bool
) -> None:
    from mx8_common.errors import ObjectNotFoundError

    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    agent = await _job(tmp_path / "a", start_coordinator, start_agent, str(shm_dir))
    for path in (tmp_path / "a").rglob("*.bin"):
        path.unlink()  # deleted after the snapshot: read straight into the ring, refused
    with pytest.raises(ObjectNotFoundError):
        await asyncio.gather(
            *(
                asyncio.to_thread(
                    _take, agent.url, r, shm_dir=shm_dir, shared=True, trainer_reads=trainer_reads
                )
                for r in range(2)
            )
        )
    with pytest.raises(ObjectNotFoundError):
        await agent.result(timeout_s=30)

"""``Batch.locations``: filled only for a stream opened with ``want_locations``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from support.manifests import write_local_dataset

from mx8._agent_client import AgentStreamClient
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.rpc.proto import agent_pb2_grpc as pb_grpc


def consume(url: str, *, want_locations: bool, local_rank: int) -> list[Any]:
    with AgentStreamClient(
        url,
        job_id="default",
        local_rank=local_rank,
        batch_size=8,
        timeout_s=10,
        want_locations=want_locations,
    ) as client:
        return list(client)


async def test_agent_locations_only_for_the_trainer_that_asked(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 200), block_size=50)
    agent = await start_agent(coordinator.address)
    asked, lean = await asyncio.gather(
        asyncio.to_thread(consume, agent.url, want_locations=True, local_rank=0),
        asyncio.to_thread(consume, agent.url, want_locations=False, local_rank=1),
    )
    await agent.result()
    assert asked and lean
    for batch in asked:
        expected = tuple(str(tmp_path / "data" / f"{i:06d}.bin") for i in batch.sample_ids)
        assert batch.locations == expected
    assert all(batch.locations is None for batch in lean)
    ids = [int(i) for b in asked + lean for i in b.sample_ids]
    assert sorted(ids) == list(range(200))


async def test_agent_default_stream_sends_no_locations_on_the_wire(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, 20))
    agent = await start_agent(coordinator.address)

    async def first_batch(want: bool) -> pb.Batch:
        async with grpc.aio.insecure_channel(agent.url) as channel:
            opening = pb.OpenStream(
                job_id="default", batch_size=4, trainer_id=f"raw-{want}", want_locations=want
            )
            call = pb_grpc.AgentStub(channel).Stream(iter([pb.TrainerMessage(open=opening)]))
            message = await anext(aiter(call))
            call.cancel()
            return message.batch

    lean = await first_batch(False)
    assert len(lean.sample_ids) == 4 and list(lean.locations) == []
    full = await first_batch(True)
    assert list(full.locations) == [
        str(tmp_path / "data" / f"{i:06d}.bin") for i in full.sample_ids
    ]

"""Rank-exact mode with a real coordinator, a real agent and trainer ranks in threads.

Every rank must get, epoch by epoch, exactly the batches of ``Shard`` (embedded mode's
rank split) with the right bytes, ``len(loader)`` steps each; contract mismatches are one
clear error; a rank alone says what it waits for and gives up after its timeout;
checkpoint and elastic resume continue the epoch from the state.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.eventually import assert_eventually
from support.manifests import sample_bytes, write_local_dataset

import mx8
from mx8_agent.work import rank_server
from mx8_common.errors import ContractError, JobNotReadyError
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.rpc.proto import agent_pb2_grpc as pb_grpc
from mx8_common.sample_order import JobOrder, Shard

SAMPLES = 150
SEED = 3


def _expected(job: JobOrder, epoch: int, rank: int, world: int, batch: int) -> list[list[int]]:
    shard = Shard(job.order(epoch), rank, world, False, batch)
    return [shard.batch_ids(b).tolist() for b in range(shard.batches)]


async def _job(tmp_path: Path, start_coordinator: Any, start_agent: Any, **kw: Any) -> Any:
    manifest = write_local_dataset(tmp_path, SAMPLES)
    values: dict[str, Any] = {
        "mode": "rank-exact",
        "epochs": 2,
        "shuffle": True,
        "seed": SEED,
        "block_size": 16,
    }
    values.update(kw)
    coordinator = await start_coordinator(manifest, **values)
    agent = await start_agent(coordinator.address)
    return coordinator, agent, _job_order(coordinator)


def _job_order(coordinator: Any) -> JobOrder:
    spec = coordinator.job.spec
    return JobOrder(
        manifest_hash=spec.manifest_hash,
        total_samples=spec.total_samples,
        block_size=spec.block_size,
        shuffle=spec.shuffle,
        seed=spec.seed,
    )


def _train(url: str, rank: int, world: int, batch: int, epochs: int = 2) -> dict[str, Any]:
    """A DDP-style loop: set_epoch, one loop per epoch; records ids and payload checks."""
    loader = mx8.load("ignored", agent=url, rank=rank, world_size=world, batch_size=batch)
    out: dict[str, Any] = {"len": len(loader), "epochs": [], "payloads_ok": True}
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        batches = []
        for b in loader:
            assert b.epoch == epoch
            batches.append(b.sample_ids.tolist())
            out["payloads_ok"] &= b.payloads == [sample_bytes(i) for i in b.sample_ids.tolist()]
        out["epochs"].append(batches)
    started = time.monotonic()
    loader.set_epoch(epochs)
    out["after_job"] = list(loader)
    out["after_job_s"] = time.monotonic() - started
    loader.close()
    return out


async def test_rank_exact_ranks_get_embedded_shards_with_equal_steps(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)
    world, batch = 4, 8  # 150 samples: 38 per rank (2 padded), 5 steps with a short last
    runs = await asyncio.gather(
        *(asyncio.to_thread(_train, agent.url, r, world, batch) for r in range(world))
    )
    for rank, run in enumerate(runs):
        assert run["payloads_ok"]
        assert run["len"] == 5
        for epoch in range(2):
            assert run["epochs"][epoch] == _expected(job, epoch, rank, world, batch)
        assert run["after_job"] == [] and run["after_job_s"] < 1.0
    for epoch in range(2):
        ids = Counter(i for run in runs for b in run["epochs"][epoch] for i in b)
        assert set(ids) == set(range(SAMPLES))
    # Every rank finished the last epoch: the coordinator drains, the agent exits.
    await agent.result(timeout_s=30)
    assert coordinator.job.drained
    status = coordinator.status().to_dict()  # what /api/status and the page show
    assert status["mode"] == "rank-exact" and status["state"] == "drained"
    assert {(r["rank"], r["epoch"], r["finished"]) for r in status["ranks"]} == {
        (r, 1, True) for r in range(world)
    }


async def test_rank_exact_waiting_rank_is_read_ahead_and_starts_when_its_host_completes_the_world(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls far past the test's patience: only the host's own wake-up can start rank 0.
    monkeypatch.setattr(rank_server, "_JOIN_POLL_FIRST_S", 120.0)
    monkeypatch.setattr(rank_server, "_JOIN_POLL_S", 120.0)
    _coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)
    world, batch = 2, 8
    early = asyncio.create_task(asyncio.to_thread(_train, agent.url, 0, world, batch))

    def read_ahead() -> bool:
        ranks = agent.agent.ranks
        return ranks is not None and any(
            s.spec.rank == 0 and s.requested and s.requested[0].done for s in ranks.streams
        )

    await assert_eventually(read_ahead, timeout_s=15)  # rank 0's first batch, read already
    assert not early.done()
    late = await asyncio.wait_for(asyncio.to_thread(_train, agent.url, 1, world, batch), 60)
    first = await asyncio.wait_for(early, 60)
    for rank, run in enumerate((first, late)):
        assert run["payloads_ok"]
        for epoch in range(2):
            assert run["epochs"][epoch] == _expected(job, epoch, rank, world, batch)


async def test_rank_exact_first_stream_takes_the_connection_load_made_and_close_ends_it(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)

    def run() -> list[int]:
        loader = mx8.load("x", agent=agent.url, rank=0, world_size=1, batch_size=8)
        made = loader._channel
        assert made is not None  # asked for the job through it
        loader.set_epoch(0)  # the usual loop's first call keeps it
        first = next(iter(loader))
        assert loader._channel is None and loader._stream._channel is made
        loader.close()
        unused = mx8.load("x", agent=agent.url, rank=0, world_size=1, batch_size=8)
        spare = unused._channel
        unused.close()
        with pytest.raises(ValueError, match="closed channel"):
            spare.unary_unary("/mx8.v1.Agent/DescribeJob")(b"")
        return first.sample_ids.tolist()

    assert await asyncio.to_thread(run) == _expected(job, 0, 0, 1, 8)[0]


async def test_rank_exact_contract_no_batch_can_be_cut_for_is_refused_and_the_agent_serves_on(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)

    async def refusal(rank: int, world: int, batch: int) -> str:
        # What a peer may send, past mx8.load's own checks.
        async with grpc.aio.insecure_channel(agent.url) as channel:
            opening = pb.OpenStream(
                job_id="default", batch_size=batch, trainer_id=f"odd-{rank}-{world}-{batch}"
            )
            opening.contract.rank, opening.contract.world_size = rank, world
            call = pb_grpc.AgentStub(channel).Stream(iter([pb.TrainerMessage(open=opening)]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _message in call:
                    pass
            return str(refused.value.details())

    for rank, world, batch, said in (
        (3, 2, 8, "rank 3 is not in a world of 2 ranks"),
        (0, 0, 8, "rank 0 is not in a world of 0 ranks"),
        (0, 1, 0, "batch_size is 0; it must be at least 1"),
    ):
        assert said in await refusal(rank, world, batch)
    assert not agent.task.done()  # its reads never started for those
    run = await asyncio.to_thread(_train, agent.url, 0, 1, 8)
    assert run["payloads_ok"] and run["epochs"][0] == _expected(job, 0, 0, 1, 8)


async def test_rank_exact_rank_alone_says_what_it_waits_for_then_gives_up(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    _coordinator, agent, _job_order = await _job(tmp_path, start_coordinator, start_agent)

    def lonely() -> BaseException:
        loader = mx8.load(
            "x", agent=agent.url, rank=0, world_size=3, batch_size=8, world_wait_timeout_s=1.5
        )
        try:
            next(iter(loader))
        except BaseException as exc:
            return exc
        raise AssertionError("a rank alone got a batch")

    started = time.monotonic()
    error = await asyncio.to_thread(lonely)
    assert isinstance(error, JobNotReadyError)
    assert "ranks 1,2 of 3" in str(error) and "MX8_WORLD_WAIT_TIMEOUT_S" in str(error)
    assert time.monotonic() - started < 10
    err = capfd.readouterr().err
    assert "mx8: waiting for ranks 1,2 of 3 to join job 'default' (1/3 registered)" in err


async def test_rank_exact_seed_other_than_the_jobs_is_one_clear_error(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, _job_order = await _job(tmp_path, start_coordinator, start_agent)

    def build() -> None:
        mx8.load("x", agent=agent.url, rank=0, world_size=1, seed=7)

    with pytest.raises(ContractError, match=r"seed 7 of rank 0 differs from the job's --seed 3"):
        await asyncio.to_thread(build)


async def test_rank_exact_batch_size_mismatch_between_ranks_fails_both(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, _job_order = await _job(tmp_path, start_coordinator, start_agent)

    def first_batch(rank: int, batch: int) -> BaseException | None:
        loader = mx8.load("x", agent=agent.url, rank=rank, world_size=2, batch_size=batch)
        try:
            next(iter(loader))
        except BaseException as exc:
            return exc
        finally:
            loader.close()
        return None

    waiting = asyncio.create_task(asyncio.to_thread(first_batch, 0, 8))
    await asyncio.sleep(0.5)  # rank 0 registers first and waits
    started = time.monotonic()
    late = await asyncio.to_thread(first_batch, 1, 4)
    early = await waiting
    for error in (late, early):
        assert isinstance(error, ContractError)
        assert "batch_size 4 of rank 1 differs from 8 of rank 0" in str(error)
        assert "\n" not in str(error)
    assert time.monotonic() - started < 5


def _run_until(url: str, rank: int, world: int, batch: int, steps: int) -> dict[str, Any]:
    loader = mx8.load("x", agent=url, rank=rank, world_size=world, batch_size=batch)
    it = iter(loader)
    ids = [next(it).sample_ids.tolist() for _ in range(steps)]
    state = loader.state_dict()
    loader.close()
    return {"ids": ids, "state": state}


def _resume(url: str, rank: int, world: int, batch: int, state: dict[str, Any]) -> Any:
    loader = mx8.load("x", agent=url, rank=rank, world_size=world, batch_size=batch)
    loader.load_state_dict(state)
    rest = [b.sample_ids.tolist() for b in loader]
    length = len(loader)
    loader.set_epoch(state["epoch"] + 1)
    nxt = [b.sample_ids.tolist() for b in loader]
    loader.close()
    return {"rest": rest, "len": length, "next": nxt}


async def test_rank_exact_checkpoint_resume_continues_each_rank_exactly(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)
    world, batch, k = 2, 10, 3
    first = await asyncio.gather(
        *(asyncio.to_thread(_run_until, agent.url, r, world, batch, k) for r in range(world))
    )
    states = [run["state"] for run in first]
    assert {(s["epoch"], s["step"], s["consumed"]) for s in states} == {(0, k, k * batch * world)}
    again = await asyncio.gather(
        *(asyncio.to_thread(_resume, agent.url, r, world, batch, states[r]) for r in range(world))
    )
    for rank, run in enumerate(again):
        whole = _expected(job, 0, rank, world, batch)
        assert first[rank]["ids"] == whole[:k]
        assert run["rest"] == whole[k:]
        assert run["len"] == len(whole)
        assert run["next"] == _expected(job, 1, rank, world, batch)


async def test_rank_exact_elastic_resume_from_four_ranks_to_two(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    _coordinator, agent, job = await _job(tmp_path, start_coordinator, start_agent)
    batch, k = 6, 2
    first = await asyncio.gather(
        *(asyncio.to_thread(_run_until, agent.url, r, 4, batch, k) for r in range(4))
    )
    taken = [i for run in first for b in run["ids"] for i in b]
    again = await asyncio.gather(
        *(asyncio.to_thread(_resume, agent.url, r, 2, batch, first[0]["state"]) for r in range(2))
    )
    rest = [i for run in again for b in run["rest"] for i in b]
    counts = Counter(taken + rest)
    assert set(counts) == set(range(SAMPLES))
    assert sum(n - 1 for n in counts.values()) < 2  # only the new world's wrap padding
    assert len({len(run["rest"]) for run in again}) == 1
    for rank, run in enumerate(again):
        assert run["next"] == _expected(job, 1, rank, 2, batch)


async def test_rank_exact_stalled_rank_never_starves_another_and_budget_holds(
    tmp_path: Path, start_coordinator: Any, start_agent: Any
) -> None:
    manifest = write_local_dataset(tmp_path, SAMPLES)
    coordinator = await start_coordinator(
        manifest, mode="rank-exact", epochs=2, shuffle=True, seed=SEED, block_size=16
    )
    budget = 2048  # a batch is 8 samples of 50-249 bytes: two or three fit
    agent = await start_agent(coordinator.address, max_inflight_bytes=budget)
    release = threading.Event()

    def stalled() -> int:
        loader = mx8.load("x", agent=agent.url, rank=0, world_size=2, batch_size=8)
        n = 0
        for epoch in range(2):
            loader.set_epoch(epoch)
            for _batch in loader:
                n += 1
                release.wait(30)  # holds its batch (and the budget it was charged) meanwhile
        loader.close()
        return n

    def fast() -> int:
        loader = mx8.load("x", agent=agent.url, rank=1, world_size=2, batch_size=8)
        n = 0
        for epoch in range(2):
            loader.set_epoch(epoch)
            n += sum(1 for _ in loader)
        loader.close()
        return n

    slow = asyncio.create_task(asyncio.to_thread(stalled))
    assert await asyncio.wait_for(asyncio.to_thread(fast), 30) == 2 * 10
    release.set()
    assert await slow == 2 * 10
    peak = agent.agent.stats()["peak_inflight_bytes"]
    largest_batch = 8 * 249
    # Over the budget only by the one batch a rank holding nothing may always take.
    assert 0 < peak <= budget + 2 * largest_batch


@pytest.mark.parametrize("budget", ["ample", "one batch"])
async def test_rank_exact_trainer_acknowledges_every_other_batch_unless_the_agent_waits_for_it(
    tmp_path: Path,
    start_coordinator: Any,
    start_agent: Any,
    monkeypatch: pytest.MonkeyPatch,
    budget: str,
) -> None:
    """With room to read ahead, the agent lets the trainer take one more batch before it
    acknowledges (``ack_slack``: half the acknowledgement messages); when the budget holds
    one batch, nothing is read ahead and each batch is acknowledged, or the rank would wait
    forever for a batch the agent cannot read."""
    acks: list[int] = []
    real_ack = rank_server.RankServer.ack

    def counting_ack(self: Any, stream: Any, batch_seq: int) -> int:
        acks.append(batch_seq)
        return real_ack(self, stream, batch_seq)

    monkeypatch.setattr(rank_server.RankServer, "ack", counting_ack)
    manifest = write_local_dataset(tmp_path, SAMPLES)
    coordinator = await start_coordinator(
        manifest, mode="rank-exact", epochs=2, shuffle=True, seed=SEED, block_size=16
    )
    agent = await start_agent(
        coordinator.address, max_inflight_bytes=64 * 1024 * 1024 if budget == "ample" else 256
    )
    job = _job_order(coordinator)
    run = await asyncio.wait_for(asyncio.to_thread(_train, agent.url, 0, 1, 5), 60)
    assert run["payloads_ok"]
    for epoch in range(2):
        assert run["epochs"][epoch] == _expected(job, epoch, 0, 1, 5)
    batches = sum(len(e) for e in run["epochs"])  # 2 x 30, one stream for both epochs
    assert acks[-1] == batches  # the last batch is acknowledged: the rank finished
    if budget == "ample":
        assert len(acks) <= batches // 2 + 3
    else:
        assert acks == list(range(1, batches + 1))
    await agent.result(timeout_s=30)
    assert coordinator.job.drained

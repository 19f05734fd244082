"""Trainer reads (``OpenStream.trainer_reads``), with a real coordinator and agent: a rank
on the agent's host reads its batches' local files itself and gets the very batches the
agent would have read; one that cannot read them falls back to the agent mid-stream
without losing or repeating a batch; batches only the agent can read (sizes unknown,
ranges of one file), or a trainer the agent does not share memory with, get their bytes.
``ReadAhead`` alone: it reads ahead of the trainer, and a changed file is the typed error
beside its batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent import rank_client
from support.manifests import sample_bytes, sample_size, write_local_dataset, write_manifest

from mx8._trainer_reads import ReadAhead
from mx8_common.errors import AccessDeniedError, ObjectChangedError
from mx8_common.rpc.proto import agent_pb2 as pb

SAMPLES = 96
#: Rank r of 2, batches of 8, 2 epochs: 6 steps per epoch.
STEPS = [(e, s) for e in range(2) for s in range(6)]


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    """A shared-memory directory of the test's own (the agent's and the trainers')."""
    path = tmp_path / "shm"
    path.mkdir()
    return path


def _take(url: str, rank: int, *, shm_dir: Path, trainer_reads: bool = True) -> dict[str, Any]:
    """Rank ``rank`` of 2 for the whole job: its batches and how they came."""
    client = rank_client(url, rank, shm_dir=shm_dir, trainer_reads=trainer_reads)
    try:
        got = [(b.epoch, client.last_step, b.sample_ids.tolist(), b.payloads) for b in client]
    finally:
        client.close()
    return {"got": got, "read_here": client.batches_read_here, "shared": client.segments.batches}


async def _agent(
    manifest: Path, start_coordinator: Any, start_agent: Any, shm_dir: Path | str
) -> Any:
    coordinator = await start_coordinator(
        manifest, mode="rank-exact", epochs=2, shuffle=True, seed=5, block_size=16
    )
    return await start_agent(coordinator.address, shm_dir=str(shm_dir))


async def _both_ranks(agent: Any, shm_dir: Path, **kw: Any) -> list[dict[str, Any]]:
    return await asyncio.gather(
        *(asyncio.to_thread(_take, agent.url, r, shm_dir=shm_dir, **kw) for r in range(2))
    )


def _check_batches(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        assert [(e, s) for e, s, _, _ in run["got"]] == STEPS
        assert all(p == [sample_bytes(i) for i in ids] for _, _, ids, p in run["got"])
    ids = sorted(i for run in runs for _, _, batch, _ in run["got"] for i in batch)
    assert ids == sorted(list(range(SAMPLES)) * 2)


async def test_trainer_reads_give_each_rank_the_batches_the_agent_would_read(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, shm_dir: Path
) -> None:
    manifest = write_local_dataset(tmp_path / "a", SAMPLES)
    runs = {}
    for reads in (True, False):  # the same job twice, a fresh coordinator and agent each
        agent = await _agent(manifest, start_coordinator, start_agent, shm_dir)
        runs[reads] = await _both_ranks(agent, shm_dir, trainer_reads=reads)
        stats = agent.agent.stats()
        await agent.result(timeout_s=30)
        _check_batches(runs[reads])
        if reads:
            assert [r["read_here"] for r in runs[reads]] == [12, 12]
            assert [r["shared"] for r in runs[reads]] == [0, 0]
            assert stats["batches_trainer_read"] == 24 and stats["samples_fetched"] == 0
        else:
            assert [r["read_here"] for r in runs[reads]] == [0, 0]
            assert [r["shared"] for r in runs[reads]] == [12, 12]
            assert stats["batches_trainer_read"] == 0
    assert [r["got"] for r in runs[True]] == [r["got"] for r in runs[False]]


async def test_trainer_reads_a_file_the_trainer_cannot_read_falls_back_to_the_agent_in_order(
    tmp_path: Path,
    start_coordinator: Any,
    start_agent: Any,
    shm_dir: Path,
    capfd: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mx8._trainer_reads as trainer_reads

    read_local = trainer_reads.read_local
    calls = threading.local()  # per rank: each stream reads on a thread of its own
    refused: list[str] = []
    lock = threading.Lock()

    def refuse_once(location: str, *args: Any) -> bytes:
        # The 4th file of the third batch of whichever rank gets there first (two batches
        # read and more read ahead): as if not mounted in that trainer's container.
        calls.n = getattr(calls, "n", 0) + 1
        if calls.n == 20:
            with lock:
                if not refused:
                    refused.append(location)
                    raise AccessDeniedError(
                        f"permission denied reading {location}", location=location
                    )
        return read_local(location, *args)

    monkeypatch.setattr(trainer_reads, "read_local", refuse_once)
    agent = await _agent(
        write_local_dataset(tmp_path / "a", SAMPLES), start_coordinator, start_agent, shm_dir
    )
    runs = await _both_ranks(agent, shm_dir)
    await agent.result(timeout_s=30)
    _check_batches(runs)
    fell_back = [r for r in runs if r["shared"]]
    assert len(fell_back) == 1  # the rank that hit the file; the other read all its own
    assert (fell_back[0]["read_here"], fell_back[0]["shared"]) == (2, 10)
    assert sorted(r["read_here"] for r in runs) == [2, 12]
    err = capfd.readouterr().err
    assert err.count("taking their bytes from mx8d-agent instead") == 1
    assert "permission denied reading" in err


async def test_trainer_reads_closing_mid_stream_stops_the_reading_thread(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, shm_dir: Path
) -> None:
    agent = await _agent(
        write_local_dataset(tmp_path / "a", SAMPLES), start_coordinator, start_agent, shm_dir
    )

    def two_batches_then_close(rank: int) -> tuple[int, bool]:
        client = rank_client(agent.url, rank, shm_dir=shm_dir)
        stream = iter(client)
        next(stream), next(stream)
        assert client._read_ahead is not None
        thread = client._read_ahead._thread
        client.close()
        thread.join(5)
        return client.batches_read_here, thread.is_alive()

    got = await asyncio.gather(*(asyncio.to_thread(two_batches_then_close, r) for r in range(2)))
    assert got == [(2, False), (2, False)]


def _ranged_manifest(root: Path) -> Path:
    """The samples as byte ranges of one file (tar members, say)."""
    root.mkdir(parents=True)
    blob = root / "all.bin"
    data = b"".join(sample_bytes(i) for i in range(SAMPLES))
    blob.write_bytes(data)
    rows, at = [], 0
    for i in range(SAMPLES):
        rows.append((str(blob), at, sample_size(i), ""))
        at += sample_size(i)
    return write_manifest(root, rows).path


@pytest.mark.parametrize("dataset", ["sizes_unknown", "ranges_of_one_file"])
async def test_trainer_reads_batches_only_the_agent_can_read_come_with_their_bytes(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, shm_dir: Path, dataset: str
) -> None:
    if dataset == "sizes_unknown":
        manifest = write_local_dataset(tmp_path / "a", SAMPLES, with_lengths=False)
    else:
        manifest = _ranged_manifest(tmp_path / "a")
    agent = await _agent(manifest, start_coordinator, start_agent, shm_dir)
    runs = await _both_ranks(agent, shm_dir)
    stats = agent.agent.stats()
    await agent.result(timeout_s=30)
    _check_batches(runs)
    assert [r["read_here"] for r in runs] == [0, 0]
    assert stats["batches_trainer_read"] == 0


async def test_trainer_reads_need_an_agent_that_shares_the_trainers_memory(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, shm_dir: Path
) -> None:
    # --shm-dir '': the agent takes no probe, so it cannot know it is on the trainer's host.
    agent = await _agent(
        write_local_dataset(tmp_path / "a", SAMPLES), start_coordinator, start_agent, ""
    )
    runs = await _both_ranks(agent, shm_dir)
    stats = agent.agent.stats()
    await agent.result(timeout_s=30)
    _check_batches(runs)
    assert [(r["read_here"], r["shared"]) for r in runs] == [(0, 0), (0, 0)]
    assert stats["batches_trainer_read"] == 0


# -- ReadAhead alone ----------------------------------------------------------------------


def _local(seq: int, paths: list[Path], sizes: list[int]) -> pb.AgentMessage:
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    batch = pb.Batch(batch_seq=seq, offsets=offsets, locations=[str(p) for p in paths])
    batch.local.listed_at = 0.0
    return pb.AgentMessage(batch=batch)


def _files(root: Path, ids: range) -> list[Path]:
    root.mkdir(exist_ok=True)
    paths = []
    for i in ids:
        path = root / f"{i}.bin"
        path.write_bytes(sample_bytes(i))
        paths.append(path)
    return paths


def test_read_ahead_reads_each_local_batch_before_the_trainer_asks(tmp_path: Path) -> None:
    first, second = _files(tmp_path, range(0, 3)), _files(tmp_path, range(3, 6))
    messages = [
        _local(1, first, [sample_size(i) for i in range(0, 3)]),
        _local(2, second, [sample_size(i) for i in range(3, 6)]),
        pb.AgentMessage(end_of_job=True),
    ]
    ahead = ReadAhead(iter(messages))
    ahead._thread.join(10)
    assert not ahead._thread.is_alive()
    for path in first + second:
        path.unlink()  # gone now: what the trainer gets was read before it asked
    assert ahead.next() == (messages[0], [sample_bytes(i) for i in range(0, 3)])
    assert ahead.next() == (messages[1], [sample_bytes(i) for i in range(3, 6)])
    assert ahead.next() == (messages[2], None)
    for _ in range(2):
        with pytest.raises(StopIteration):
            ahead.next()


def test_read_ahead_a_file_of_another_size_is_the_typed_error_beside_its_batch(
    tmp_path: Path,
) -> None:
    paths = _files(tmp_path, range(0, 4))
    paths[3].write_bytes(b"longer than the snapshot said it was" * 20)
    taken: list[int] = []

    def stream() -> Iterator[pb.AgentMessage]:
        for seq, part in ((1, paths[:2]), (2, paths[2:]), (3, paths[:2])):
            taken.append(seq)
            sizes = [sample_size(int(p.stem)) for p in part]
            yield _local(seq, part, sizes)

    ahead = ReadAhead(stream())
    assert ahead.next()[1] == [sample_bytes(0), sample_bytes(1)]
    message, error = ahead.next()
    assert message.batch.batch_seq == 2 and isinstance(error, ObjectChangedError)
    assert "3.bin" in str(error)
    ahead._thread.join(10)
    assert taken == [1, 2]  # nothing read after the failed batch


def test_read_ahead_a_broken_stream_raises_its_error_each_time_asked() -> None:
    class Broken(Exception):
        pass

    def stream() -> Iterator[pb.AgentMessage]:
        yield pb.AgentMessage(end_of_job=True)
        raise Broken("stream reset")

    ahead = ReadAhead(stream())
    assert ahead.next()[1] is None
    for _ in range(2):
        with pytest.raises(Broken, match="stream reset"):
            ahead.next()


def test_read_ahead_a_read_that_hangs_is_named_while_the_trainer_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mx8._trainer_reads as trainer_reads

    paths = _files(tmp_path, range(0, 2))
    read_local = trainer_reads.read_local
    release = threading.Event()

    def hang_on_the_second(location: str, *args: Any) -> bytes:
        if location == str(paths[1]):
            release.wait(10)  # a network file system that stopped answering
        return read_local(location, *args)

    monkeypatch.setattr(trainer_reads, "read_local", hang_on_the_second)
    monkeypatch.setattr(trainer_reads, "_SAY_EVERY_S", 0.05)
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if len(said) == 3:
            release.set()

    message = _local(1, paths, [sample_size(0), sample_size(1)])

    def stream() -> Iterator[pb.AgentMessage]:
        yield message
        time.sleep(0.3)  # the agent has nothing yet: waiting for it is not a read

    ahead = ReadAhead(stream(), say=say)
    assert ahead.next() == (message, [sample_bytes(0), sample_bytes(1)])
    assert len(said) == 3 and all(f"still reading {paths[1]} after" in s for s in said)
    with pytest.raises(StopIteration):
        ahead.next()
    assert len(said) == 3

"""``ReadWorkers``: batches of local files read into shared memory by real worker
processes, with the in-process reader's typed errors, and no worker left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.eventually import assert_eventually

from mx8_common import shm
from mx8_common.errors import ObjectChangedError, ObjectNotFoundError, StorageError
from mx8_common.storage.read_worker import ReadWorkers, _Jobs


def _files(tmp_path: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        data = os.urandom(1000 + 37 * i)
        path = tmp_path / f"s{i}.bin"
        path.write_bytes(data)
        out.append((str(path), data))
    return out


@pytest.fixture
def segment(tmp_path: Path):
    seg = shm.create_segment(1 << 20, tmp_path)
    assert seg is not None
    yield seg
    seg.close()


def _maps_of(pid: int, name: str) -> bool:
    return any(name in (m.path or "") for m in psutil.Process(pid).memory_maps(grouped=False))


async def test_read_workers_fill_the_segment_at_the_offset(tmp_path: Path, segment) -> None:
    files = _files(tmp_path, 6)
    workers = ReadWorkers(2)
    try:
        items = [(p, None, len(d)) for p, d in files[:3]]
        more = [(p, None, len(d)) for p, d in files[3:]]
        took = await workers.read(items, segment, 4096, None)
        took2 = await workers.read(more, segment, 65536, None)  # the other worker
        first = b"".join(d for _, d in files[:3])
        second = b"".join(d for _, d in files[3:])
        assert segment.map[4096 : 4096 + len(first)] == first
        assert segment.map[65536 : 65536 + len(second)] == second
        assert took >= 0 and took2 >= 0
        assert segment.map[:4096] == bytes(4096)  # nothing before the offset
    finally:
        await workers.aclose()


async def test_read_workers_raise_the_readers_typed_errors(tmp_path: Path, segment) -> None:
    (path, data), (other, _) = _files(tmp_path, 2)
    workers = ReadWorkers(1)
    try:
        with pytest.raises(ObjectNotFoundError) as gone:
            await workers.read([(str(tmp_path / "gone.bin"), None, 10)], segment, 0, None)
        assert gone.value.location == str(tmp_path / "gone.bin")
        with pytest.raises(ObjectChangedError, match="changed since the snapshot"):
            await workers.read([(path, None, len(data) + 1)], segment, 0, None)
        listed = time.time() - 3600  # the file was written after this listing
        with pytest.raises(ObjectChangedError, match="modified"):
            await workers.read([(path, None, len(data))], segment, 0, listed)
        # The worker goes on after an error.
        await workers.read([(other, 10, 100)], segment, 0, None)
        assert segment.map[:100] == Path(other).read_bytes()[10:110]
    finally:
        await workers.aclose()


async def test_read_worker_unmaps_a_segment_its_owner_closed(tmp_path: Path) -> None:
    ((path, data),) = _files(tmp_path, 1)
    seg = shm.create_segment(1 << 20, tmp_path)
    assert seg is not None
    workers = ReadWorkers(1)
    try:
        await workers.read([(path, None, len(data))], seg, 0, None)
        (pid,) = workers.pids
        assert _maps_of(pid, seg.name)
        seg.close()  # the ring let go of it: the worker must not keep its memory
        await assert_eventually(lambda: not _maps_of(pid, seg.name))
    finally:
        seg.close()
        await workers.aclose()


async def test_a_job_bigger_than_the_socket_buffer_arrives_whole(tmp_path: Path, segment) -> None:
    # A long path, many times: one job message of several MiB, sent in pieces.
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    path = deep / "one.bin"
    path.write_bytes(b"xy")
    items = [(str(path), None, 2)] * 20_000
    workers = ReadWorkers(1)
    try:
        await workers.read(items, segment, 0, None)
        assert segment.map[:40_000] == b"xy" * 20_000
    finally:
        await workers.aclose()


async def test_a_dead_worker_fails_its_reads_with_one_line_naming_it(
    tmp_path: Path, segment
) -> None:
    ((path, data),) = _files(tmp_path, 1)
    workers = ReadWorkers(1)
    try:
        await workers.read([(path, None, len(data))], segment, 0, None)
        (pid,) = workers.pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(
            StorageError, match=f"local read worker 0 \\(pid {pid}\\) stopped"
        ) as err:
            for _ in range(1000):  # the agent hears of the death at its next read at the latest
                await workers.read([(path, None, len(data))], segment, 0, None)
        assert "\n" not in str(err.value)
    finally:
        await workers.aclose()


async def test_workers_exit_when_the_agent_goes(tmp_path: Path, segment) -> None:
    ((path, data),) = _files(tmp_path, 1)
    workers = ReadWorkers(2)
    await workers.read([(path, None, len(data))], segment, 0, None)
    procs = [psutil.Process(pid) for pid in workers.pids]
    await workers.aclose()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    with pytest.raises(StorageError, match="closed"):
        await workers.read([(path, None, len(data))], segment, 0, None)


def test_a_worker_whose_agent_is_killed_exits_on_its_own(tmp_path: Path) -> None:
    # An "agent" process started here, killed with -9: its worker sees the socket close.
    script = (
        "import asyncio, sys, time\n"
        "from mx8_common import shm\n"
        "from mx8_common.storage.read_worker import ReadWorkers\n"
        "async def main():\n"
        f"    seg = shm.create_segment(1 << 20, __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "    w = ReadWorkers(1)\n"
        f"    await w.read([({str(tmp_path / 'a.bin')!r}, None, 3)], seg, 0, None)\n"
        "    print(w.pids[0], flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    (tmp_path / "a.bin").write_bytes(b"abc")
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        worker = psutil.Process(int(agent.stdout.readline()))
        agent.kill()
        agent.wait()
        worker.wait(timeout=10)  # raises TimeoutExpired when the worker stays
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()


async def test_a_read_that_waits_does_not_hold_up_the_next(tmp_path: Path, segment) -> None:
    # A FIFO's open blocks until someone writes: a read stuck on its storage.
    stuck = tmp_path / "stuck.fifo"
    os.mkfifo(stuck)
    ((path, data),) = _files(tmp_path, 1)
    workers = ReadWorkers(1)
    try:
        waiting = workers.read([(str(stuck), None, 4)], segment, 0, None)
        took = await asyncio.wait_for(
            workers.read([(path, None, len(data))], segment, 4096, None), 10
        )
        assert took >= 0 and not waiting.done()
        assert segment.map[4096 : 4096 + len(data)] == data
        # A writer opening it lets the stuck read go (it then fails: a FIFO has no size).
        os.close(os.open(stuck, os.O_WRONLY))
        with pytest.raises(StorageError):
            await asyncio.wait_for(waiting, 10)
    finally:
        await workers.aclose()


async def test_a_segment_closed_mid_read_is_unmapped_when_the_read_ends(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck.fifo"
    os.mkfifo(stuck)
    seg = shm.create_segment(1 << 20, tmp_path)
    assert seg is not None
    workers = ReadWorkers(1)
    try:
        waiting = workers.read([(str(stuck), None, 4)], seg, 0, None)
        (pid,) = workers.pids
        await assert_eventually(lambda: _maps_of(pid, seg.name))
        seg.close()  # the ring lets go while the worker still reads into it
        # A later job's answer means the worker has handled the "forget" sent before it.
        ((path, data),) = _files(tmp_path, 1)
        other = shm.create_segment(1 << 20, tmp_path)
        assert other is not None
        try:
            await workers.read([(path, None, len(data))], other, 0, None)
        finally:
            other.close()
        assert _maps_of(pid, seg.name)  # kept: a read is still writing into it
        os.close(os.open(stuck, os.O_WRONLY))
        with pytest.raises(StorageError):
            await asyncio.wait_for(waiting, 10)
        await assert_eventually(lambda: not _maps_of(pid, seg.name))
    finally:
        seg.close()
        await workers.aclose()


def _run_jobs(jobs: _Jobs, n_threads: int, log: list[tuple[int, Any]]) -> list[threading.Thread]:
    """The worker's reader threads over ``jobs``; each job is a callable, run and logged
    with the thread that ran it."""

    def work(me: int, job: Any) -> None:
        job()
        log.append((me, job))

    return jobs.start_readers(n_threads, work)


def test_worker_jobs_run_one_at_a_time_while_each_is_quick() -> None:
    # A second thread reading beside the first costs both GIL hand-offs for nothing.
    jobs, log = _Jobs(stuck_s=5.0), []
    running, most = [0], [0]
    lock = threading.Lock()

    def quick() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.001)
        with lock:
            running[0] -= 1

    threads = _run_jobs(jobs, 2, log)
    for _ in range(100):
        jobs.put(quick)
    jobs.close()
    for t in threads:
        t.join(10)
    assert len(log) == 100 and {me for me, _ in log} == {0} and most[0] == 1


def test_worker_job_stuck_on_its_storage_lets_the_next_thread_take_the_next_job() -> None:
    jobs, log = _Jobs(stuck_s=0.05), []
    release = threading.Event()
    started = time.monotonic()

    def stuck() -> None:
        release.wait(30)

    def quick() -> None:
        pass

    threads = _run_jobs(jobs, 2, log)
    jobs.put(stuck)
    jobs.put(quick)
    deadline = time.monotonic() + 10
    while not log and time.monotonic() < deadline:
        time.sleep(0.005)
    assert log == [(1, quick)] and time.monotonic() - started >= 0.05
    release.set()
    jobs.close()
    for t in threads:
        t.join(10)
    assert log == [(1, quick), (0, stuck)]


def test_worker_job_queued_behind_a_job_that_gets_stuck_is_taken_by_the_second_thread() -> None:
    """The second thread saw the first one free (so it waited without a deadline); once
    the first takes a job and gets stuck on it, the second still takes the next job."""
    jobs = _Jobs(stuck_s=0.05)
    jobs.put("stuck")
    jobs.put("next")
    taken: list[Any] = []
    second = threading.Thread(target=lambda: taken.append(jobs.take(1)), daemon=True)
    second.start()
    time.sleep(0.1)  # the second thread waits: the first is free
    assert taken == []
    assert jobs.take(0) == "stuck"  # and never done: stuck on its storage
    second.join(5)
    assert taken == ["next"]

"""FetchPipeline: order, byte budget, back-pressure, errors and cleanup, on local files and S3."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.eventually import assert_eventually
from support.s3_fault_proxy import fault_proxy

from mx8_common.errors import ConfigError, ObjectChangedError, ObjectNotFoundError
from mx8_common.manifest.format import ManifestRecord
from mx8_common.manifest.table import ManifestTable
from mx8_common.storage.fetch_pipeline import (
    FetchBatch,
    FetchConfig,
    FetchPipeline,
    FetchRequest,
    table_requests,
)
from mx8_common.storage.object_reader import ObjectReader
from mx8_common.storage.s3_client import S3Settings
from mx8_common.storage.sample_reader import SampleReader
from mx8_common.testing.local_s3 import LocalS3


def _payload(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def _local_files(
    root: Path,
    sizes: list[int],
    *,
    missing: set[int] = frozenset(),  # type: ignore[assignment]
) -> list[FetchRequest]:
    reqs = []
    for i, size in enumerate(sizes):
        path = root / f"{i:05d}.bin"
        if i not in missing:
            path.write_bytes(_payload(i, size))
        reqs.append(FetchRequest(i, str(path), None, size, tag=("t", i)))
    return reqs


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


@pytest.mark.parametrize("local_group", [1, 5, 32])
async def test_fetch_pipeline_yields_in_request_order(tmp_path: Path, local_group: int) -> None:
    rng = random.Random(1)
    reqs = _local_files(tmp_path, [rng.randint(1, 20_000) for _ in range(200)])
    rng.shuffle(reqs)
    cfg = FetchConfig(concurrency=16, max_inflight_bytes=1 << 20, local_group=local_group)
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        got = [r async for r in pipe]
    assert [r.sample_id for r in got] == [q.sample_id for q in reqs]
    assert [r.tag for r in got] == [q.tag for q in reqs]
    for r, q in zip(got, reqs, strict=True):
        assert r.data == _payload(q.sample_id, q.byte_length or 0)
    assert pipe.stats.samples == pipe.stats.reads == 200
    assert pipe.stats.bytes == sum(q.byte_length or 0 for q in reqs)
    assert pipe.stats.inflight_bytes == 0 and pipe.stats.running == 0


async def test_fetch_pipeline_accepts_async_iterables(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [100] * 30)

    async def gen() -> AsyncIterator[FetchRequest]:
        for q in reqs:
            await asyncio.sleep(0)
            yield q

    async with ObjectReader() as reader, FetchPipeline(reader, gen()) as pipe:
        assert [r.sample_id async for r in pipe] == list(range(30))


@pytest.mark.parametrize("batch_size", [None, 8])
async def test_fetch_pipeline_never_exceeds_budget(tmp_path: Path, batch_size: int | None) -> None:
    rng = random.Random(2)
    reqs = _local_files(tmp_path, [rng.randint(1_000, 5_000) for _ in range(300)])
    budget = 64_000  # > one batch (<= 40 000) + one sample: the budget is never waived
    cfg = FetchConfig(concurrency=32, max_inflight_bytes=budget)
    seen: list[int] = []
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        if batch_size is None:
            async for r in pipe:
                seen.append(pipe.stats.inflight_bytes)
                assert r.data == _payload(r.sample_id, len(r.data))
        else:
            ids: list[int] = []
            async for batch in pipe.batches(batch_size):
                seen.append(pipe.stats.inflight_bytes)
                ids += batch.sample_ids.tolist()
            assert ids == list(range(300))
    assert max(seen) <= budget
    assert pipe.stats.peak_inflight_bytes <= budget
    # The budget was actually the limit (not the concurrency): it filled up.
    assert pipe.stats.peak_inflight_bytes > budget - 5_000


async def test_fetch_pipeline_slow_consumer_back_pressures(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [1_000] * 100)
    cfg = FetchConfig(concurrency=32, max_inflight_bytes=10_000)
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        first = await anext(pipe)
        assert first.sample_id == 0
        # The consumer now stalls: reads fill the budget, then stop.
        await assert_eventually(lambda: pipe.stats.running == 0 and pipe.stats.reads >= 10)
        for _ in range(50):
            await asyncio.sleep(0)  # give a (wrong) feeder every chance to read more
        assert pipe.stats.reads == 10  # 1 held by the consumer + 9 buffered = 10 000 bytes
        assert pipe.stats.inflight_bytes == 10_000
        rest = [r.sample_id async for r in pipe]
    assert rest == list(range(1, 100))
    assert pipe.stats.peak_inflight_bytes <= 10_000


@pytest.mark.parametrize("local_group", [1, 32])
async def test_fetch_pipeline_unknown_sizes_are_settled_before_they_are_handed_out(
    tmp_path: Path, local_group: int
) -> None:
    """A read can finish and be taken by the consumer before its done-callback ran: the
    estimate it was charged must not leave the byte count short (it went negative)."""
    reqs = [
        r._replace(byte_length=None) for r in _local_files(tmp_path, [10 + i for i in range(300)])
    ]
    cfg = FetchConfig(concurrency=8, unknown_size_estimate=1000, local_group=local_group)
    lowest = 0
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        async for batch in pipe.batches(4):
            lowest = min(lowest, pipe.stats.inflight_bytes)
            # What the consumer holds is what arrived, never an estimate.
            assert pipe.stats.inflight_bytes >= batch.nbytes
    assert lowest == 0 and pipe.stats.samples == 300


async def test_fetch_pipeline_oversized_sample_goes_alone(tmp_path: Path) -> None:
    sizes = [500, 5_000, 500, 500, 7_000, 500]
    reqs = _local_files(tmp_path, sizes)
    cfg = FetchConfig(concurrency=8, max_inflight_bytes=1_000)
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        got = [r async for r in pipe]
    assert [len(r.data) for r in got] == sizes
    # Over budget only by one oversized sample next to the one the consumer holds.
    assert pipe.stats.peak_inflight_bytes <= 7_000 + 500


async def test_fetch_pipeline_corrects_unknown_size_estimate(tmp_path: Path) -> None:
    reqs = [q._replace(byte_length=None) for q in _local_files(tmp_path, [3_000] * 20)]
    cfg = FetchConfig(concurrency=4, max_inflight_bytes=100_000, unknown_size_estimate=100)
    seen = []
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        async for r in pipe:
            assert len(r.data) == 3_000
            seen.append(pipe.stats.inflight_bytes)
    # Charged 100 each while reading, 3 000 once they arrived.
    assert pipe.stats.peak_inflight_bytes >= 3_000 * 4
    assert all(b % 100 == 0 for b in seen)


@pytest.mark.parametrize("local_group", [1, 32])
async def test_fetch_pipeline_error_reaches_consumer_in_order(
    tmp_path: Path, local_group: int
) -> None:
    reqs = _local_files(tmp_path, [2_000] * 60, missing={20})
    cfg = FetchConfig(concurrency=4, max_inflight_bytes=1 << 20, local_group=local_group)
    got: list[int] = []
    async with ObjectReader() as reader:
        pipe = FetchPipeline(reader, reqs, cfg)
        with pytest.raises(ObjectNotFoundError) as info:
            async for r in pipe:
                got.append(r.sample_id)
        assert _other_tasks() == set()  # every read and the feeder were cancelled and awaited
    assert got == list(range(20))
    assert info.value.location == reqs[20].location
    assert pipe.stats.reads < 60  # no new reads after the failure was seen


async def test_fetch_pipeline_changed_size_surfaces_original_error(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [1_000] * 5)
    reqs[3] = reqs[3]._replace(byte_length=999)  # the snapshot said 999 bytes
    async with ObjectReader() as reader, FetchPipeline(reader, reqs) as pipe:
        with pytest.raises(ObjectChangedError, match="changed since the snapshot") as info:
            async for batch in pipe.batches(2):
                assert batch.sample_ids.tolist() == [0, 1]
    assert "999 bytes" in str(info.value) and reqs[3].location in str(info.value)


async def test_fetch_pipeline_request_iterator_error_propagates(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [10] * 5)

    def broken() -> Iterator[FetchRequest]:
        yield from reqs
        raise ValueError("request source broke")

    got = []
    async with ObjectReader() as reader:
        pipe = FetchPipeline(reader, broken())
        with pytest.raises(ValueError, match="request source broke"):
            async for r in pipe:
                got.append(r.sample_id)
        assert _other_tasks() == set()
    assert got == [0, 1, 2, 3, 4]


async def test_fetch_pipeline_early_exit_leaves_no_tasks(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [500] * 200)
    async with ObjectReader() as reader:
        async with FetchPipeline(reader, reqs, FetchConfig(concurrency=16)) as pipe:
            async for r in pipe:
                if r.sample_id == 3:
                    break
        assert _other_tasks() == set()
        await pipe.aclose()  # idempotent
        assert [r async for r in pipe] == []


async def test_fetch_pipeline_consumer_cancellation_leaves_no_tasks(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [100] * 3)
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[FetchRequest]:
        for q in reqs:
            yield q
        await never.wait()  # the source stalls: the consumer waits for sample 3
        yield reqs[0]

    async with ObjectReader() as reader:
        async with FetchPipeline(reader, stalls()) as pipe:

            async def consume() -> None:
                async for _ in pipe:
                    pass

            consumer = asyncio.create_task(consume())
            await assert_eventually(lambda: pipe.stats.samples == 3)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        assert _other_tasks() == set()


async def test_fetch_pipeline_batches_join_payloads(tmp_path: Path) -> None:
    sizes = [random.Random(3).randint(1, 300) for _ in range(50)]
    reqs = _local_files(tmp_path, sizes)
    async with ObjectReader() as reader:
        async with FetchPipeline(reader, reqs) as pipe:
            batches = [b async for b in pipe.batches(7)]
        with pytest.raises(ConfigError, match="batch_size"):
            async for _ in FetchPipeline(reader, []).batches(0):
                pass
    assert [len(b) for b in batches] == [7] * 7 + [1]
    for b in batches:
        assert b.offsets[0] == 0 and b.offsets[-1] == len(b.data)
        for j, sid in enumerate(b.sample_ids.tolist()):
            assert bytes(b.payload(j)) == _payload(sid, sizes[sid])
        assert b.tags == [("t", sid) for sid in b.sample_ids.tolist()]


async def test_fetch_pipeline_table_requests_drive_reads(tmp_path: Path) -> None:
    sizes = [random.Random(4).randint(10, 400) for _ in range(64)]
    recs = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"cls{i % 4}" / f"{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_payload(i, size))
        recs.append(ManifestRecord(i, str(path), None, size))
    # One range of a "shard" file too.
    shard = tmp_path / "shard.bin"
    shard.write_bytes(_payload(999, 1_000))
    recs.append(ManifestRecord(64, str(shard), 100, 50))
    table = ManifestTable.from_records(recs, manifest_hash="h")
    order = np.random.default_rng(5).permutation(len(table))
    async with ObjectReader() as reader:
        async with FetchPipeline(reader, table_requests(table, order)) as pipe:
            got = {r.sample_id: r.data async for r in pipe}
        async with FetchPipeline(reader, table_requests(table, iter(range(3)), chunk=2)) as p2:
            assert [r.sample_id async for r in p2] == [0, 1, 2]
    assert len(got) == 65
    for i in range(64):
        assert got[i] == _payload(i, sizes[i])
    assert got[64] == _payload(999, 1_000)[100:150]


async def test_fetch_pipeline_s3_order_survives_slow_head(
    s3_env: LocalS3, s3_sync_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    sizes = [random.Random(6).randint(100, 3_000) for _ in range(40)]
    for i, size in enumerate(sizes):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"s/{i:03d}.bin", Body=_payload(i, size))
    reqs = [
        FetchRequest(i, f"s3://{s3_bucket}/s/{i:03d}.bin", None, size)
        for i, size in enumerate(sizes)
    ]
    reqs.append(FetchRequest(40, f"s3://{s3_bucket}/s/005.bin", 10, 20))  # a ranged read
    (tmp_path / "local.bin").write_bytes(b"local bytes")
    reqs.append(FetchRequest(41, str(tmp_path / "local.bin"), None, 11))  # mixed sources
    with fault_proxy(s3_env.endpoint_url) as proxy:
        held = threading.Event()
        proxy.add_faults("s/000.bin", held)  # sample 0 is held until others have arrived
        settings = S3Settings(endpoint_url=proxy.url, region="us-east-1")
        cfg = FetchConfig(concurrency=8, max_inflight_bytes=20_000)
        reader = ObjectReader(s3_settings=settings)
        async with reader, FetchPipeline(reader, reqs, cfg) as pipe:

            async def release_head() -> None:
                # Samples 1..7 arrive while 0 is held: they wait in the reorder buffer.
                await assert_eventually(lambda: pipe.stats.reads >= 7)
                assert pipe.stats.samples == 0
                held.set()

            releaser = asyncio.create_task(release_head())
            got = [r async for r in pipe]
            await releaser
    assert [r.sample_id for r in got] == list(range(42))
    for r in got[:40]:
        assert r.data == _payload(r.sample_id, sizes[r.sample_id])
    assert got[40].data == _payload(5, sizes[5])[10:30]
    assert got[41].data == b"local bytes"
    assert pipe.stats.peak_inflight_bytes <= 20_000


async def test_fetch_pipeline_s3_reads_run_on_at_most_concurrency_tasks(
    s3_sync_client: Any, s3_bucket: str
) -> None:
    for i in range(60):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"t{i}", Body=_payload(i, 200))
    reqs = [FetchRequest(i, f"s3://{s3_bucket}/t{i}", None, 200) for i in range(60)]
    loop = asyncio.get_running_loop()
    created: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with ObjectReader() as reader:
        await reader.read(reqs[0].location, None, 200)  # the store is built outside the count
        loop.set_task_factory(factory)
        try:
            async with FetchPipeline(reader, reqs, FetchConfig(concurrency=4)) as pipe:
                got = [i async for b in pipe.batches(7) for i in b.sample_ids.tolist()]
        finally:
            loop.set_task_factory(None)
    assert got == list(range(60))
    # Workers take the reads in turn: no task (and no wake-up through one) per read.
    assert 1 <= len(created) <= 4, created
    assert pipe.stats.reads == 60 and _other_tasks() == set()


async def test_fetch_pipeline_batch_error_is_not_held_back_by_a_slow_sample(
    s3_env: LocalS3, s3_sync_client: Any, s3_bucket: str
) -> None:
    for i in range(8):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"b/{i}", Body=_payload(i, 100))
    reqs = [FetchRequest(i, f"s3://{s3_bucket}/b/{i}", None, 100) for i in range(8)]
    reqs[1] = reqs[1]._replace(location=f"s3://{s3_bucket}/b/gone")
    with fault_proxy(s3_env.endpoint_url) as proxy:
        held = threading.Event()
        proxy.add_faults("b/7", held)  # the batch's last sample does not arrive
        reader = ObjectReader(s3_settings=S3Settings(endpoint_url=proxy.url, region="us-east-1"))
        try:
            async with reader, FetchPipeline(reader, reqs, FetchConfig(concurrency=8)) as pipe:
                with pytest.raises(ObjectNotFoundError):
                    async for _ in pipe.batches(8):
                        pass
                assert not held.is_set()
        finally:
            held.set()
    assert _other_tasks() == set()


async def test_fetch_pipeline_s3_changed_and_missing_objects(
    s3_env: LocalS3, s3_sync_client: Any, s3_bucket: str
) -> None:
    for i in range(10):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=f"k{i}", Body=_payload(i, 100))
    base = [FetchRequest(i, f"s3://{s3_bucket}/k{i}", None, 100) for i in range(10)]
    changed = [*base[:6], base[6]._replace(byte_length=101), *base[7:]]
    missing = [*base[:4], base[4]._replace(location=f"s3://{s3_bucket}/gone"), *base[5:]]
    async with ObjectReader() as reader:
        for reqs, error, at in (
            (changed, ObjectChangedError, 6),
            (missing, ObjectNotFoundError, 4),
        ):
            got = []
            with pytest.raises(error):
                async for r in FetchPipeline(reader, reqs, FetchConfig(concurrency=4)):
                    got.append(r.sample_id)
            assert got == list(range(at))
            assert _other_tasks() == set()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"max_inflight_bytes": 0},
        {"unknown_size_estimate": 0},
        {"reorder_window": -1},
        {"local_group": 0},
    ],
)
def test_fetch_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FetchConfig(**kwargs)


def test_fetch_config_reads_sizes_from_env() -> None:
    from mx8_common.config_fields import load_config

    cfg = load_config(
        FetchConfig, ["--max-inflight-bytes", "64MiB"], environ={"MX8_FETCH_CONCURRENCY": "9"}
    )
    assert cfg.max_inflight_bytes == 64 * 1024 * 1024
    assert cfg.concurrency == 9
    assert cfg.window == 16 * 9


def test_fetch_pipeline_reader_must_offer_batched_local_reads() -> None:
    """The pipeline's reader is a ``SampleReader``: a wrapper with only ``read`` (which used
    to turn local grouping off without a word) does not qualify."""

    class ReadOnly:
        async def read(self, location: str, *args: Any, **kwargs: Any) -> bytes:
            return b""

    assert isinstance(ObjectReader(), SampleReader)
    assert not isinstance(ReadOnly(), SampleReader)


async def test_fetch_pipeline_groups_local_reads_and_times_every_sample(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [300] * 40)
    timed: list[tuple[float, int]] = []
    cfg = FetchConfig(concurrency=16, local_group=8)
    async with (
        ObjectReader(on_read=lambda s, n: timed.append((s, n))) as reader,
        FetchPipeline(reader, reqs, cfg) as pipe,
    ):
        assert [r.sample_id async for r in pipe] == list(range(40))
    # Groups of at most 8 files; the first 16 admitted at once make two full ones.
    assert 5 <= pipe.stats.local_batches < 40
    assert reader.stats.local_batches == pipe.stats.local_batches
    assert len(timed) == 40 and all(n == 300 and s >= 0 for s, n in timed)


async def test_fetch_pipeline_looks_up_the_running_loop_per_group_not_per_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each asyncio.get_running_loop() is a getpid() syscall: ~1 per sample before.
    reqs = _local_files(tmp_path, [100] * 320)
    calls = 0
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        nonlocal calls
        calls += 1
        return real()

    async with ObjectReader() as reader:
        monkeypatch.setattr(asyncio, "get_running_loop", counted)
        async with FetchPipeline(reader, reqs, FetchConfig(concurrency=32)) as pipe:
            assert sum([len(b) async for b in pipe.batches(32)]) == 320
        monkeypatch.undo()
    assert pipe.stats.local_batches >= 10
    assert calls < 2 * pipe.stats.local_batches + 5


async def test_fetch_pipeline_held_batches_count_until_released(tmp_path: Path) -> None:
    reqs = _local_files(tmp_path, [1_000] * 40)
    cfg = FetchConfig(concurrency=8, max_inflight_bytes=10_000)
    async with ObjectReader() as reader, FetchPipeline(reader, reqs, cfg) as pipe:
        batches = pipe.batches(4, hold=True)
        held = [await anext(batches), await anext(batches)]  # passed on, not released
        await assert_eventually(lambda: pipe.stats.running == 0 and pipe.stats.reads >= 10)
        for _ in range(50):
            await asyncio.sleep(0)  # give a (wrong) feeder every chance to read more
        # 8 000 held downstream + 2 000 buffered: asking for a batch did not free them.
        assert pipe.stats.reads == 10
        assert pipe.stats.inflight_bytes == 10_000
        pipe.release(held[0])
        await assert_eventually(lambda: pipe.stats.reads == 14)
        assert pipe.stats.inflight_bytes == 10_000
        with pytest.raises(ValueError, match="exactly once"):
            pipe.release(
                FetchBatch(np.zeros(1, np.int64), [b"x" * 20_000], np.array([0, 20_000]), [])
            )
        ids = [i for b in held for i in b.sample_ids.tolist()]
        async for batch in batches:
            ids += batch.sample_ids.tolist()
            pipe.release(batch)
        pipe.release(held[1])
    assert ids == list(range(40))
    assert pipe.stats.peak_inflight_bytes <= 10_000

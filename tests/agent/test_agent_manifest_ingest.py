"""Manifest ingest: direct/cached/bytes parity, fail-closed agents, retries, back-pressure."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent import run_trainer
from support.eventually import assert_eventually
from support.fake_coordinator import FakeCoordinator
from support.logs import Events
from support.manifests import Row, write_local_dataset, write_manifest

from mx8_agent.ingest.manifest_ingest import IngestSettings, ingest_manifest
from mx8_common.errors import (
    CoordinatorError,
    ManifestBadRow,
    ManifestError,
    ManifestHashMismatch,
    ManifestLineTooLong,
    ManifestSchemaMismatch,
    ManifestTruncated,
)
from mx8_common.manifest.format import manifest_hash
from mx8_common.manifest.reader import parse_canonical_manifest_tsv_bytes
from mx8_common.manifest.table import ManifestTable
from mx8_common.rpc.coordinator_client import CoordinatorClient


def mixed_rows(samples: int) -> Iterator[Row]:
    """Rows of every shape: whole objects, ranges, unknown sizes, labels, other hints."""
    for i in range(samples):
        kind = i % 4
        if kind == 0:
            yield f"s3://bucket/train/c{i % 7}/img-{i:07d}.jpg", None, 1 + i, ""
        elif kind == 1:
            label = f"mx8:vision:imagefolder;label_id={i % 5}"
            yield f"s3://bucket/shards/shard-{i // 100:04d}.tar", i * 512, 512, label
        elif kind == 2:
            yield f"/data/local/file-{i}.bin", None, None, ""
        else:
            yield f"file-{i}.txt", None, 3, "text/plain"


def records(table: ManifestTable) -> list[Any]:
    return [table.record(i) for i in range(len(table))]


async def ingest_from(address: str, manifest: bytes, samples: int, **kw: Any) -> Any:
    settings = IngestSettings(
        job_id="default", manifest_hash=manifest_hash(manifest), total_samples=samples, **kw
    )
    async with CoordinatorClient(address) as client:
        return await ingest_manifest(client, settings)


# -- parity ------------------------------------------------------------------------------


async def test_runtime_stream_reader_path_parity_with_bytes_path(
    tmp_path: Path, start_coordinator: Any
) -> None:
    path = write_manifest(tmp_path, mixed_rows(3000)).path
    data = path.read_bytes()
    coordinator = await start_coordinator(path)
    streamed = await ingest_from(coordinator.address, data, 3000)
    assert streamed.mode == "direct"
    assert streamed.path is None  # direct ingest writes no file
    assert streamed.manifest_bytes == len(data)
    from_bytes = list(parse_canonical_manifest_tsv_bytes(data, expected_hash=manifest_hash(data)))
    assert records(streamed.table) == from_bytes
    assert streamed.table.manifest_hash == manifest_hash(data)
    assert (streamed.table.label_id == ManifestTable.from_bytes(data).label_id).all()


async def test_lease_manifest_stream_parity_with_cached_path(
    tmp_path: Path, start_coordinator: Any, logs: Events
) -> None:
    path = write_manifest(tmp_path / "m", mixed_rows(3000)).path
    data = path.read_bytes()
    coordinator = await start_coordinator(path)
    cache = tmp_path / "cache"
    direct = await ingest_from(coordinator.address, data, 3000)
    cached = await ingest_from(coordinator.address, data, 3000, mode="cached", cache_dir=cache)
    assert cached.path == cache / f"{manifest_hash(data)}.tsv"
    assert cached.path.read_bytes() == data
    assert records(cached.table) == records(direct.table)
    assert list(cache.iterdir()) == [cached.path]  # no temp file left behind
    # A second cached ingest reuses the verified copy; a damaged copy is fetched again.
    logs.clear()
    await ingest_from(coordinator.address, data, 3000, mode="cached", cache_dir=cache)
    cached.path.write_bytes(data[:-10])
    again = await ingest_from(coordinator.address, data, 3000, mode="cached", cache_dir=cache)
    events = logs.names()
    assert "manifest_cache_hit" in events
    assert "manifest_cache_invalid" in events
    assert records(again.table) == records(direct.table)


# -- fail closed at agent level -----------------------------------------------------------


async def run_agent_against(
    fake: FakeCoordinator, start_agent: Any, logs: Events, **config: Any
) -> tuple[BaseException | None, Any]:
    """Run an agent with a trainer already attached (events from here on in ``logs``);
    return its error and the trainer's run."""
    address = await fake.start()
    fake.release.clear()  # hold the stream until the trainer is connected
    logs.clear()
    running = await start_agent(address, **config)
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.update(run=run_trainer(running.url, batch_size=8)), daemon=True
    )
    thread.start()
    await assert_eventually(lambda: running.agent.hub.sessions)
    fake.release.set()
    error: BaseException | None = None
    try:
        await running.result(timeout_s=30)
    except BaseException as exc:
        error = exc
    await asyncio.to_thread(thread.join, 30)
    await fake.stop()
    return error, box.get("run")


@pytest.mark.parametrize("fault", ["cut", "cut_unannounced"])
async def test_manifest_stream_truncated_fails_closed(
    tmp_path: Path, start_agent: Any, fault: str, logs: Events
) -> None:
    data = write_local_dataset(tmp_path, 200).read_bytes()
    fake = FakeCoordinator(data, total_samples=200, fault=fault)
    error, trainer = await run_agent_against(fake, start_agent, logs)
    events = logs.names()
    expected = ManifestTruncated if fault == "cut" else ManifestHashMismatch
    assert isinstance(error, expected), error
    assert expected.event in events
    assert "lease_started" not in events
    assert fake.request_lease_calls == 0
    # The waiting trainer hears why instead of hanging: the same typed error.
    assert type(trainer.error) is expected
    assert str(error) in str(trainer.error)


@pytest.mark.parametrize("fault", ["header_schema", "chunk_schema"])
async def test_manifest_stream_schema_mismatch_hard_fails(
    tmp_path: Path, start_agent: Any, fault: str, logs: Events
) -> None:
    data = write_local_dataset(tmp_path, 200).read_bytes()
    fake = FakeCoordinator(data, total_samples=200, fault=fault)
    error, _trainer = await run_agent_against(fake, start_agent, logs)
    events = logs.names()
    assert isinstance(error, ManifestSchemaMismatch), error
    assert "manifest_schema_mismatch" in events
    assert "lease_started" not in events
    assert fake.request_lease_calls == 0


@pytest.mark.parametrize(
    ("fault", "config", "error_type"),
    [
        ("hash", {}, ManifestHashMismatch),
        ("bad_row", {}, ManifestBadRow),
        ("none", {"max_line_bytes": 40}, ManifestLineTooLong),
    ],
)
@pytest.mark.parametrize("mode", ["direct", "cached"])
async def test_manifest_stream_invalid_content_fails_closed(
    tmp_path: Path,
    start_agent: Any,
    fault: str,
    config: dict[str, Any],
    error_type: type[ManifestError],
    mode: str,
    logs: Events,
) -> None:
    data = write_local_dataset(tmp_path, 200).read_bytes()
    fake = FakeCoordinator(data, total_samples=200, fault=fault)
    error, _trainer = await run_agent_against(
        fake,
        start_agent,
        logs,
        manifest_ingest=mode,
        cache_dir=str(tmp_path / "cache"),
        **config,
    )
    events = logs.names()
    assert isinstance(error, error_type), error
    assert error_type.event in events
    assert "lease_started" not in events
    assert fake.request_lease_calls == 0
    if mode == "cached":
        assert not any((tmp_path / "cache").glob("*.tsv"))  # nothing half-verified kept


async def test_manifest_ingest_valid_stream_leases_and_delivers(
    tmp_path: Path, start_agent: Any, logs: Events
) -> None:
    # The control of the fail-closed tests: same fake, same trainer, a good stream.
    data = write_local_dataset(tmp_path, 200).read_bytes()
    fake = FakeCoordinator(data, total_samples=200, fault="none")
    error, trainer = await run_agent_against(fake, start_agent, logs)
    events = logs.names()
    assert error is None
    assert "lease_started" in events
    assert fake.request_lease_calls >= 1
    assert trainer.error is None
    assert sorted(trainer.ids) == list(range(200))
    assert ("L1", 200) in fake.reports


async def test_manifest_ingest_retries_dropped_connection(tmp_path: Path, logs: Events) -> None:
    data = write_local_dataset(tmp_path, 500).read_bytes()
    fake = FakeCoordinator(data, total_samples=500, fault="drop_once", chunk_bytes=1024)
    address = await fake.start()
    try:
        logs.clear()
        result = await ingest_from(address, data, 500, backoff_base_s=0.01)
    finally:
        await fake.stop()
    assert fake.stream_calls == 2
    assert len(result.table) == 500
    retry = logs.named("manifest_ingest_retry")[0]
    assert "UNAVAILABLE" in retry["error"] or "unreachable" in retry["error"]


async def test_manifest_ingest_gives_up_after_attempts(tmp_path: Path) -> None:
    data = write_local_dataset(tmp_path, 100).read_bytes()
    fake = FakeCoordinator(data, total_samples=100)
    address = await fake.start()
    await fake.stop()  # nothing listens any more: every attempt is UNAVAILABLE
    with pytest.raises((ManifestError, CoordinatorError), match=r"stream broke|unreachable"):
        await ingest_from(address, data, 100, attempts=2, backoff_base_s=0.01)


async def test_manifest_stream_backpressure_bounded(tmp_path: Path) -> None:
    """A 200k-row stream is parsed with a bounded carry, a bounded queue, never whole."""
    written = write_manifest(
        tmp_path,
        200_000,
        location=lambda i: f"s3://bucket/train/class-{i % 100:03d}/img-{i:08d}.jpg",
        byte_length=lambda i: 1000 + i,
    )
    data = written.path.read_bytes()
    chunk = 64 * 1024
    fake = FakeCoordinator(data, total_samples=200_000, chunk_bytes=chunk)
    address = await fake.start()
    try:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = await ingest_from(address, data, 200_000, max_line_bytes=4096)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        await fake.stop()
    stats = result.stats
    assert stats.bytes == len(data)
    assert stats.peak_queued_chunks <= 4
    assert stats.peak_carry_bytes <= chunk + 4096
    # Never the whole manifest at once: the table plus a few chunks and builder slack.
    assert peak < result.table.nbytes * 2 + 8 * chunk
    assert peak < len(data)


@pytest.mark.parametrize(("min_rows", "file_backed"), [(200, True), (201, False)])
async def test_agent_table_is_file_backed_from_table_file_min_rows(
    tmp_path: Path, start_agent: Any, logs: Events, min_rows: int, file_backed: bool
) -> None:
    data = write_local_dataset(tmp_path, 200).read_bytes()
    fake = FakeCoordinator(data, total_samples=200)
    error, trainer = await run_agent_against(
        fake, start_agent, logs, cache_dir=str(tmp_path / "cache"), table_file_min_rows=min_rows
    )
    assert error is None and trainer.error is None
    assert sorted(trainer.ids) == list(range(200))  # served through the same lookups
    (ingested,) = logs.named("manifest_ingested")
    table_dir = tmp_path / "cache" / "tables" / manifest_hash(data)
    assert ingested["table_file"] == (str(table_dir) if file_backed else "")
    assert (table_dir / "meta.json").exists() == file_backed

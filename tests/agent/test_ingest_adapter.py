"""The bounded-carry adapter from an async chunk stream to the reader-first parser."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from mx8_agent.ingest.adapter import IngestStats, StreamChunk, ingest_chunk_stream
from mx8_common.errors import ManifestLineTooLong, ManifestSchemaMismatch, ManifestTruncated
from mx8_common.manifest.format import ManifestRecord, encode_manifest
from mx8_common.manifest.reader import parse_canonical_manifest_tsv_reader

RECORDS = [ManifestRecord(i, f"s3://bkt/obj-{i:05d}", None, 100 + i, "") for i in range(2000)]
DATA = encode_manifest(RECORDS)


async def _chunks(data: bytes, size: int, *, schema_at: dict[int, int] | None = None):
    for n, off in enumerate(range(0, len(data), size)):
        version = (schema_at or {}).get(n, 0)
        yield StreamChunk(off, data[off : off + size], version)
        await asyncio.sleep(0)


def _parse(reader) -> list[ManifestRecord]:
    return list(parse_canonical_manifest_tsv_reader(reader, max_line_bytes=1024))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096, len(DATA)])
async def test_ingest_adapter_parses_any_chunking_identically(chunk_size: int) -> None:
    # Byte-at-a-time is slow through a thread hop per chunk, so it gets a prefix.
    count = 40 if chunk_size == 1 else len(RECORDS)
    data = encode_manifest(RECORDS[:count])
    got = await ingest_chunk_stream(
        _chunks(data, chunk_size), _parse, max_line_bytes=1024, expected_total_bytes=len(data)
    )
    assert got == RECORDS[:count]


async def test_manifest_stream_truncated_fails_closed() -> None:
    cut = DATA[: len(DATA) // 2]
    # Cut mid-line: the parser sees a line with no LF.
    with pytest.raises(ManifestTruncated):
        await ingest_chunk_stream(_chunks(cut, 1000), _parse, max_line_bytes=1024)
    # Cut on a line end but short of the announced length.
    on_line = DATA[: DATA.index(b"\n", len(DATA) // 2) + 1]
    with pytest.raises(ManifestTruncated, match=f"of {len(DATA)} bytes"):
        await ingest_chunk_stream(
            _chunks(on_line, 1000), _parse, max_line_bytes=1024, expected_total_bytes=len(DATA)
        )


async def test_manifest_stream_transport_error_is_truncation() -> None:
    async def broken() -> AsyncIterator[StreamChunk]:
        yield StreamChunk(0, DATA[:5000])
        raise ConnectionResetError("peer went away")

    with pytest.raises(ManifestTruncated, match="broke after 5000 bytes") as info:
        await ingest_chunk_stream(broken(), _parse, max_line_bytes=1024)
    assert isinstance(info.value.__cause__, ConnectionResetError)


async def test_manifest_stream_schema_mismatch_hard_fails() -> None:
    seen_rows: list[int] = []

    def parse_counting(reader) -> None:
        for rec in parse_canonical_manifest_tsv_reader(reader, max_line_bytes=1024):
            seen_rows.append(rec.sample_id)

    with pytest.raises(ManifestSchemaMismatch, match="schema_version 1"):
        await ingest_chunk_stream(
            _chunks(DATA, 4096, schema_at={3: 1}), parse_counting, max_line_bytes=1024
        )
    # It failed as soon as the bad chunk arrived, not at the end of the stream.
    assert len(seen_rows) < len(RECORDS) // 2


async def test_manifest_stream_gap_in_offsets_is_truncation() -> None:
    async def gappy() -> AsyncIterator[StreamChunk]:
        yield StreamChunk(0, DATA[:100])
        yield StreamChunk(200, DATA[200:300])

    with pytest.raises(ManifestTruncated, match="offset 200 where 100"):
        await ingest_chunk_stream(gappy(), _parse, max_line_bytes=1024)


async def test_manifest_stream_backpressure_bounded() -> None:
    """A fast producer waits for a slow parser; carry never exceeds bound + one chunk."""
    chunk_size = 512
    max_line = 1024
    queue_chunks = 2
    produced = 0
    consumed = 0
    max_lead = 0
    lock = threading.Lock()

    async def fast_producer() -> AsyncIterator[StreamChunk]:
        nonlocal produced, max_lead
        for off in range(0, len(DATA), chunk_size):
            data = DATA[off : off + chunk_size]
            with lock:
                produced += len(data)
                max_lead = max(max_lead, produced - consumed)
            yield StreamChunk(off, data)

    class CountingReader:
        def __init__(self, inner) -> None:
            self.inner = inner

        def readline(self, size: int = -1) -> bytes:
            nonlocal consumed
            line = self.inner.readline(size)
            with lock:
                consumed += len(line)
            return line

    def slow_parse(reader) -> int:
        n = 0
        for _ in parse_canonical_manifest_tsv_reader(
            CountingReader(reader), max_line_bytes=max_line
        ):
            n += 1
            if n % 100 == 0:
                threading.Event().wait(0.002)
        return n

    stats = IngestStats()
    count = await ingest_chunk_stream(
        fast_producer(), slow_parse, max_line_bytes=max_line, queue_chunks=queue_chunks, stats=stats
    )
    assert count == len(RECORDS)
    assert stats.peak_carry_bytes <= max_line + chunk_size
    assert stats.peak_queued_chunks <= queue_chunks
    # Ahead of the parser: the queued chunks, the carry, the chunk the pump holds and the one
    # being produced. Nothing more, however fast the producer is.
    assert max_lead <= (queue_chunks + 2) * chunk_size + max_line + chunk_size


async def test_manifest_stream_line_over_carry_bound_fails_closed() -> None:
    data = b"schema_version=0\n0\t" + b"x" * 10_000 + b"\t\t\t\n"
    stats = IngestStats()
    with pytest.raises(ManifestLineTooLong):
        await ingest_chunk_stream(_chunks(data, 256), _parse, max_line_bytes=1024, stats=stats)
    assert stats.peak_carry_bytes <= 1024 + 256


async def test_ingest_adapter_cancellation_releases_parser_thread() -> None:
    started = threading.Event()
    parser_done = threading.Event()

    async def stalled() -> AsyncIterator[StreamChunk]:
        yield StreamChunk(0, b"schema_version=0\n")
        started.set()
        await asyncio.sleep(3600)

    def parse_then_signal(reader) -> list[ManifestRecord]:
        try:
            return _parse(reader)
        finally:
            parser_done.set()

    task = asyncio.create_task(
        ingest_chunk_stream(stalled(), parse_then_signal, max_line_bytes=1024)
    )
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The parser thread was woken with an error instead of waiting forever for a chunk.
    assert await asyncio.to_thread(parser_done.wait, 5)

"""Bounded-carry adapter from an async stream of manifest chunks to a blocking reader.

The transport (a gRPC server stream) produces ``StreamChunk``s on the event loop; the
parser is blocking code pulling lines. ``ingest_chunk_stream`` runs the parser in a
thread and pumps chunks to it through a bounded queue, so a producer faster than the
parser waits instead of piling up bytes. The reader keeps at most one partial line (the
carry) of ``max_line_bytes``: a longer line fails closed rather than growing the buffer.
Memory therefore stays under ``max_line_bytes + queue_chunks * chunk size``.

Every chunk is checked before the parser sees it: schema version, contiguous offsets,
and at the end the announced total length. A stream that ends early, or whose transport
breaks, surfaces in the parser as ``ManifestTruncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from mx8_common.errors import (
    ManifestError,
    ManifestLineTooLong,
    ManifestSchemaMismatch,
    ManifestTruncated,
)
from mx8_common.manifest.fast_parse import next_block_end
from mx8_common.manifest.format import SCHEMA_VERSION
from mx8_common.manifest.reader import DEFAULT_MAX_LINE_BYTES

__all__ = ["BoundedCarryReader", "IngestStats", "StreamChunk", "ingest_chunk_stream"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One ordered piece of a manifest stream."""

    offset: int
    data: bytes
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class IngestStats:
    """What an ingest moved and the most it ever held."""

    chunks: int = 0
    bytes: int = 0
    peak_carry_bytes: int = 0
    peak_queued_chunks: int = 0


_EOF = object()


class BoundedCarryReader:
    """Blocking ``readline``/``read_block``/``read`` over chunks handed in from the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        *,
        max_line_bytes: int,
        stats: IngestStats,
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._max_line_bytes = max_line_bytes
        self._stats = stats
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.closed = threading.Event()

    def _fill(self) -> bool:
        """Pull one more chunk into the carry; False at a clean end of stream."""
        if self._eof:
            return False
        if self.closed.is_set():
            raise ManifestTruncated("manifest ingest was cancelled before the stream ended")
        item = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop).result()
        if item is _EOF:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        assert isinstance(item, bytes)
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += item
        return True

    def _note_carry(self) -> None:
        carry = len(self._buf) - self._pos
        if carry > self._stats.peak_carry_bytes:
            self._stats.peak_carry_bytes = carry

    def readline(self, size: int = -1, /) -> bytes:
        cap = self._max_line_bytes + 1
        limit = cap if size is None or size < 0 else min(size, cap)
        while True:
            end = self._buf.find(b"\n", self._pos, self._pos + limit)
            if end >= 0:
                line = bytes(self._buf[self._pos : end + 1])
                self._pos = end + 1
                return line
            if len(self._buf) - self._pos >= limit:
                line = bytes(self._buf[self._pos : self._pos + limit])
                self._pos += limit
                return line
            if len(self._buf) - self._pos > self._max_line_bytes:
                raise ManifestLineTooLong(
                    f"a manifest line exceeds {self._max_line_bytes} bytes "
                    "(MX8_AGENT_MANIFEST_STREAM_MAX_LINE_BYTES)"
                )
            if not self._fill():
                line = bytes(self._buf[self._pos :])
                self._pos = len(self._buf)
                return line
            self._note_carry()

    def read_block(self, max_bytes: int, /) -> bytes:
        """Whole lines, at most ``max_bytes`` of them (see ``manifest_fast_parse.BlockReader``).

        Lines already buffered are handed out before another chunk is pulled, so the carry
        stays what ``readline`` keeps: one partial line of at most ``max_line_bytes``.
        """
        cap = self._max_line_bytes + 1
        while True:
            end = next_block_end(self._buf, self._pos, max_bytes, cap)
            if end is None:
                if self._fill():
                    self._note_carry()
                    continue
                end = len(self._buf)
            # One copy (a bytearray slice would copy twice); the view is released at once
            # so the buffer can still be resized by the next fill.
            with memoryview(self._buf) as view:
                out = bytes(view[self._pos : end])
            self._pos = end
            return out

    def read(self, size: int = -1, /) -> bytes:
        while size < 0 or len(self._buf) - self._pos < size:
            if size < 0 and len(self._buf) - self._pos > self._max_line_bytes:
                raise ManifestLineTooLong("read() without a size would exceed the carry bound")
            if not self._fill():
                break
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        return out


async def _pump(
    chunks: AsyncIterator[StreamChunk],
    queue: asyncio.Queue[object],
    stats: IngestStats,
    expected_total_bytes: int | None,
    expected_schema_version: int,
) -> None:
    offset = 0
    try:
        async for chunk in chunks:
            if chunk.schema_version != expected_schema_version:
                raise ManifestSchemaMismatch(
                    f"manifest stream chunk at offset {chunk.offset} has schema_version "
                    f"{chunk.schema_version}, expected {expected_schema_version}; refusing a "
                    "mixed-schema stream"
                )
            if chunk.offset != offset:
                raise ManifestTruncated(
                    f"manifest stream chunk at offset {chunk.offset} where {offset} was "
                    "expected: chunks were lost or reordered"
                )
            if expected_total_bytes is not None and offset + len(chunk.data) > expected_total_bytes:
                raise ManifestTruncated(
                    f"manifest stream sent more than the announced {expected_total_bytes} bytes"
                )
            offset += len(chunk.data)
            stats.chunks += 1
            stats.bytes = offset
            await queue.put(chunk.data)
            stats.peak_queued_chunks = max(stats.peak_queued_chunks, queue.qsize())
        if expected_total_bytes is not None and offset != expected_total_bytes:
            raise ManifestTruncated(
                f"manifest stream ended after {offset} of {expected_total_bytes} bytes"
            )
        await queue.put(_EOF)
    except ManifestError as exc:
        await queue.put(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # transport failures: the stream is incomplete
        err = ManifestTruncated(
            f"manifest stream broke after {offset} bytes: {type(exc).__name__}: {exc}"
        )
        err.__cause__ = exc
        await queue.put(err)


async def ingest_chunk_stream(
    chunks: AsyncIterator[StreamChunk],
    consume: Callable[[BoundedCarryReader], T],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    queue_chunks: int = 4,
    expected_total_bytes: int | None = None,
    expected_schema_version: int = SCHEMA_VERSION,
    stats: IngestStats | None = None,
) -> T:
    """Run ``consume(reader)`` in a thread while feeding it ``chunks``; return its result.

    Any error (from the stream checks, the transport or ``consume``) propagates; the
    pump and the thread are both finished before this returns.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_chunks)
    stats = stats if stats is not None else IngestStats()
    reader = BoundedCarryReader(loop, queue, max_line_bytes=max_line_bytes, stats=stats)
    pump = asyncio.create_task(
        _pump(chunks, queue, stats, expected_total_bytes, expected_schema_version)
    )
    try:
        return await asyncio.to_thread(consume, reader)
    finally:
        reader.closed.set()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        # Wake a parser thread still waiting for a chunk (we were cancelled) so it exits.
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(ManifestTruncated("manifest ingest was cancelled before the stream ended"))

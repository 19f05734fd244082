"""Fail-closed manifest ingest: coordinator stream -> validated ``ManifestTable``.

Two paths give identical tables:

* **direct** (default): ``GetManifestStream`` chunks (zlib-encoded on the wire when the
  coordinator offers it, decoded with a bounded, exact-length check) go through the
  bounded-carry adapter (``ingest_chunk_stream``: schema version of every chunk,
  contiguous offsets, the announced length) into the table builder (schema header,
  sequential ids, rows, line bound, hash), which takes whole lines a block at a time
  (``read_block``) and parses each block vectorized into the compact table's columns;
  no manifest file is written.
* **cached**: the same checked stream is copied to ``<cache_dir>/<hash>.tsv`` (temp file +
  rename, hash verified before the rename), then parsed by path. A copy already in the
  cache is reused when it still parses to the hash.

Either path builds the table in memory, or, when ``table_dir`` is set (the agent sets it
for manifests of at least ``--table-file-min-rows`` rows), appends its columns to files
under ``table_dir/<hash>/`` and memory-maps them (``mx8_common.manifest.table_file``), so
the agent's RSS does not grow with the manifest. Those files are sealed only after the
hash check passed; a failed ingest removes them.

Any manifest problem raises its ``ManifestError`` after emitting its event
(``manifest_stream_truncated``, ``manifest_schema_mismatch``, ``manifest_line_too_long``,
``manifest_hash_mismatch``, ``manifest_bad_row``...): the caller must not lease. A
dropped connection (UNAVAILABLE), or a stream that stalls (no chunk for
``chunk_timeout_s``: ``manifest_stream_truncated`` caused by DEADLINE_EXCEEDED), is
retried with jittered backoff instead. The cache file name is the announced hash, checked
first (``cache_path``): nothing outside ``cache_dir`` is ever written or removed.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mx8_agent.ingest.adapter import (
    BoundedCarryReader,
    IngestStats,
    StreamChunk,
    ingest_chunk_stream,
)
from mx8_common.errors import (
    CoordinatorError,
    CoordinatorReplyError,
    ManifestError,
    ManifestHashMismatch,
    ManifestSchemaMismatch,
    ManifestTruncated,
    StoreError,
)
from mx8_common.manifest.chunk_codec import ENCODINGS, decode_chunk
from mx8_common.manifest.fast_parse import BlockReader, FileBlockReader
from mx8_common.manifest.format import SCHEMA_VERSION
from mx8_common.manifest.hashing import copy_hashed
from mx8_common.manifest.table import ManifestTable
from mx8_common.manifest.table_file import build_file_table, table_dir_name
from mx8_common.obs.events import Throttled, emit
from mx8_common.retry import Backoff, Retry
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.store.base import check_hash

T = TypeVar("T")

__all__ = ["IngestResult", "IngestSettings", "cache_path", "ingest_manifest", "is_transient"]

_COMPONENT = "agent"
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@dataclass(frozen=True, kw_only=True)
class IngestSettings:
    """What to ingest and how (built by the agent from its config and registration)."""

    job_id: str
    manifest_hash: str
    total_samples: int
    schema_version: int = SCHEMA_VERSION
    mode: str = "direct"
    max_line_bytes: int = 8 * 1024 * 1024
    cache_dir: Path | None = None
    #: Where a file-backed table is built (None: the table is held in memory).
    table_dir: Path | None = None
    attempts: int = 5
    #: Longest wait for the next chunk: a stream that stalls is cut (and retried).
    chunk_timeout_s: float = 30.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0

    @property
    def backoff(self) -> Backoff:
        """The retry policy of transient ingest failures (full jitter, ``attempts`` tries)."""
        return Backoff(base_s=self.backoff_base_s, max_s=self.backoff_max_s, attempts=self.attempts)


@dataclass(frozen=True)
class IngestResult:
    """A validated manifest and what ingesting it cost."""

    table: ManifestTable
    mode: str
    seconds: float
    manifest_bytes: int
    stats: IngestStats
    path: Path | None = None


def is_transient(exc: BaseException) -> bool:
    """True for a dropped/unreachable coordinator, also when it cut a stream short."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, CoordinatorError) and cause.code in _TRANSIENT_CODES:
            return True
        cause = cause.__cause__
    return False


async def _checked_chunks(
    client: CoordinatorClient, settings: IngestSettings
) -> tuple[AsyncIterator[StreamChunk], int | None, Any]:
    """Open the stream, check its first chunk's announcement, re-yield it as ``StreamChunk``s."""
    stream = client.get_manifest_stream(
        settings.job_id, settings.manifest_hash, accept_encodings=ENCODINGS
    )
    received = 0

    async def next_chunk() -> Any:
        # A coordinator that goes silent with the connection open must not hold the agent
        # forever: the stall is a cut stream, retried like a dropped connection.
        try:
            async with asyncio.timeout(settings.chunk_timeout_s):
                return await anext(stream)
        except TimeoutError:
            stalled = CoordinatorError(
                f"no manifest chunk for {settings.chunk_timeout_s}s", code="DEADLINE_EXCEEDED"
            )
            raise ManifestTruncated(
                f"the manifest stream stalled after {received} bytes (no chunk for "
                f"{settings.chunk_timeout_s}s, --manifest-chunk-timeout-s); the coordinator "
                "is overloaded or its link is stuck"
            ) from stalled

    try:
        first = await next_chunk()
    except StopAsyncIteration:
        await stream.aclose()
        raise ManifestTruncated(
            "the coordinator sent an empty manifest stream (not even the schema header); "
            "check the coordinator's manifest store"
        ) from None
    except BaseException:
        await stream.aclose()
        raise
    if first.manifest_hash and first.manifest_hash != settings.manifest_hash:
        await stream.aclose()
        raise ManifestHashMismatch(
            f"the manifest stream announces hash {first.manifest_hash}, not the "
            f"{settings.manifest_hash} RegisterNode returned; the coordinator is serving "
            "another snapshot: restart it or this agent"
        )
    total = int(first.total_bytes) or None

    async def decoded(chunk: Any) -> StreamChunk:
        data = bytes(chunk.data)
        if chunk.encoding:
            # zlib releases the GIL: decoding overlaps the parser thread.
            data = await asyncio.to_thread(
                decode_chunk,
                data,
                encoding=chunk.encoding,
                raw_length=int(chunk.raw_length),
                offset=int(chunk.offset),
            )
        return StreamChunk(int(chunk.offset), data, int(chunk.schema_version))

    async def chunks() -> AsyncIterator[StreamChunk]:
        nonlocal received
        received = len(first.data)
        yield await decoded(first)
        while True:
            try:
                chunk = await next_chunk()
            except StopAsyncIteration:
                return
            received += len(chunk.data)
            yield await decoded(chunk)

    return chunks(), total, stream


def _build_table(reader: BlockReader, settings: IngestSettings) -> ManifestTable:
    # Blocks of whole lines straight into the table's columns (vectorized); same checks
    # and errors as the row-by-row reference parser. A file-backed table appends the
    # columns to files under ``table_dir`` and maps them once the hash matched.
    if settings.table_dir is not None:
        return build_file_table(
            reader,
            root=settings.table_dir,
            expected_hash=settings.manifest_hash,
            max_line_bytes=settings.max_line_bytes,
        )
    return ManifestTable.from_block_reader(
        reader, max_line_bytes=settings.max_line_bytes, expected_hash=settings.manifest_hash
    )


def _table_from_path(path: Path, settings: IngestSettings) -> ManifestTable:
    with open(path, "rb", buffering=1 << 20) as f:
        reader = FileBlockReader(f, max_line_bytes=settings.max_line_bytes)
        return _build_table(reader, settings)


async def _consume_stream(
    client: CoordinatorClient,
    settings: IngestSettings,
    stats: IngestStats,
    consume: Callable[[BoundedCarryReader], T],
) -> T:
    """Open the checked manifest stream, run ``consume`` over it, always close the stream."""
    chunks, total, stream = await _checked_chunks(client, settings)
    try:
        return await ingest_chunk_stream(
            chunks,
            consume,
            max_line_bytes=settings.max_line_bytes,
            expected_total_bytes=total,
            expected_schema_version=settings.schema_version,
            stats=stats,
        )
    finally:
        await stream.aclose()


async def _ingest_direct(
    client: CoordinatorClient, settings: IngestSettings, stats: IngestStats
) -> tuple[ManifestTable, None]:
    table = await _consume_stream(
        client, settings, stats, lambda reader: _build_table(reader, settings)
    )
    return table, None


def cache_path(directory: Path, manifest_hash: str) -> Path:
    """``<directory>/<hash>.tsv``; the hash came from a peer, so it is checked first and
    the path must resolve inside ``directory`` (no ``..``, no separator, no symlink out)."""
    try:
        check_hash(manifest_hash)
    except StoreError:
        raise CoordinatorReplyError(
            f"the coordinator named manifest {manifest_hash!r}, not 64 lowercase hex digits; "
            "refusing to use it as a cache file name: fix or restart the coordinator",
            field="manifest_hash",
        ) from None
    root = directory.resolve()
    path = (root / f"{manifest_hash}.tsv").resolve()
    if path.parent != root:
        raise CoordinatorReplyError(
            f"the cache file of manifest {manifest_hash} resolves to {path}, outside the "
            f"cache dir {root}; remove the symlink there",
            field="manifest_hash",
        )
    return path


def _copy_to_file(reader: BoundedCarryReader, directory: Path, manifest_hash: str) -> Path:
    """Copy the checked stream to a temp file, verify its hash, rename it into place."""
    final = cache_path(directory, manifest_hash)
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=directory)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = copy_hashed(reader.read, f.write)
            f.flush()
            os.fsync(f.fileno())
        if digest != manifest_hash:
            raise ManifestHashMismatch(
                f"downloaded manifest bytes hash to {digest}, not the announced "
                f"{manifest_hash}; the coordinator's copy is corrupt or was replaced"
            )
        os.replace(tmp, final)
        return final
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def _ingest_cached(
    client: CoordinatorClient, settings: IngestSettings, stats: IngestStats
) -> tuple[ManifestTable, Path]:
    directory = settings.cache_dir or Path(tempfile.gettempdir()) / "mx8-agent-cache"
    directory.mkdir(parents=True, exist_ok=True)
    final = cache_path(directory, settings.manifest_hash)
    if final.exists():
        try:
            table = await asyncio.to_thread(_table_from_path, final, settings)
            emit(_COMPONENT, "manifest_cache_hit", path=str(final))
            return table, final
        except ManifestError as exc:
            # A damaged cached copy is not fatal: the coordinator has the real one.
            emit(_COMPONENT, "manifest_cache_invalid", path=str(final), error=str(exc))
            final.unlink(missing_ok=True)
    path = await _consume_stream(
        client,
        settings,
        stats,
        lambda reader: _copy_to_file(reader, directory, settings.manifest_hash),
    )
    try:
        table = await asyncio.to_thread(_table_from_path, path, settings)
    except ManifestError:
        # Its hash matched but its content is invalid: never keep it for a later start.
        path.unlink(missing_ok=True)
        raise
    return table, path


async def _ingest_once(
    client: CoordinatorClient, settings: IngestSettings
) -> tuple[ManifestTable, IngestStats, Path | None]:
    if settings.schema_version != SCHEMA_VERSION:
        raise ManifestSchemaMismatch(
            f"the coordinator serves manifest schema version {settings.schema_version}; this "
            f"agent reads version {SCHEMA_VERSION} only: run the same mx8 version on both"
        )
    if settings.table_dir is not None:
        # The hash names the table's files: refuse anything but 64 hex digits up front.
        table_dir_name(settings.manifest_hash)
    stats = IngestStats()
    if settings.mode == "cached":
        table, path = await _ingest_cached(client, settings, stats)
    else:
        table, path = await _ingest_direct(client, settings, stats)
    if len(table) != settings.total_samples:
        raise ManifestError(
            f"the manifest holds {len(table)} samples but the coordinator announced "
            f"{settings.total_samples}; the coordinator is inconsistent: restart it"
        )
    return table, stats, path


async def ingest_manifest(
    client: CoordinatorClient,
    settings: IngestSettings,
    *,
    rng: random.Random | None = None,
) -> IngestResult:
    """Ingest the job's manifest, retrying transient failures; raise on anything else."""
    started = time.perf_counter()
    tries = 1
    retry_log = Throttled()

    def retrying(retry: Retry) -> None:
        nonlocal tries
        tries = retry.attempt + 1
        retry_log.emit(
            _COMPONENT,
            "manifest_ingest_retry",
            attempt=retry.attempt,
            delay_s=round(retry.delay_s, 3),
            error=retry.error,
        )

    try:
        table, stats, path = await settings.backoff.run(
            lambda: _ingest_once(client, settings),
            retry_if=lambda exc: (
                isinstance(exc, ManifestError | CoordinatorError) and is_transient(exc)
            ),
            on_retry=retrying,
            rng=rng,
        )
    except (ManifestError, CoordinatorError, CoordinatorReplyError) as exc:
        emit(
            _COMPONENT,
            exc.event,
            level="error",
            error=str(exc),
            manifest_hash=settings.manifest_hash,
            mode=settings.mode,
            attempt=tries,
        )
        raise
    seconds = time.perf_counter() - started
    emit(
        _COMPONENT,
        "manifest_ingested",
        mode=settings.mode,
        manifest_hash=settings.manifest_hash,
        samples=len(table),
        manifest_bytes=stats.bytes,
        table_nbytes=table.nbytes,
        table_file=str(table.source) if table.source is not None else "",
        peak_carry_bytes=stats.peak_carry_bytes,
        seconds=round(seconds, 3),
    )
    return IngestResult(table, settings.mode, seconds, stats.bytes, stats, path)

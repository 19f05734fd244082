"""Read the bytes of one sample from S3, GCS, Azure or a local file, with retries and loud
size checks.

``ObjectReader.read(location, byte_offset, byte_length)`` is the one call the data plane
makes per sample. ``s3://bucket/key`` is a GET through the native client (obstore: the
Rust ``object_store`` crate, its I/O on its own threads; ``native_store`` builds one store
per bucket and process), ranged to the manifest row's bytes when it gives their size.
Where the native client cannot run (a process forked after its parent used it, see
``native_store``) or is turned off (``MX8_FETCH_NATIVE_S3_GET=0``), GETs go through
``s3_get.S3Getter`` (botocore signs, aiohttp sends). ``gs://`` and ``az://`` go through
``cloud_reader.CloudReader`` with the same checks and retries. A plain path or ``file://``
URL is read with ``os.pread`` in a thread pool, never on the event loop (``local_read``
holds those reads). A bucket in another region than ``AWS_REGION`` (S3 answers 301
``PermanentRedirect``) is followed: its region is asked once (``s3_client.bucket_region``)
and its reads are signed for it from then on.

The manifest promised a size, so every read is checked against it: a whole object whose
size differs, or a range that runs past the object's end, is ``ObjectChangedError``
(``object_changed_since_snapshot``), never silently different bytes. An overwrite of the
same size is caught by time: given the snapshot's listing time, S3 GETs carry
``If-Unmodified-Since`` (S3 answers 412 for a newer object) and a local file's mtime must
not be later. Throttling, server
errors, resets and short bodies (``TransientStorageError``) are retried with exponential
backoff and full jitter up to ``max_attempts``; permanent errors (missing object or bucket,
access denied) raise at once; the native client's own retries are off, so this is the one
retry policy. Client errors become mx8 errors only through
``native_store.translate_native_error`` or ``s3_client.translate_s3_error`` (the same
messages), raised ``from None``: its one line carries the original's code or text, and a
user sees one error, not a chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import obstore

from mx8_common.config_fields import load_env, setting, setting_names
from mx8_common.errors import (
    ConfigError,
    StorageError,
    TransientStorageError,
)
from mx8_common.link import split_object_location
from mx8_common.obs.events import Throttled, emit
from mx8_common.retry import Backoff, Retry
from mx8_common.storage.cloud_reader import CLOUD_SCHEMES, CloudReader
from mx8_common.storage.local_read import (
    changed_since_snapshot,
    is_local,
    local_path,
    modified_after_listing,
    normalize_range,
    read_local,
    read_local_into,
    read_local_many,
    utc_text,
)
from mx8_common.storage.native_store import (
    NativeStore,
    cached_native_store,
    fork_generation,
    native_error_code,
    native_runtime_forked,
    native_store,
    translate_native_error,
)
from mx8_common.storage.rest_client import parse_content_range
from mx8_common.storage.s3_client import (
    S3Settings,
    bucket_region,
    is_region_answer,
    translate_s3_error,
    wrong_region_error,
)
from mx8_common.storage.s3_get import S3Getter, S3Object
from mx8_common.storage.sample_reader import LocalRead, Payload, ReadObserver, ReadStats

__all__ = [
    "ObjectReader",
    "ObjectReaderConfig",
    "is_local",
    "local_path",
    "normalize_range",
    "read_local",
    "read_local_into",
    "split_s3_location",
]


@dataclass(frozen=True, kw_only=True)
class ObjectReaderConfig:
    """How sample bytes are read: retry policy and local read threads.

    The agent exposes these as its ``--fetch-*`` flags; embedded ``mx8.load`` reads the same
    variables. The flags named here are the agent's.
    """

    max_attempts: int = setting(
        5,
        env="MX8_FETCH_MAX_ATTEMPTS",
        flag="--fetch-max-attempts",
        help="tries per sample before a transient error is fatal",
    )
    backoff_base_s: float = setting(
        0.05,
        env="MX8_FETCH_BACKOFF_BASE_S",
        flag="--fetch-backoff-base-s",
        help="first retry waits up to this many seconds",
    )
    backoff_max_s: float = setting(
        5.0,
        env="MX8_FETCH_BACKOFF_MAX_S",
        flag="--fetch-backoff-max-s",
        help="cap on one retry's backoff, in seconds",
    )
    local_read_threads: int = setting(
        16,
        env="MX8_FETCH_LOCAL_THREADS",
        flag="--fetch-local-threads",
        help="threads reading local files (os.pread)",
    )
    native_s3_get: bool = setting(
        True,
        env="MX8_FETCH_NATIVE_S3_GET",
        flag="--fetch-native-s3-get",
        help="S3 GETs through the native client (obstore; ~half the client CPU per GET of "
        "the botocore path); 0 (--no-fetch-native-s3-get) uses the botocore path",
    )
    lean_s3_get: bool = setting(
        True,
        env="MX8_FETCH_LEAN_S3_GET",
        flag="--fetch-lean-s3-get",
        help="on the botocore path, GETs signed by botocore but sent by aiohttp; "
        "0 (--no-fetch-lean-s3-get) sends each through the aiobotocore client",
    )

    def __post_init__(self) -> None:
        for name in ("max_attempts", "local_read_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} is {getattr(self, name)}; set "
                    f"{setting_names(ObjectReaderConfig, name)} to 1 or more"
                )
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ConfigError(
                f"backoff {self.backoff_base_s}s..{self.backoff_max_s}s is not a valid range; "
                "set MX8_FETCH_BACKOFF_BASE_S >= 0 and MX8_FETCH_BACKOFF_MAX_S >= it "
                "(or --fetch-backoff-base-s / --fetch-backoff-max-s)"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ObjectReaderConfig:
        """Defaults, then ``MX8_*`` env vars, then ``overrides`` (None values are ignored)."""
        return load_env(cls, environ, **overrides)

    @property
    def backoff(self) -> Backoff:
        """The retry policy of one S3 read (full jitter, ``max_attempts`` tries)."""
        return Backoff(
            base_s=self.backoff_base_s, max_s=self.backoff_max_s, attempts=self.max_attempts
        )


def split_s3_location(location: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; anything else is a ``StorageError``."""
    return split_object_location(location, "s3")


_NO_LOCATION = "Received redirect without LOCATION"


class _RegionAnswer(Exception):
    """S3 said the bucket is in another region (``answer``: its code or status)."""

    def __init__(self, answer: str) -> None:
        super().__init__(answer)
        self.answer = answer


class ObjectReader:
    """Reads sample bytes (a ``SampleReader``); ``async with`` owns its S3 client and local
    read threads.

    The S3 client is opened on the first ``s3://`` read (a local-only job never needs
    one) and reused for every read, or ``s3_client`` is borrowed and never closed (GETs
    then all go through it). ``on_read(seconds, nbytes)`` is told of every sample read:
    a ``read`` is timed whole (retries included), a ``read_local_many`` per file.
    ``listed_at`` (Unix seconds: the snapshot's listing time) makes every read refuse an
    object modified after it; an agent sets it once the coordinator named it, before its
    first read.
    """

    def __init__(
        self,
        config: ObjectReaderConfig | None = None,
        *,
        s3_settings: S3Settings | None = None,
        s3_client: Any = None,
        rng: random.Random | None = None,
        on_read: ReadObserver | None = None,
        listed_at: float | None = None,
    ) -> None:
        self.config = config or ObjectReaderConfig()
        self.listed_at = listed_at
        self._retry_log = Throttled()
        self._backoff = self.config.backoff
        self.stats = ReadStats()
        self._on_read = on_read
        self._s3_settings = s3_settings
        self._client = s3_client
        self._getter: S3Getter | None = None
        self._cloud = CloudReader()  # gs:// and az://; opens nothing until the first read
        self._fork_gen = fork_generation()
        self._native = self.config.native_s3_get and not native_runtime_forked()
        #: Buckets S3 said live in another region than the settings' (learned, followed).
        self._regions: dict[str, str] = {}
        self._client_lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()
        self._pool: ThreadPoolExecutor | None = None
        self._rng = rng or random.Random()
        self._closed = False

    @property
    def listed_at(self) -> float | None:
        """The snapshot's listing time (Unix seconds) reads check against, or None."""
        return self._listed_at

    @listed_at.setter
    def listed_at(self, value: float | None) -> None:
        self._listed_at = value
        # HTTP dates have whole seconds: an object written later within the listing's
        # second passes (S3 compares at that resolution too).
        self._unmodified_since = (
            None if value is None else email.utils.formatdate(value, usegmt=True)
        )
        # Native stores by bucket, for the process that built them (see native_store).
        # The listing time is a header of each store: a new time, new stores.
        self._stores: dict[str, NativeStore] = {}

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned S3 client and thread pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._stack.aclose()
        await self._cloud.aclose()
        if self._pool is not None:
            # Threads only run short preads; waiting for them keeps nothing running after us.
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
            self._pool = None

    async def _s3(self) -> S3Getter:
        if self._getter is None:
            async with self._client_lock:
                if self._getter is None:
                    if self._closed:
                        raise StorageError("this ObjectReader is closed; open a new one")
                    getter = S3Getter(
                        self._s3_settings, lean=self.config.lean_s3_get, client=self._client
                    )
                    self._getter = await self._stack.enter_async_context(getter)
                    self._client = getter.client
        return self._getter

    async def read(
        self,
        location: str,
        byte_offset: int | None = None,
        byte_length: int | None = None,
        *,
        stats: ReadStats | None = None,
    ) -> Payload:
        """The bytes of one sample: the range ``[byte_offset, +byte_length)`` or the object.

        ``byte_offset``/``byte_length`` of ``None`` or -1 mean "none". A whole object whose
        size is not ``byte_length`` raises ``ObjectChangedError``. S3 reads through the
        native client return its buffer as it arrived (``Payload``), not a copy.
        """
        byte_offset, byte_length = normalize_range(location, byte_offset, byte_length)
        started = time.perf_counter()
        if location.startswith(CLOUD_SCHEMES):
            data = await self._read_s3_retrying(
                location, byte_offset, byte_length, stats, once=self._read_cloud_once
            )
        elif not location.startswith("s3://"):
            data = await asyncio.get_running_loop().run_in_executor(
                self._local_pool(), read_local, location, byte_offset, byte_length, self.listed_at
            )
        elif self._use_native():
            # The common case, three coroutine frames shallower than the retry path: every
            # frame is resumed on each wake-up of the GET.
            bucket, key = split_s3_location(location)
            try:
                data = await self._get_native(location, bucket, key, byte_offset, byte_length)
            except _RegionAnswer as moved:
                await self._follow_region(bucket, location, moved.answer)
                data = await self._read_s3_retrying(location, byte_offset, byte_length, stats)
            except TransientStorageError as exc:
                data = await self._read_s3_retrying(location, byte_offset, byte_length, stats, exc)
        else:
            data = await self._read_s3_retrying(location, byte_offset, byte_length, stats)
        if self._on_read is not None:
            self._on_read(time.perf_counter() - started, len(data))
        self.stats.reads += 1
        self.stats.bytes += len(data)
        if stats is not None:
            stats.reads += 1
            stats.bytes += len(data)
        return data

    async def read_local_many(
        self, items: Sequence[LocalRead], *, stats: ReadStats | None = None
    ) -> list[bytes | StorageError]:
        """Read several local samples ``(location, byte_offset, byte_length)`` in one
        thread-pool job: one loop-to-thread hop per group instead of one per file, which is
        most of the cost of small page-cached files. Per-sample errors are returned in place.
        """
        results, seconds = await asyncio.get_running_loop().run_in_executor(
            self._local_pool(), read_local_many, items, self.listed_at
        )
        got = 0
        nbytes = 0
        for result, took in zip(results, seconds, strict=True):
            if isinstance(result, bytes):
                got += 1
                nbytes += len(result)
                if self._on_read is not None:
                    self._on_read(took, len(result))
        for counters in (self.stats, stats):
            if counters is not None:
                counters.reads += got
                counters.bytes += nbytes
                counters.local_batches += 1
        return results

    def _local_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            if self._closed:
                raise StorageError("this ObjectReader is closed; open a new one")
            self._pool = ThreadPoolExecutor(
                self.config.local_read_threads, thread_name_prefix="mx8-local-read"
            )
        return self._pool

    async def _read_s3_retrying(
        self,
        location: str,
        byte_offset: int | None,
        byte_length: int | None,
        stats: ReadStats | None,
        failed: TransientStorageError | None = None,
        *,
        once: Callable[[str, int | None, int | None], Awaitable[Payload]] | None = None,
    ) -> Payload:
        """One read under the retry policy; ``once`` is one attempt (an S3 GET by default).
        ``failed``: the caller's first try already failed with it (it counts as try 1)."""
        read_once = once or self._read_s3_once
        if failed is None:
            try:
                # The first try outside the retry loop: a read that works (nearly all of
                # them) costs no closures or policy objects.
                return await read_once(location, byte_offset, byte_length)
            except TransientStorageError as exc:
                failed = exc
        first: list[TransientStorageError] = [failed]

        async def attempt() -> Payload:
            if first:
                raise first.pop()  # the failed first try, as the policy's try 1
            return await read_once(location, byte_offset, byte_length)

        def retrying(retry: Retry) -> None:
            self.stats.retries += 1
            if stats is not None:
                stats.retries += 1
            # A throttled endpoint makes every read retry: one short line per few seconds
            # (with the count folded into it) instead of one per read.
            self._retry_log.emit(
                "fetch",
                "storage_read_retry",
                location=location,
                attempt=retry.attempt,
                delay_s=round(retry.delay_s, 4),
                error=retry.error,
            )

        try:
            return await self._backoff.run(
                attempt,
                retry_if=lambda exc: isinstance(exc, TransientStorageError),
                on_retry=retrying,
                rng=self._rng,
            )
        except TransientStorageError as exc:
            # Only retried errors are transient, so this one used up every attempt.
            raise TransientStorageError(
                f"{exc} (gave up after {self.config.max_attempts} attempts; raise "
                "MX8_FETCH_MAX_ATTEMPTS or check the storage endpoint)",
                location=location,
            ) from None

    def _use_native(self) -> bool:
        # Every native read passes here first: the one place a fork is noticed.
        if self._fork_gen != fork_generation():
            self._forked()
        return self._native and self._client is None

    def _forked(self) -> None:
        # A child of fork: the parent's stores (and its runtime, if it had used one) did not
        # come along.
        self._fork_gen = fork_generation()
        self._stores.clear()
        self._native = self.config.native_s3_get and not native_runtime_forked()

    async def _store(self, bucket: str, location: str) -> NativeStore:
        # This listing time's stores: a store built while listed_at changes is not kept.
        stores = self._stores
        store = stores.get(bucket)
        if store is None:
            if self._closed:
                raise StorageError("this ObjectReader is closed; open a new one")
            settings = self._settings_for(bucket)
            since = self._unmodified_since
            store = cached_native_store("s3", bucket, s3_settings=settings, unmodified_since=since)
            if store is None:
                # Built once per bucket and process; resolving credentials may block.
                store = await asyncio.to_thread(
                    functools.partial(
                        native_store,
                        "s3",
                        bucket,
                        s3_settings=settings,
                        location=location,
                        unmodified_since=since,
                    )
                )
            stores[bucket] = store
        return store

    def _settings_for(self, bucket: str) -> S3Settings:
        """The S3 settings of ``bucket``: this reader's, in the bucket's own region once S3
        named it."""
        settings = self._s3_settings or S3Settings.from_env()
        region = self._regions.get(bucket)
        return settings if region is None else replace(settings, region=region)

    async def _follow_region(self, bucket: str, location: str, answer: str) -> None:
        """S3 answered that ``bucket`` is in another region: learn which and use it from now
        on (the caller reads again), or raise one line saying what to set."""
        settings = self._settings_for(bucket)
        if bucket in self._regions:
            # Already signed for the region S3 named, and refused again: nothing to follow.
            raise wrong_region_error(location, answer, settings.region, None)
        found = await bucket_region(bucket, settings)
        if found is None or found == settings.region:
            named = None if found == settings.region else found
            raise wrong_region_error(location, answer, settings.region, named)
        self._regions[bucket] = found
        self._stores.pop(bucket, None)
        emit("fetch", "s3_bucket_region", bucket=bucket, region=found, signed_for=settings.region)

    async def _read_s3_once(
        self, location: str, byte_offset: int | None, byte_length: int | None
    ) -> Payload:
        bucket, key = split_s3_location(location)
        if self._use_native():
            return await self._read_native_once(location, bucket, key, byte_offset, byte_length)
        getter = await self._s3()
        range_header = None
        if byte_offset is not None and byte_length is not None:
            range_header = f"bytes={byte_offset}-{byte_offset + byte_length - 1}"
        try:
            async with getter.get(
                bucket, key, range_header, if_unmodified_since=self._unmodified_since
            ) as obj:
                size = obj.content_length
                if byte_offset is None:
                    if byte_length is not None and size >= 0 and size != byte_length:
                        # Checked before reading: no point downloading the wrong object.
                        raise changed_since_snapshot(
                            location, f"{byte_length} bytes", f"{size} bytes"
                        )
                else:
                    self._check_range(location, obj, byte_offset, byte_length or 0)
                data = await obj.read()
        except StorageError:
            raise
        except Exception as exc:
            if _error_code(exc) == "PreconditionFailed" and self.listed_at is not None:
                raise modified_after_listing(
                    location, self.listed_at, "later (S3 answered 412)"
                ) from None
            if _error_code(exc) == "InvalidRange":
                raise changed_since_snapshot(
                    location,
                    f"bytes {byte_offset}..{(byte_offset or 0) + (byte_length or 0) - 1}",
                    "an object too short for that range",
                ) from None
            raise translate_s3_error(exc, location) from None
        if 0 <= size != len(data):
            raise TransientStorageError(
                f"short body reading {location}: got {len(data)} of {size} bytes",
                location=location,
            )
        if byte_length is not None and len(data) != byte_length:
            raise changed_since_snapshot(location, f"{byte_length} bytes", f"{len(data)} bytes")
        return data

    async def _read_cloud_once(
        self, location: str, byte_offset: int | None, byte_length: int | None
    ) -> bytes:
        """One GET of a gs:// or az:// object with the same checks as an S3 read."""
        got = await self._cloud.get(location, byte_offset, byte_length)
        data = got.data
        if byte_offset is None:
            if byte_length is not None and got.object_size >= 0 and got.object_size != byte_length:
                raise changed_since_snapshot(
                    location, f"{byte_length} bytes", f"{got.object_size} bytes"
                )
        elif got.start != byte_offset:
            want = f"bytes {byte_offset}..{byte_offset + (byte_length or 0) - 1}"
            raise changed_since_snapshot(
                location, want, f"a whole object of {got.object_size} bytes"
            )
        # Whole seconds, as the HTTP date the server keeps (S3 compares the same way).
        modified = got.last_modified
        if self.listed_at is not None and modified is not None and int(modified) > self.listed_at:
            raise modified_after_listing(
                location, self.listed_at, f"at {utc_text(got.last_modified)}"
            )
        if byte_offset is None and 0 <= got.object_size != len(data):
            raise TransientStorageError(
                f"short body reading {location}: got {len(data)} of {got.object_size} bytes",
                location=location,
            )
        if byte_length is not None and len(data) != byte_length:
            raise changed_since_snapshot(location, f"{byte_length} bytes", f"{len(data)} bytes")
        return data

    async def _read_native_once(
        self,
        location: str,
        bucket: str,
        key: str,
        byte_offset: int | None,
        byte_length: int | None,
    ) -> Payload:
        try:
            return await self._get_native(location, bucket, key, byte_offset, byte_length)
        except _RegionAnswer as moved:
            # Learns the bucket's region, or raises one line (a second refusal included).
            await self._follow_region(bucket, location, moved.answer)
        return await self._read_native_once(location, bucket, key, byte_offset, byte_length)

    async def _get_native(
        self,
        location: str,
        bucket: str,
        key: str,
        byte_offset: int | None,
        byte_length: int | None,
    ) -> Payload:
        store = self._stores.get(bucket)
        if store is None:
            store = await self._store(bucket, location)
        # The store sends the listing time (If-Unmodified-Since) with every request.
        try:
            if byte_length:
                # The common case: the size is known, so one request and one future (a
                # whole object asked one byte past its size: one that grew answers with it).
                start = byte_offset or 0
                end = start + byte_length + (byte_offset is None)
                data = await obstore.get_range_async(store, key, start=start, end=end)
                if len(data) == byte_length:
                    return data
                # Not the snapshot's bytes: the GET below says what the object is now.
            return await self._get_checked(location, store, key, byte_offset, byte_length)
        except StorageError:
            raise
        except Exception as exc:
            code, status = native_error_code(exc)
            if (code == "PreconditionFailed" or status == 412) and self.listed_at is not None:
                raise modified_after_listing(
                    location, self.listed_at, "later (S3 answered 412)"
                ) from None
            if code == "InvalidRange" or status == 416:
                raise changed_since_snapshot(
                    location,
                    f"bytes {byte_offset}..{(byte_offset or 0) + (byte_length or 0) - 1}",
                    "an object too short for that range",
                ) from None
            if is_region_answer(code, status):
                raise _RegionAnswer(code or str(status)) from None
            if _NO_LOCATION in str(exc):
                # obstore's words for S3's 301 to another region (no status in its text).
                raise _RegionAnswer("301 (a redirect to another region)") from None
            raise translate_native_error(exc, location) from None

    @staticmethod
    async def _get_checked(
        location: str,
        store: NativeStore,
        key: str,
        byte_offset: int | None,
        byte_length: int | None,
    ) -> Payload:
        """A GET whose answer's range is checked against the snapshot before its body is
        read: for a size not known, or an object whose one-request read did not fit."""
        options = (
            None
            if byte_offset is None
            else {"range": (byte_offset, byte_offset + (byte_length or 0))}
        )
        result = await obstore.get_async(store, key, options=options)
        first, end = result.range
        if byte_offset is None:
            # A whole object comes back as its range 0..size (cheaper than result.meta).
            if byte_length is not None and end != byte_length:
                # Checked before reading: no point downloading the wrong object.
                raise changed_since_snapshot(location, f"{byte_length} bytes", f"{end} bytes")
            want = end
        else:
            length = byte_length or 0
            if (first, end) != (byte_offset, byte_offset + length):
                size = int(result.meta["size"])
                raise changed_since_snapshot(
                    location,
                    f"bytes {byte_offset}..{byte_offset + length - 1}",
                    f"bytes {first}..{end - 1} of a {size}-byte object",
                )
            want = length
        # Kept as obstore's buffer: the batch join is the one copy.
        data = await result.bytes_async()
        if len(data) != want:
            raise TransientStorageError(
                f"short body reading {location}: got {len(data)} of {want} bytes",
                location=location,
            )
        return data

    @staticmethod
    def _check_range(location: str, obj: S3Object, offset: int, length: int) -> None:
        want = f"bytes {offset}..{offset + length - 1}"
        header = obj.content_range
        if not header:
            # A server that ignored Range sent the whole object: its size is the evidence.
            raise changed_since_snapshot(
                location, want, f"a whole object of {obj.content_length} bytes"
            )
        parsed = parse_content_range(str(header))
        if parsed is None:
            raise StorageError(
                f"S3 answered an unreadable Content-Range {header!r} for {location}",
                location=location,
            )
        first, last, total = parsed
        if first != offset or last != offset + length - 1:
            shown = f"bytes {first}..{last}" + (f" of a {total}-byte object" if total else "")
            raise changed_since_snapshot(location, want, shown)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code", ""))
    return ""

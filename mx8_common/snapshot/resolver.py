"""Resolve a dataset link into a stored, content-hashed manifest: the zero-manifest path.

``resolve_snapshot(link)`` parses the link, then:

- ``@sha256:<hash>``: uses exactly that stored snapshot (``SnapshotNotFoundError`` if absent);
- plain: reuses the snapshot the store's intent pointer names for this link and options,
  indexing only when there is none (a reuse is announced once per process, with its age:
  ``snapshot.notice``);
- ``@refresh``: indexes again now.

Indexing runs under the single-writer lock (``snapshot_lock``): one resolver per link
lists the dataset while the others wait and reuse its result. Listing pages stream
straight into ``ManifestWriter`` (temp file + running SHA-256): the key list is never held
in memory, and with ``external_sort`` at most ``spill_keys_per_run`` keys are. The file is
then put into the store by path, and one ``snapshot_index_summary`` event is emitted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from mx8_common.errors import (
    EmptyDatasetError,
    LabelError,
    ManifestHashMismatch,
    SnapshotNotFoundError,
    UnsupportedKeyError,
)
from mx8_common.link import DatasetLink, parse_dataset_link
from mx8_common.manifest.format import ManifestWriter, WrittenManifest
from mx8_common.manifest.labels import (
    ClassIndex,
    FolderSummary,
    choose_classes,
    encode_labels_tsv,
    validate_label_mode,
)
from mx8_common.obs.events import emit, get_logger
from mx8_common.snapshot.cloud_lister import AzurePageSource, GcsPageSource
from mx8_common.snapshot.config import SnapshotResolverConfig
from mx8_common.snapshot.external_sort import ExternalSorter
from mx8_common.snapshot.local_lister import LocalPageSource, thread_pages
from mx8_common.snapshot.lock import LockHolder, run_single_writer
from mx8_common.snapshot.notice import announce_reuse
from mx8_common.snapshot.page_source import Page, PageSource, ordered_pages
from mx8_common.snapshot.partitioned import SKIPPED_REASON, ListingStats
from mx8_common.snapshot.progress import IndexProgress
from mx8_common.snapshot.s3_lister import S3PageSource
from mx8_common.snapshot.sample_filter import Files, SampleCounter, validate_files
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.gcs_client import GcsClient
from mx8_common.storage.s3_client import S3Settings
from mx8_common.storage.s3_get import S3Getter
from mx8_common.store import ManifestMeta, ManifestStore, open_manifest_store
from mx8_common.store.base import store_os_error

__all__ = [
    "ResolvedSnapshot",
    "SnapshotResolverConfig",
    "intent_key",
    "resolve_snapshot",
    "resolve_snapshot_sync",
]

_COMPONENT = "snapshot"


@dataclass(frozen=True)
class ResolvedSnapshot:
    """A resolved snapshot: its hash, size and where it is stored."""

    link: str
    manifest_hash: str
    samples: int
    manifest_bytes: int
    class_names: tuple[str, ...] | None
    store_path: str
    #: True when this call indexed the dataset, False when it reused a stored snapshot.
    indexed: bool
    #: The canonical manifest bytes, only with ``materialize_manifest_bytes``. Left out of
    #: repr: asyncio.run's SIGINT restore reprs the main task, result included (Python 3.11
    #: ``signal.getsignal`` -> enum lookup error text), which cost ~50 ms per 8 MB manifest.
    manifest_data: bytes | None = dataclasses.field(default=None, repr=False)
    #: When the dataset was last listed into this manifest (Unix seconds, the storage's
    #: clock; None for snapshots stored before mx8 kept it). Readers refuse objects
    #: modified after it (``object_changed_since_snapshot``).
    listed_at: float | None = None


def intent_key(link: DatasetLink, config: SnapshotResolverConfig) -> str:
    """Store key of the intent pointer: SHA-256 of the normalized link and the options."""
    text = f"{link.normalized()}\nrecursive={int(config.recursive)}\nlabel_mode={config.label_mode}"
    if config.files != "all":  # absent for "all", so keys from before the option still match
        text += f"\nfiles={config.files}"
    return hashlib.sha256(text.encode()).hexdigest()


# -- reuse -------------------------------------------------------------------------------


async def _describe(
    store: ManifestStore, link: str, manifest_hash: str, cfg: SnapshotResolverConfig
) -> ResolvedSnapshot:
    labels = await store.get_labels(manifest_hash)
    data = (
        await store.read_manifest_bytes(manifest_hash) if cfg.materialize_manifest_bytes else None
    )
    meta = await store.get_meta(manifest_hash)
    return ResolvedSnapshot(
        link=link,
        manifest_hash=manifest_hash,
        samples=await store.manifest_samples(manifest_hash),
        manifest_bytes=len(data) if data is not None else await store.manifest_len(manifest_hash),
        class_names=tuple(labels) if labels is not None else None,
        store_path=store.manifest_location(manifest_hash),
        indexed=False,
        manifest_data=data,
        listed_at=meta.listed_at if meta is not None else None,
    )


# -- indexing ----------------------------------------------------------------------------


def _reject_unsupported_key(page: Page, link: str) -> None:
    """Raise for the first key of ``page`` holding a TAB, LF or CR (the manifest's separators)."""
    for key, _size in page:
        if "\t" in key or "\n" in key or "\r" in key:
            char = "TAB" if "\t" in key else ("LF" if "\n" in key else "CR")
            raise UnsupportedKeyError(
                f"{link}: object key {key!r} contains a {char} character, which the "
                "canonical manifest TSV cannot hold; rename the object",
                link=link,
                key=key,
            )


class _IndexTracker:
    """How far indexing got, published in the lock body for the resolvers that wait."""

    def __init__(self) -> None:
        self.pages = 0
        self.listed = 0
        self.written = 0
        self.phase = "listing"
        self.samples = SampleCounter()  # what files="images" skipped, classes it kept

    def snapshot(self) -> dict[str, int | str]:
        # objects_written moves during an external sort's merge, when listing is done.
        return {
            "objects_indexed": self.listed,
            "objects_written": self.written,
            "phase": self.phase,
        }


async def _checked_keys(
    pages: AsyncIterator[Page], link: str, tracker: _IndexTracker, files: Files = "all"
) -> AsyncGenerator[Page, None]:
    """Reject keys a manifest cannot hold, and count pages and keys, before sorting or writing.

    With ``files="images"`` the objects that are not samples leave here (counted, not refused).
    """
    async for page in pages:
        tracker.pages += 1
        tracker.listed += len(page)
        if files != "all":
            page = tracker.samples.keep(page, files)
        # One scan of the joined keys per page; the per-key walk only names the bad key.
        joined = "".join([key for key, _size in page])
        if "\t" in joined or "\n" in joined or "\r" in joined:
            _reject_unsupported_key(page, link)
        yield page


async def _read_ahead(pages: AsyncGenerator[Page, None]) -> AsyncGenerator[Page, None]:
    """Pass pages through, fetching the next one while the caller writes this one.

    Listing (stat calls or an S3 request) and writing (formatting, hashing) then overlap
    instead of taking turns; at most one page waits, so memory stays one page per side.
    """
    nxt: asyncio.Future[Page | None] = asyncio.ensure_future(anext(pages, None))
    try:
        while (page := await nxt) is not None:
            nxt = asyncio.ensure_future(anext(pages, None))
            yield page
    finally:
        if not nxt.done():
            nxt.cancel()
            await asyncio.wait({nxt})
        if not nxt.cancelled():
            nxt.exception()  # retrieved: the caller's own error is the one that matters
        await pages.aclose()


async def _sorted_pages(
    pages: AsyncIterator[Page], sorter: ExternalSorter
) -> AsyncGenerator[Page, None]:
    async for page in pages:
        await asyncio.to_thread(sorter.add, page)
    async for page in thread_pages(sorter.merged()):
        yield page


def _page_hints(page: Page, classes: ClassIndex, link: str) -> list[str]:
    """The decode_hint of every key of a page.

    Keys arrive sorted, so one class folder is one run of keys: the hint is looked up once
    per run (a ``startswith`` per key) instead of once per key.
    """
    hints: list[str] = []
    run_prefix = ""
    hint = ""
    for key, _size in page:
        if not run_prefix or not key.startswith(run_prefix):
            hint = classes.hint_for(key, link=link)  # raises for a key outside the classes
            run_prefix = key.partition("/")[0] + "/"
        hints.append(hint)
    return hints


def _write_page(
    writer: ManifestWriter, source: PageSource, page: Page, classes: ClassIndex | None, link: str
) -> None:
    location = source.location
    writer.write_page(
        [location(key) for key, _size in page],
        [size or None for _key, size in page],
        None if classes is None else _page_hints(page, classes, link),
    )


def _show_progress(cfg: SnapshotResolverConfig) -> bool:
    return cfg.show_progress if cfg.show_progress is not None else sys.stderr.isatty()


@contextlib.contextmanager
def _scratch_disk(store: ManifestStore, scratch: Path) -> Iterator[None]:
    """Disk errors writing the manifest (a full disk) as a ``StoreError`` naming the path."""
    try:
        yield
    except OSError as exc:
        raise store_os_error(exc, str(store.root), scratch) from exc


async def _index(
    parsed: DatasetLink,
    cfg: SnapshotResolverConfig,
    store: ManifestStore,
    key: str | None,
    page_source: PageSource | None,
    tracker: _IndexTracker | None = None,
) -> ResolvedSnapshot:
    link = parsed.display()
    tracker = tracker if tracker is not None else _IndexTracker()
    t0 = time.monotonic()
    started_at = time.time()  # before the first listing call: a conservative listing time
    async with contextlib.AsyncExitStack() as stack:
        source = page_source
        if source is None and parsed.scheme == "s3":
            # The lean client: botocore's parse of a LIST page would cost more CPU than the
            # concurrent listing has time for.
            client = await stack.enter_async_context(
                S3Getter(S3Settings.from_env(cfg.s3_endpoint_url))
            )
            source = S3PageSource(
                client,
                parsed.bucket or "",
                parsed.prefix or "",
                recursive=cfg.recursive,
                # External sort is for endpoints that do not list in order: ranges need order.
                concurrency=1 if cfg.external_sort else cfg.list_concurrency,
                spill_dir=str(store.scratch_dir()),
            )
        elif source is None and parsed.scheme == "gs":
            gcs = await stack.enter_async_context(GcsClient())
            source = GcsPageSource(
                gcs, parsed.bucket or "", parsed.prefix or "", recursive=cfg.recursive
            )
        elif source is None and parsed.scheme == "az":
            azure = await stack.enter_async_context(AzureRestClient())
            source = AzurePageSource(
                azure, parsed.bucket or "", parsed.prefix or "", recursive=cfg.recursive
            )
        elif source is None:
            source = LocalPageSource(parsed.path or "/", recursive=cfg.recursive)
        files = validate_files(cfg.files)
        classes = await _classes(source, cfg, link)
        listed = _checked_keys(source.pages(), link, tracker, files)
        if cfg.external_sort:
            sorter = stack.enter_context(
                ExternalSorter(keys_per_run=cfg.spill_keys_per_run, directory=store.scratch_dir())
            )
            listed = _sorted_pages(listed, sorter)
        pages = _read_ahead(ordered_pages(listed, link=link))
        progress = IndexProgress(_show_progress(cfg), link)
        stack.callback(progress.close)
        scratch = store.scratch_dir()
        with _scratch_disk(store, scratch):
            writer = stack.enter_context(ManifestWriter(scratch))
        # Closed from both ends: a failed write stops the listing now, not at garbage collection.
        async with contextlib.aclosing(listed), contextlib.aclosing(pages):
            async for page in pages:
                with _scratch_disk(store, scratch):
                    await asyncio.to_thread(_write_page, writer, source, page, classes, link)
                progress.advance(len(page), writer.samples)
                tracker.written = writer.samples
        tracker.phase = "storing"
        if classes is not None and files != "all" and writer.samples:
            tracker.samples.check_classes(classes.names, link)
        if writer.samples == 0:
            raise EmptyDatasetError(
                f"{link} holds no objects{'' if cfg.recursive else ' directly under it'}; "
                "check the path or prefix"
                + ("" if cfg.recursive else ", or index recursively (recursive=True)")
                + tracker.samples.skipped_note(),
                link=link,
            )
        with _scratch_disk(store, scratch):
            written = await asyncio.to_thread(writer.finish)
        # S3's own clock when it answers with one (the server compares object times to it);
        # for gs/az the later of this host's clock and the newest object listed
        # (cloud_lister); this host's for folders, where the files' mtimes come from it.
        listed_at = (
            source.listed_at
            if isinstance(source, (S3PageSource, GcsPageSource, AzurePageSource))
            else started_at
        )
        try:
            data = await _store_written(store, written, classes, cfg, listed_at)
        finally:
            await asyncio.to_thread(written.path.unlink, True)
    if key is not None:
        await store.write_intent(key, written.manifest_hash)
    scan_ms = int((time.monotonic() - t0) * 1000)
    stats = (
        source.stats
        if isinstance(source, (S3PageSource, GcsPageSource, AzurePageSource))
        else ListingStats()
    )
    # Two reasons to leave an object out: the files filter (not an image in a class folder)
    # and, in object stores only, a key ending in "/" that has a body (no file name can hold it).
    slash_skipped = stats.skipped_objects
    reasons = []
    if tracker.samples.skipped:
        reasons.append(f"{tracker.samples.skipped} not images inside class folders")
    if slash_skipped:
        reasons.append(f"{slash_skipped} {SKIPPED_REASON}")
        # Said once for the whole listing, not per object.
        get_logger(_COMPONENT).warning(
            "snapshot_objects_skipped",
            link=link,
            skipped_objects=slash_skipped,
            reason=SKIPPED_REASON,
            example=stats.skipped_example,
        )
    emit(
        _COMPONENT,
        "snapshot_index_summary",
        link=link,
        objects_indexed=written.samples,
        pages_scanned=tracker.pages,
        scan_ms=scan_ms,
        recursive=cfg.recursive,
        label_mode=cfg.label_mode,
        classes=len(classes.names) if classes else 0,
        external_sort=cfg.external_sort,
        list_concurrency=stats.concurrency,
        partitions=stats.partitions,
        list_requests=stats.requests or tracker.pages,
        keys_per_s=int(written.samples / max(scan_ms / 1000, 1e-3)),
        files=cfg.files,
        skipped_objects=tracker.samples.skipped + slash_skipped,
        skipped_example=tracker.samples.skipped_example or stats.skipped_example,
        skipped_reason="; ".join(reasons) or None,
        manifest_hash=written.manifest_hash,
        manifest_bytes=written.manifest_bytes,
    )
    return ResolvedSnapshot(
        link=parsed.raw,
        manifest_hash=written.manifest_hash,
        samples=written.samples,
        manifest_bytes=written.manifest_bytes,
        class_names=classes.names if classes else None,
        store_path=store.manifest_location(written.manifest_hash),
        indexed=True,
        manifest_data=data,
        listed_at=listed_at,
    )


async def _classes(source: PageSource, cfg: SnapshotResolverConfig, link: str) -> ClassIndex | None:
    mode = validate_label_mode(cfg.label_mode)
    if mode == "none":
        return None
    if not cfg.recursive:
        # Only loose objects are indexed: nothing can sit inside a class folder.
        if mode == "imagefolder":
            raise LabelError(
                f"{link}: label_mode='imagefolder' needs recursive=True (classes are folders)",
                link=link,
            )
        return None
    summary = await source.folders()
    if not summary.folders and not summary.loose_objects:
        raise EmptyDatasetError(f"{link} holds no objects; check the path or prefix", link=link)
    if cfg.files != "all":
        # torchvision's rule: classes are the visible folders; loose files are not samples.
        visible = tuple(f for f in summary.folders if not f.startswith("."))
        if not visible:
            loose = (
                f"; the {summary.loose_objects} files directly under it (e.g. "
                f"{summary.example_loose!r}) are skipped"
                if summary.loose_objects
                else ""
            )
            raise LabelError(
                f"{link} has no class folder: files={cfg.files!r} reads images as "
                f"<link>/<class>/<image>{loose}; move the images into class folders",
                link=link,
            )
        summary = FolderSummary(visible, 0)
    return choose_classes(mode, summary, link=link)


def _read_verified(path: Path, manifest_hash: str) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest_hash:
        raise ManifestHashMismatch(f"{path} no longer hashes to {manifest_hash}; index again")
    return data


async def _store_written(
    store: ManifestStore,
    written: WrittenManifest,
    classes: ClassIndex | None,
    cfg: SnapshotResolverConfig,
    listed_at: float | None,
) -> bytes | None:
    data = None
    if cfg.materialize_manifest_bytes:
        data = await asyncio.to_thread(_read_verified, written.path, written.manifest_hash)
    await store.put_manifest_file(written.path, written.manifest_hash)
    labels_sha256 = (
        hashlib.sha256(encode_labels_tsv(classes.names)).hexdigest() if classes else None
    )
    await store.put_meta(
        written.manifest_hash,
        ManifestMeta(
            written.samples, written.manifest_bytes, listed_at, labels_sha256=labels_sha256
        ),
    )
    if classes is not None:
        await store.put_labels(written.manifest_hash, classes.names)
    return data


# -- entry points ------------------------------------------------------------------------


async def resolve_snapshot(
    link: str,
    config: SnapshotResolverConfig | None = None,
    *,
    store: ManifestStore | None = None,
    page_source: PageSource | None = None,
) -> ResolvedSnapshot:
    """Resolve ``link`` into a stored snapshot (see the module docstring).

    ``config`` defaults to ``SnapshotResolverConfig.from_env()``. ``store`` defaults to
    ``open_manifest_store(config.store_root)`` (opened and closed here). ``page_source``
    replaces the real lister (tests feed synthetic listings through it).
    """
    if page_source is not None and not isinstance(page_source, PageSource):
        raise TypeError(
            f"page_source {type(page_source).__name__} is not a PageSource: it needs pages(), "
            "location() and folders() (subclass PageSource to inherit folders())"
        )
    cfg = config if config is not None else SnapshotResolverConfig.from_env()
    parsed = parse_dataset_link(link)
    own = store is None
    if store is None:
        store = open_manifest_store(cfg.store_root, s3_endpoint_url=cfg.s3_endpoint_url)
    try:
        if parsed.mode == "pinned":
            assert parsed.pinned_hash is not None
            if not await store.has(parsed.pinned_hash):
                raise SnapshotNotFoundError(
                    f"{parsed.display()}: the manifest store {store.root} has no snapshot "
                    f"{parsed.pinned_hash}; drop the @sha256 suffix to index the dataset, or "
                    "point MX8_MANIFEST_STORE_ROOT / --store at the store that holds it",
                    manifest_hash=parsed.pinned_hash,
                )
            return await _describe(store, link, parsed.pinned_hash, cfg)
        key = intent_key(parsed, cfg)
        start = await store.read_intent_record(key)
        if parsed.mode == "plain" and start is not None and await store.has(start.manifest_hash):
            reused = await _describe(store, link, start.manifest_hash, cfg)
            indexed_at = reused.listed_at or start.written_at_ms / 1000
            announce_reuse(parsed, key, reused.manifest_hash, reused.samples, indexed_at)
            return reused
        start_token = start.token if start is not None else None
        active: ManifestStore = store

        async def find_done() -> ResolvedSnapshot | None:
            record = await active.read_intent_record(key)
            if record is None or (parsed.mode == "refresh" and record.token == start_token):
                return None
            if not await active.has(record.manifest_hash):
                return None
            return await _describe(active, link, record.manifest_hash, cfg)

        tracker = _IndexTracker()
        wait_bar: list[IndexProgress] = []  # made on the first wait only: most calls never wait

        async def index() -> ResolvedSnapshot:
            # Took over from a dead holder: its waiting line gives way to our own.
            for bar in wait_bar:
                bar.close()
            return await _index(parsed, cfg, active, key, page_source, tracker)

        def on_wait(holder: LockHolder | None) -> None:
            if not wait_bar:
                wait_bar.append(IndexProgress(_show_progress(cfg), parsed.display()))
            wait_bar[0].waiting(parsed.display(), holder)

        try:
            result, _indexed = await run_single_writer(
                store,
                key,
                link=parsed.display(),
                find_done=find_done,
                index=index,
                stale_ms=cfg.lock_stale_ms,
                wait_timeout_ms=cfg.wait_timeout_ms,
                progress=tracker.snapshot,
                on_wait=on_wait,
            )
        finally:
            for bar in wait_bar:
                bar.close()
        return result
    finally:
        if own:
            await store.aclose()


def resolve_snapshot_sync(
    link: str,
    config: SnapshotResolverConfig | None = None,
    *,
    store: ManifestStore | None = None,
    page_source: PageSource | None = None,
) -> ResolvedSnapshot:
    """``resolve_snapshot`` from blocking code, with or without a running event loop.

    Inside a running loop (a notebook, an async app) it runs on a worker thread with its
    own loop; pass no ``store`` then, since a store belongs to the loop that opened it.
    """
    coro_args = (link, config)
    kwargs = {"store": store, "page_source": page_source}
    # Decided outside the except clause: an error of the run would otherwise be shown
    # chained to asyncio's "no running event loop", which has nothing to do with it.
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:
        return asyncio.run(resolve_snapshot(*coro_args, **kwargs))  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mx8-resolve") as pool:
        return pool.submit(
            lambda: asyncio.run(resolve_snapshot(*coro_args, **kwargs))  # type: ignore[arg-type]
        ).result()

"""The manifest store: immutable manifests by hash, intent pointers and indexer locks.

    <root>/by-hash/<hash>              canonical manifest TSV (immutable, conditional create)
    <root>/by-hash/<hash>.meta.json    {"samples": N, "manifest_bytes": B, "listed_at": T,
                                        "labels_sha256": D}
    <root>/by-hash/<hash>.labels.tsv   class names of imagefolder snapshots
    <root>/intent/<key>/current        the hash last resolved for a link + options (JSON)
    <root>/locks/<key>.lock            the single-writer indexer lock (see snapshot_lock)

The root is a folder (``store.fs``), ``s3://bucket/prefix`` (``store.s3``) or
``az://container/prefix`` (``store.azure``), chosen by ``open_manifest_store``. Everything
under ``by-hash`` is written once with a conditional create; a second writer of the same
hash verifies the stored bytes equal its own by streaming both, and a mismatch is an
``IntegrityError``. Every read of a whole manifest re-verifies its hash. The one exception
is ``listed_at`` in the meta: when the dataset was last listed into this manifest (kept out
of the canonical TSV so the hash stays a function of the content); a re-index that finds
the same content moves it forward, and readers refuse objects modified after it.

A store holds a lazily created client bound to the event loop that first used it: use one
store per event loop, and ``aclose()`` it (or ``async with``).
"""

from __future__ import annotations

import abc
import asyncio
import errno
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mx8_common.errors import (
    IntegrityError,
    ManifestHashMismatch,
    SnapshotNotFoundError,
    StoreError,
)
from mx8_common.manifest.labels import decode_labels_tsv

__all__ = [
    "DEFAULT_STORE_ROOT",
    "IntentRecord",
    "LockState",
    "ManifestMeta",
    "ManifestStore",
    "StreamedManifestStore",
    "check_hash",
    "store_os_error",
]

DEFAULT_STORE_ROOT = "~/.mx8/manifests"
STREAM_CHUNK = 1 << 20


def check_hash(manifest_hash: str) -> str:
    """``manifest_hash`` if it is 64 lowercase hex digits (it becomes a path), else error."""
    if len(manifest_hash) != 64 or any(c not in "0123456789abcdef" for c in manifest_hash):
        raise StoreError(
            f"{manifest_hash!r} is not a manifest hash (64 lowercase hex digits)",
            manifest_hash=manifest_hash,
        )
    return manifest_hash


def store_os_error(exc: OSError, root: str, where: object = None) -> StoreError:
    """A ``StoreError`` naming the path and the fix of a disk error under store ``root``
    (``where``: the path written when the error does not name one)."""
    where = exc.filename or where or root
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        fix = "free space on that disk, or point --store / MX8_MANIFEST_STORE_ROOT elsewhere"
    elif exc.errno == errno.EISDIR:
        fix = "a directory sits where the store keeps a file: remove it"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable, or point --store / MX8_MANIFEST_STORE_ROOT elsewhere"
    elif exc.errno == errno.ENOTDIR:
        fix = "a regular file sits where the store needs a folder: remove it or pick another root"
    else:
        fix = "check that disk, or point --store / MX8_MANIFEST_STORE_ROOT elsewhere"
    return StoreError(f"manifest store {root}: {exc.strerror or exc} at {where}; {fix}")


@dataclass(frozen=True)
class ManifestMeta:
    """Counts stored beside a manifest so a reuse needs no parse, its listing time, and
    the digest of its ``labels.tsv`` (the manifest's hash does not cover class names)."""

    samples: int
    manifest_bytes: int
    #: When the listing that produced this manifest began (Unix seconds, on the storage's
    #: clock: S3's Date header, or this host's for a folder); None for older snapshots.
    listed_at: float | None = None
    #: sha256 of the ``labels.tsv`` written at indexing; None: no labels, or an older meta.
    labels_sha256: str | None = None

    def to_bytes(self) -> bytes:
        obj: dict[str, float | int | str] = {
            "samples": self.samples,
            "manifest_bytes": self.manifest_bytes,
        }
        if self.listed_at is not None:
            obj["listed_at"] = self.listed_at
        if self.labels_sha256 is not None:
            obj["labels_sha256"] = self.labels_sha256
        return json.dumps(obj).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ManifestMeta:
        obj = json.loads(data)
        listed_at = obj.get("listed_at")
        digest = obj.get("labels_sha256")
        return cls(
            int(obj["samples"]),
            int(obj["manifest_bytes"]),
            None if listed_at is None else float(listed_at),
            digest if isinstance(digest, str) else None,
        )


@dataclass(frozen=True)
class IntentRecord:
    """What an intent pointer holds: the hash, and a token unique to each write."""

    manifest_hash: str
    token: str
    written_at_ms: int

    def to_bytes(self) -> bytes:
        return (
            json.dumps(
                {
                    "manifest_hash": self.manifest_hash,
                    "token": self.token,
                    "written_at_ms": self.written_at_ms,
                }
            )
            + "\n"
        ).encode()

    @classmethod
    def new(cls, manifest_hash: str) -> IntentRecord:
        return cls(manifest_hash, secrets.token_hex(8), int(time.time() * 1000))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> IntentRecord:
        try:
            obj = json.loads(data)
            return cls(
                check_hash(obj["manifest_hash"]), str(obj["token"]), int(obj["written_at_ms"])
            )
        except (ValueError, KeyError, TypeError, StoreError) as exc:
            raise StoreError(
                f"intent pointer {where} is unreadable ({exc}); delete it or resolve the "
                "link with @refresh"
            ) from exc


@dataclass(frozen=True)
class LockState:
    """A lock object as read: its body and an opaque version for compare-and-swap."""

    body: bytes
    version: str


class ManifestStore(abc.ABC):
    """Async API of a manifest store; see the module docstring for the layout."""

    #: The root as given (a folder path or ``s3://bucket/prefix``).
    root: str

    # -- manifests -------------------------------------------------------------------------
    @abc.abstractmethod
    async def has(self, manifest_hash: str) -> bool:
        """Whether the store holds a manifest with this hash."""

    @abc.abstractmethod
    async def put_manifest_file(self, path: str | os.PathLike[str], manifest_hash: str) -> None:
        """Store the file at ``path`` as ``manifest_hash``, streaming; verify on collision."""

    @abc.abstractmethod
    async def manifest_len(self, manifest_hash: str) -> int:
        """Byte length of a stored manifest (``SnapshotNotFoundError`` if absent)."""

    @abc.abstractmethod
    async def read_range(self, manifest_hash: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short only at the end of the manifest)."""

    @abc.abstractmethod
    async def download_manifest(self, manifest_hash: str, dest: str | os.PathLike[str]) -> Path:
        """Stream a manifest to ``dest`` (temp + rename), verifying its hash on the way."""

    @abc.abstractmethod
    async def read_manifest_bytes(self, manifest_hash: str) -> bytes:
        """A whole manifest in memory, hash verified (small manifests, the Python API)."""

    @abc.abstractmethod
    async def local_path(self, manifest_hash: str) -> Path | None:
        """A verified local file holding the manifest, if this store has one (fs store)."""

    @abc.abstractmethod
    def manifest_location(self, manifest_hash: str) -> str:
        """Where the manifest lives, for people and logs (a path or an s3:// URL)."""

    # -- small derived objects beside a manifest -------------------------------------------
    @abc.abstractmethod
    async def _put_small(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` if absent; False if it already existed."""

    @abc.abstractmethod
    async def _get_small(self, rel: str) -> bytes | None:
        """The bytes of ``rel`` or None."""

    @abc.abstractmethod
    async def _replace_small(self, rel: str, data: bytes) -> None:
        """Atomically replace (or create) ``rel``."""

    async def put_labels(
        self, manifest_hash: str, class_names: list[str] | tuple[str, ...]
    ) -> None:
        """Store ``labels.tsv`` beside a manifest (identical content if it already exists)."""
        from mx8_common.manifest.labels import encode_labels_tsv

        data = encode_labels_tsv(class_names)
        rel = f"by-hash/{check_hash(manifest_hash)}.labels.tsv"
        if not await self._put_small(rel, data):
            existing = await self._get_small(rel)
            if existing != data:
                raise IntegrityError(
                    f"{self.manifest_location(manifest_hash)}.labels.tsv already holds other "
                    "class names than this indexing found; the store is corrupt or shared by "
                    "an incompatible writer. Delete that file and index again",
                    manifest_hash=manifest_hash,
                )

    async def get_labels(self, manifest_hash: str) -> list[str] | None:
        """Class names in label-id order, or None when the snapshot has no labels.

        Verified against the digest its meta recorded at indexing: swapped or edited class
        names are an ``IntegrityError``, never labels silently attached to other samples.
        (A meta written before digests existed has none; those labels are taken as is.)
        """
        data = await self._get_small(f"by-hash/{check_hash(manifest_hash)}.labels.tsv")
        meta = await self.get_meta(manifest_hash)
        expected = meta.labels_sha256 if meta is not None else None
        if expected is not None:
            where = f"{self.manifest_location(manifest_hash)}.labels.tsv"
            if data is None:
                raise IntegrityError(
                    f"{where} is missing but snapshot {manifest_hash} has class names; index "
                    "again with the link's @refresh suffix to restore it",
                    manifest_hash=manifest_hash,
                )
            got = hashlib.sha256(data).hexdigest()
            if got != expected:
                raise IntegrityError(
                    f"{where} hashes to {got}, not the {expected} recorded when snapshot "
                    f"{manifest_hash} was indexed: its class names were changed. Delete it "
                    "and index again with the link's @refresh suffix",
                    manifest_hash=manifest_hash,
                )
        return None if data is None else decode_labels_tsv(data)

    async def put_meta(self, manifest_hash: str, meta: ManifestMeta) -> None:
        """Store row and byte counts beside a manifest (and the listing time, if given).

        Counts alone never overwrite a stored meta; a listing time replaces it, since a
        newer listing that found the same content vouches for it up to a later time.
        """
        rel = f"by-hash/{check_hash(manifest_hash)}.meta.json"
        if meta.listed_at is None:
            await self._put_small(rel, meta.to_bytes())
        else:
            await self._replace_small(rel, meta.to_bytes())

    async def get_meta(self, manifest_hash: str) -> ManifestMeta | None:
        data = await self._get_small(f"by-hash/{check_hash(manifest_hash)}.meta.json")
        if data is None:
            return None
        try:
            return ManifestMeta.from_bytes(data)
        except (ValueError, KeyError, TypeError):
            return None  # recomputable: the caller counts rows instead

    async def manifest_samples(self, manifest_hash: str) -> int:
        """Rows of a stored manifest: from its meta, else by counting LFs in ranged reads."""
        meta = await self.get_meta(manifest_hash)
        if meta is not None:
            return meta.samples
        size = await self.manifest_len(manifest_hash)
        lines = 0
        for offset in range(0, size, STREAM_CHUNK):
            lines += (await self.read_range(manifest_hash, offset, STREAM_CHUNK)).count(b"\n")
        samples = max(lines - 1, 0)  # minus the schema header
        await self.put_meta(manifest_hash, ManifestMeta(samples, size))
        return samples

    # -- intent pointers -------------------------------------------------------------------
    async def read_intent_record(self, key: str) -> IntentRecord | None:
        """The intent pointer of ``key`` with its write token, or None."""
        rel = f"intent/{key}/current"
        data = await self._get_small(rel)
        return None if data is None else IntentRecord.from_bytes(data, f"{self.root}/{rel}")

    async def read_intent(self, key: str) -> str | None:
        """The hash the intent pointer ``key`` names, or None."""
        record = await self.read_intent_record(key)
        return None if record is None else record.manifest_hash

    async def write_intent(self, key: str, manifest_hash: str) -> IntentRecord:
        """Point intent ``key`` at ``manifest_hash`` (atomic replace)."""
        record = IntentRecord.new(check_hash(manifest_hash))
        await self._replace_small(f"intent/{key}/current", record.to_bytes())
        return record

    # -- small objects of other writers (the coordinator's lease log in a store) ---------
    async def create_object(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` if absent (conditional create); False if it exists."""
        return await self._put_small(rel, data)

    async def read_object(self, rel: str) -> bytes | None:
        """The bytes of ``rel``, or None if absent."""
        return await self._get_small(rel)

    async def replace_object(self, rel: str, data: bytes) -> None:
        """Atomically replace (or create) ``rel``."""
        await self._replace_small(rel, data)

    @abc.abstractmethod
    async def list_objects(self, folder: str) -> list[str]:
        """Names of the objects directly in ``folder`` (a rel path), sorted."""

    def object_location(self, rel: str) -> str:
        """Where ``rel`` lives, for people and logs."""
        return f"{self.root}/{rel}"

    # -- lock primitives (used by snapshot_lock) -------------------------------------------
    @abc.abstractmethod
    async def lock_create(self, key: str, body: bytes) -> str | None:
        """Create lock ``key`` if absent; its version, or None if it exists."""

    @abc.abstractmethod
    async def lock_read(self, key: str) -> LockState | None:
        """The current lock, or None."""

    @abc.abstractmethod
    async def lock_replace(self, key: str, version: str, body: bytes) -> str | None:
        """Replace the lock if it is still at ``version``; the new version, or None if lost."""

    @abc.abstractmethod
    async def lock_delete(self, key: str, version: str) -> bool:
        """Delete the lock if it is still at ``version``; whether it was deleted."""

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:  # noqa: B027 - optional hook: the fs store holds nothing
        """Release clients (idempotent)."""

    async def __aenter__(self) -> ManifestStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def scratch_dir(self) -> Path:
        """A local folder for temp files headed into this store."""
        return Path(tempfile.gettempdir())

    def _not_found(self, manifest_hash: str) -> SnapshotNotFoundError:
        return SnapshotNotFoundError(
            f"manifest store {self.root} has no snapshot {manifest_hash}; resolve the dataset "
            "link without @sha256 to index it, or point MX8_MANIFEST_STORE_ROOT at the store "
            "that holds it",
            manifest_hash=manifest_hash,
        )


class StreamedManifestStore(ManifestStore):
    """A store whose manifests come back as a verified byte stream (S3, Azure): reading,
    downloading and the same-hash collision check are built once on ``_stream_verified``."""

    #: The store root without its trailing slash, the key prefix inside the bucket ("" or
    #: ending in "/"), and ``scheme://bucket/``; set by ``_parse_root``.
    root: str
    prefix: str
    _base: str

    def _parse_root(self, root: str, scheme: str, cloud: str, holder: str) -> str:
        """Take ``scheme://<holder>/prefix`` apart (``root``, ``prefix``, the URL base);
        returns the bucket (or container). A root of another scheme or without a bucket is
        a ``StoreError`` naming it."""
        if not root.startswith(f"{scheme}://"):
            raise StoreError(f"{cloud} manifest store root {root!r} must start with {scheme}://")
        bucket, _, prefix = root[len(scheme) + 3 :].partition("/")
        if not bucket:
            raise StoreError(f"manifest store root {root!r} names no {holder}")
        self.root = root.rstrip("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._base = f"{scheme}://{bucket}/"
        return bucket

    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _url(self, rel: str) -> str:
        return self._base + self._key(rel)

    def manifest_location(self, manifest_hash: str) -> str:
        return self._url(f"by-hash/{check_hash(manifest_hash)}")

    @abc.abstractmethod
    async def _stream_verified(self, manifest_hash: str, sink: Callable[[bytes], object]) -> None:
        """Feed the stored manifest's bytes to ``sink``; ManifestHashMismatch if they do not
        hash to ``manifest_hash``."""

    async def read_manifest_bytes(self, manifest_hash: str) -> bytes:
        parts: list[bytes] = []
        await self._stream_verified(manifest_hash, parts.append)
        return b"".join(parts)

    async def download_manifest(self, manifest_hash: str, dest: str | os.PathLike[str]) -> Path:
        dest_path = Path(dest)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest_path.parent / f".{dest_path.name}.{secrets.token_hex(6)}.tmp"
        f = await asyncio.to_thread(open, tmp, "wb")
        try:
            await self._stream_verified(manifest_hash, f.write)
            await asyncio.to_thread(f.flush)
            await asyncio.to_thread(os.fsync, f.fileno())
            f.close()
            await asyncio.to_thread(os.replace, tmp, dest_path)
        finally:
            f.close()
            tmp.unlink(missing_ok=True)
        return dest_path

    async def _verify_collision(self, path: Path, manifest_hash: str) -> None:
        """Stream the stored blob and our file side by side; IntegrityError on a mismatch."""
        where = self.manifest_location(manifest_hash)
        f = await asyncio.to_thread(open, path, "rb")
        try:
            mismatch = False

            def compare(chunk: bytes) -> None:
                nonlocal mismatch
                if not mismatch and f.read(len(chunk)) != chunk:
                    mismatch = True

            try:
                await self._stream_verified(manifest_hash, compare)
            except ManifestHashMismatch as exc:
                raise IntegrityError(str(exc), manifest_hash=manifest_hash) from exc
            if mismatch or f.read(1):
                raise IntegrityError(
                    f"{where} already exists with different bytes than {path}, stored under "
                    f"the same hash {manifest_hash}; one of them is corrupt. Delete the store "
                    "copy if it fails verification, else check the local file",
                    manifest_hash=manifest_hash,
                )
        finally:
            f.close()

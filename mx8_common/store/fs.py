"""Filesystem backend of the manifest store (a local or shared folder).

Blocking file work runs in worker threads so the event loop never waits on a disk.
Conditional create is ``os.link(temp, final)``, which fails if ``final`` exists and never
exposes a half-written file; manifests written by the resolver into ``<root>/tmp`` are
hard-linked into ``by-hash`` without a copy. Stored manifests are made read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mx8_common.errors import IntegrityError, StoreError
from mx8_common.manifest.hashing import HashingSink, copy_hashed, sha256_hex
from mx8_common.store.base import (
    STREAM_CHUNK,
    LockState,
    ManifestStore,
    check_hash,
    store_os_error,
)

__all__ = ["FsManifestStore"]

T = TypeVar("T")


def _version(body: bytes) -> str:
    return sha256_hex(body)


def _same_content(stored: Path, ours: Path, manifest_hash: str, where: str) -> None:
    """Stream both files; IntegrityError unless they are equal and hash to ``manifest_hash``."""
    sha = hashlib.sha256()
    with open(stored, "rb") as a, open(ours, "rb") as b:
        while True:
            ca, cb = a.read(STREAM_CHUNK), b.read(STREAM_CHUNK)
            if ca != cb:
                raise IntegrityError(
                    f"{where} already exists with different bytes than the manifest being "
                    f"stored under the same hash {manifest_hash}; the store copy is corrupt. "
                    "Delete it and index again",
                    manifest_hash=manifest_hash,
                )
            if not ca:
                break
            sha.update(ca)
    if sha.hexdigest() != manifest_hash:
        raise IntegrityError(
            f"the manifest being stored as {manifest_hash} (and the equal copy at {where}) "
            f"hashes to {sha.hexdigest()}; refusing to keep a mislabelled manifest",
            manifest_hash=manifest_hash,
        )


class FsManifestStore(ManifestStore):
    """A manifest store in a folder; see ``manifest_store`` for the layout."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._root = Path(self.root)
        self._verified: set[str] = set()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            # The one boundary of disk errors: a full disk, a directory where a lock file
            # belongs, a read-only root become one StoreError naming the path and the fix.
            raise store_os_error(exc, self.root) from exc

    def _path(self, rel: str) -> Path:
        return self._root / rel

    def _manifest(self, manifest_hash: str) -> Path:
        return self._root / "by-hash" / check_hash(manifest_hash)

    def scratch_dir(self) -> Path:
        path = self._root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest_location(self, manifest_hash: str) -> str:
        return str(self._manifest(manifest_hash))

    def _tmp_beside(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"

    # -- manifests -------------------------------------------------------------------------
    async def has(self, manifest_hash: str) -> bool:
        return await self._run(self._manifest(manifest_hash).is_file)

    def _put_sync(self, src: Path, manifest_hash: str) -> None:
        final = self._manifest(manifest_hash)
        where = str(final)
        if final.exists():
            _same_content(final, src, manifest_hash, where)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        own_temp = src.resolve().parent == self.scratch_dir().resolve()
        if own_temp:
            # The resolver's own temp file: already hashed by the writer, link it in place.
            os.chmod(src, 0o444)
            try:
                os.link(src, final)
            except FileExistsError:
                _same_content(final, src, manifest_hash, where)
            return
        tmp = self._tmp_beside(final)
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                digest = copy_hashed(fin.read, fout.write, chunk=STREAM_CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
            if digest != manifest_hash:
                raise IntegrityError(
                    f"{src} hashes to {digest}, not {manifest_hash}; refusing to "
                    "store it under the wrong hash",
                    manifest_hash=manifest_hash,
                )
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)
            except FileExistsError:
                _same_content(final, src, manifest_hash, where)
        finally:
            tmp.unlink(missing_ok=True)

    async def put_manifest_file(self, path: str | os.PathLike[str], manifest_hash: str) -> None:
        await self._run(self._put_sync, Path(path), check_hash(manifest_hash))

    def _len_sync(self, manifest_hash: str) -> int:
        try:
            return self._manifest(manifest_hash).stat().st_size
        except FileNotFoundError:
            raise self._not_found(manifest_hash) from None

    async def manifest_len(self, manifest_hash: str) -> int:
        return await self._run(self._len_sync, manifest_hash)

    def _range_sync(self, manifest_hash: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StoreError(f"bad range offset={offset} length={length}")
        try:
            fd = os.open(self._manifest(manifest_hash), os.O_RDONLY)
        except FileNotFoundError:
            raise self._not_found(manifest_hash) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def read_range(self, manifest_hash: str, offset: int, length: int) -> bytes:
        return await self._run(self._range_sync, manifest_hash, offset, length)

    def _stream_verified(self, manifest_hash: str, sink: Callable[[bytes], object]) -> None:
        """Feed the stored manifest to ``sink`` chunk by chunk; raise if it misses its hash."""
        src = self._manifest(manifest_hash)
        hashing = HashingSink(sink)
        try:
            with open(src, "rb") as fin:
                copy_hashed(fin.read, hashing, chunk=STREAM_CHUNK)
        except FileNotFoundError:
            raise self._not_found(manifest_hash) from None
        hashing.check(
            manifest_hash,
            what=f"stored manifest {src}",
            fix="the store copy is corrupt: delete it and index again",
        )

    def _download_sync(self, manifest_hash: str, dest: Path) -> None:
        tmp = self._tmp_beside(dest)
        try:
            with open(tmp, "wb") as fout:
                self._stream_verified(manifest_hash, fout.write)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def download_manifest(self, manifest_hash: str, dest: str | os.PathLike[str]) -> Path:
        dest_path = Path(dest)
        await self._run(self._download_sync, check_hash(manifest_hash), dest_path)
        return dest_path

    async def read_manifest_bytes(self, manifest_hash: str) -> bytes:
        parts: list[bytes] = []
        await self._run(self._stream_verified, check_hash(manifest_hash), parts.append)
        return b"".join(parts)

    async def local_path(self, manifest_hash: str) -> Path | None:
        path = self._manifest(manifest_hash)
        if manifest_hash not in self._verified:
            # Hash it once per store object; later calls trust the read-only file.
            await self._run(self._stream_verified, manifest_hash, lambda _chunk: None)
            self._verified.add(manifest_hash)
        return path

    # -- small objects ---------------------------------------------------------------------
    def _put_small_sync(self, rel: str, data: bytes) -> bool:
        final = self._path(rel)
        tmp = self._tmp_beside(final)
        try:
            tmp.write_bytes(data)
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    async def _put_small(self, rel: str, data: bytes) -> bool:
        return await self._run(self._put_small_sync, rel, data)

    def _get_small_sync(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    async def _get_small(self, rel: str) -> bytes | None:
        return await self._run(self._get_small_sync, rel)

    def _replace_small_sync(self, rel: str, data: bytes) -> None:
        final = self._path(rel)
        tmp = self._tmp_beside(final)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    async def _replace_small(self, rel: str, data: bytes) -> None:
        await self._run(self._replace_small_sync, rel, data)

    def _list_sync(self, folder: str) -> list[str]:
        try:
            entries = list(os.scandir(self._path(folder)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        # Dot files are temp copies; folders are not objects (S3 lists them apart too).
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())

    async def list_objects(self, folder: str) -> list[str]:
        return await self._run(self._list_sync, folder)

    # -- locks -----------------------------------------------------------------------------
    def _lock(self, key: str) -> str:
        return f"locks/{key}.lock"

    async def lock_create(self, key: str, body: bytes) -> str | None:
        created = await self._run(self._put_small_sync, self._lock(key), body)
        return _version(body) if created else None

    async def lock_read(self, key: str) -> LockState | None:
        body = await self._run(self._get_small_sync, self._lock(key))
        return None if body is None else LockState(body, _version(body))

    def _lock_replace_sync(self, key: str, version: str, body: bytes) -> str | None:
        # Check-then-replace is not atomic on a filesystem; the window is one heartbeat
        # write, and a lost race only means two indexers, which content addressing
        # tolerates (both store the same bytes under the same hash).
        current = self._get_small_sync(self._lock(key))
        if current is None or _version(current) != version:
            return None
        self._replace_small_sync(self._lock(key), body)
        return _version(body)

    async def lock_replace(self, key: str, version: str, body: bytes) -> str | None:
        return await self._run(self._lock_replace_sync, key, version, body)

    def _lock_delete_sync(self, key: str, version: str) -> bool:
        lock = self._path(self._lock(key))
        grabbed = lock.parent / f".{lock.name}.{secrets.token_hex(6)}.del"
        try:
            os.rename(lock, grabbed)  # atomic: of racing deleters exactly one gets the file
        except FileNotFoundError:
            return False
        try:
            if _version(grabbed.read_bytes()) == version:
                return True
            # We grabbed a newer lock than the one we judged: put it back if the slot is free.
            with contextlib.suppress(FileExistsError):
                os.link(grabbed, lock)
            return False
        finally:
            grabbed.unlink(missing_ok=True)

    async def lock_delete(self, key: str, version: str) -> bool:
        return await self._run(self._lock_delete_sync, key, version)

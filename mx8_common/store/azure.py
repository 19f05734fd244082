"""Azure Blob backend of the manifest store (``az://container/prefix`` roots).

Conditional creates are obstore puts with ``mode="create"`` (Azure's ``If-None-Match: *``);
lock heartbeats and takeovers are puts conditional on the lock's ETag, and a lock is
released by a ``DELETE`` with ``If-Match`` (obstore has no conditional delete: that one
call goes through ``storage.azure_rest``). Manifests upload from the file in one Put Blob
(Azure takes up to 5000 MiB in one) after their hash was checked locally; every whole read
re-verifies the hash while streaming.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mx8_common.errors import IntegrityError, ManifestHashMismatch, StoreError
from mx8_common.manifest.hashing import HashingSink, file_sha256
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.azure_store import translate_azure_error
from mx8_common.storage.native_store import native_store
from mx8_common.store.base import STREAM_CHUNK, LockState, ManifestStore, check_hash

__all__ = ["AzureManifestStore"]


def _kind(exc: BaseException) -> str:
    """``exists``, ``precondition``, ``missing`` or "" for an obstore error."""
    name = type(exc).__name__
    if name == "AlreadyExistsError":
        return "exists"
    if name == "PreconditionError":
        return "precondition"
    if name == "NotFoundError" or isinstance(exc, FileNotFoundError):
        return "missing"
    return ""


class AzureManifestStore(ManifestStore):
    """A manifest store under ``az://container/prefix``; see ``store.base`` for the layout."""

    def __init__(self, root: str) -> None:
        if not root.startswith("az://"):
            raise StoreError(f"Azure manifest store root {root!r} must start with az://")
        container, _, prefix = root[len("az://") :].partition("/")
        if not container:
            raise StoreError(f"manifest store root {root!r} names no container")
        self.root = root.rstrip("/")
        self.container = container
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._store: Any = None
        self._rest: AzureRestClient | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _obstore(self) -> Any:
        if self._store is None:
            self._store = native_store("az", self.container, location=self.root)
        return self._store

    async def aclose(self) -> None:
        rest, self._rest = self._rest, None
        if rest is not None:
            await rest.aclose()

    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _url(self, rel: str) -> str:
        return f"az://{self.container}/{self._key(rel)}"

    def manifest_location(self, manifest_hash: str) -> str:
        return self._url(f"by-hash/{check_hash(manifest_hash)}")

    async def _call(self, rel: str, fn: Callable[[Any], Any], *, tolerate: set[str]) -> Any:
        """``await fn(store)``; an obstore error of a kind in ``tolerate`` returns the kind."""
        try:
            return await fn(self._obstore())
        except StoreError:
            raise
        except Exception as exc:
            kind = _kind(exc)
            if kind and kind in tolerate:
                return kind
            raise translate_azure_error(exc, self._url(rel)) from None

    # -- manifests -------------------------------------------------------------------------
    async def _head(self, rel: str) -> dict[str, Any] | None:
        import obstore

        meta = await self._call(
            rel, lambda s: obstore.head_async(s, self._key(rel)), tolerate={"missing"}
        )
        return None if meta == "missing" else meta

    async def has(self, manifest_hash: str) -> bool:
        return await self._head(f"by-hash/{check_hash(manifest_hash)}") is not None

    async def manifest_len(self, manifest_hash: str) -> int:
        head = await self._head(f"by-hash/{check_hash(manifest_hash)}")
        if head is None:
            raise self._not_found(manifest_hash)
        return int(head["size"])

    async def read_range(self, manifest_hash: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StoreError(f"bad range offset={offset} length={length}")
        size = await self.manifest_len(manifest_hash)
        end = min(offset + length, size)
        if end <= offset:
            return b""
        import obstore

        rel = f"by-hash/{check_hash(manifest_hash)}"
        got = await self._call(
            rel,
            lambda s: obstore.get_range_async(s, self._key(rel), start=offset, end=end),
            tolerate={"missing"},
        )
        if got == "missing":
            raise self._not_found(manifest_hash)
        return bytes(got)

    async def _stream_verified(self, manifest_hash: str, sink: Callable[[bytes], object]) -> None:
        import obstore

        rel = f"by-hash/{check_hash(manifest_hash)}"
        result = await self._call(
            rel, lambda s: obstore.get_async(s, self._key(rel)), tolerate={"missing"}
        )
        if result == "missing":
            raise self._not_found(manifest_hash)
        hashing = HashingSink(sink)
        try:
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                hashing(bytes(chunk))
        except Exception as exc:
            raise translate_azure_error(exc, self._url(rel)) from None
        hashing.check(
            manifest_hash,
            what=f"stored manifest {self._url(rel)}",
            fix="the store copy is corrupt: delete it and index again",
        )

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

    async def local_path(self, manifest_hash: str) -> Path | None:
        return None

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

    async def put_manifest_file(self, path: str | os.PathLike[str], manifest_hash: str) -> None:
        import obstore

        path = Path(path)
        rel = f"by-hash/{check_hash(manifest_hash)}"
        if await self._head(rel) is not None:
            await self._verify_collision(path, manifest_hash)
            return
        actual = await asyncio.to_thread(file_sha256, path)
        if actual != manifest_hash:
            raise IntegrityError(
                f"{path} hashes to {actual}, not {manifest_hash}; refusing to store it under "
                "the wrong hash",
                manifest_hash=manifest_hash,
            )
        # One conditional Put Blob from the file (multipart puts cannot be conditional).
        created = await self._call(
            rel,
            lambda s: obstore.put_async(
                s, self._key(rel), path, mode="create", use_multipart=False
            ),
            tolerate={"exists", "precondition"},
        )
        if created in ("exists", "precondition"):
            await self._verify_collision(path, manifest_hash)

    # -- small objects ---------------------------------------------------------------------
    async def _put_small(self, rel: str, data: bytes) -> bool:
        import obstore

        got = await self._call(
            rel,
            lambda s: obstore.put_async(s, self._key(rel), data, mode="create"),
            tolerate={"exists", "precondition"},
        )
        return got not in ("exists", "precondition")

    async def _get_with_etag(self, rel: str) -> tuple[bytes, str] | None:
        import obstore

        async def get(s: Any) -> tuple[bytes, str]:
            result = await obstore.get_async(s, self._key(rel))
            return bytes(await result.bytes_async()), str(result.meta["e_tag"])

        got = await self._call(rel, get, tolerate={"missing"})
        return None if got == "missing" else got

    async def _get_small(self, rel: str) -> bytes | None:
        got = await self._get_with_etag(rel)
        return None if got is None else got[0]

    async def _replace_small(self, rel: str, data: bytes) -> None:
        import obstore

        await self._call(rel, lambda s: obstore.put_async(s, self._key(rel), data), tolerate=set())

    # -- locks -----------------------------------------------------------------------------
    def _lock(self, key: str) -> str:
        return f"locks/{key}.lock"

    async def lock_create(self, key: str, body: bytes) -> str | None:
        import obstore

        rel = self._lock(key)
        got = await self._call(
            rel,
            lambda s: obstore.put_async(s, self._key(rel), body, mode="create"),
            tolerate={"exists", "precondition"},
        )
        return None if isinstance(got, str) else str(got["e_tag"])

    async def lock_read(self, key: str) -> LockState | None:
        got = await self._get_with_etag(self._lock(key))
        return None if got is None else LockState(got[0], got[1])

    async def lock_replace(self, key: str, version: str, body: bytes) -> str | None:
        import obstore

        rel = self._lock(key)
        got = await self._call(
            rel,
            lambda s: obstore.put_async(s, self._key(rel), body, mode={"e_tag": version}),
            tolerate={"precondition", "missing"},
        )
        return None if isinstance(got, str) else str(got["e_tag"])

    async def lock_delete(self, key: str, version: str) -> bool:
        if self._rest is None:
            self._rest = AzureRestClient()
        return await self._rest.delete_if_match(self._url(self._lock(key)), version)

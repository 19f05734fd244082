"""Azure Blob backend of the manifest store (``az://container/prefix`` roots).

Everything goes through ``storage.azure_rest`` (aiohttp), never obstore: resolving a
snapshot then starts no native runtime in a process that may fork DataLoader workers or
exit right after (a CLI). Conditional creates are Put Blob with ``If-None-Match: *``; lock
heartbeats and takeovers are puts with ``If-Match: <etag>``, releases are deletes with it.
A manifest is uploaded from its file in one Put Blob (Azure takes up to 5000 MiB in one)
after its hash was checked locally; every whole read re-verifies the hash.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from mx8_common.errors import (
    IntegrityError,
    ObjectNotFoundError,
    StoreError,
)
from mx8_common.manifest.hashing import HashingSink, file_sha256
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.store.base import LockState, StreamedManifestStore

__all__ = ["AzureManifestStore"]


class AzureManifestStore(StreamedManifestStore):
    """A manifest store under ``az://container/prefix``; see ``store.base`` for the layout."""

    def __init__(self, root: str) -> None:
        self.container = self._parse_root(root, "az", "Azure", "container")
        self._rest: AzureRestClient | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _client(self) -> AzureRestClient:
        if self._rest is None:
            self._rest = AzureRestClient()
        return self._rest

    async def aclose(self) -> None:
        rest, self._rest = self._rest, None
        if rest is not None:
            await rest.aclose()

    # -- manifests -------------------------------------------------------------------------
    async def has(self, manifest_hash: str) -> bool:
        return await self._client().head(self.manifest_location(manifest_hash)) is not None

    async def manifest_len(self, manifest_hash: str) -> int:
        head = await self._client().head(self.manifest_location(manifest_hash))
        if head is None:
            raise self._not_found(manifest_hash)
        return head[0]

    async def read_range(self, manifest_hash: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StoreError(f"bad range offset={offset} length={length}")
        size = await self.manifest_len(manifest_hash)
        end = min(offset + length, size)
        if end <= offset:
            return b""
        try:
            got = await self._client().get(
                self.manifest_location(manifest_hash), offset, end - offset
            )
        except ObjectNotFoundError:
            raise self._not_found(manifest_hash) from None
        return got.data

    async def _stream_verified(self, manifest_hash: str, sink: Callable[[bytes], object]) -> None:
        where = self.manifest_location(manifest_hash)
        hashing = HashingSink(sink)
        if not await self._client().stream(where, hashing):
            raise self._not_found(manifest_hash)
        hashing.check(
            manifest_hash,
            what=f"stored manifest {where}",
            fix="the store copy is corrupt: delete it and index again",
        )

    async def local_path(self, manifest_hash: str) -> Path | None:
        return None

    async def put_manifest_file(self, path: str | os.PathLike[str], manifest_hash: str) -> None:
        path = Path(path)
        where = self.manifest_location(manifest_hash)
        if await self._client().head(where) is not None:
            await self._verify_collision(path, manifest_hash)
            return
        actual = await asyncio.to_thread(file_sha256, path)
        if actual != manifest_hash:
            raise IntegrityError(
                f"{path} hashes to {actual}, not {manifest_hash}; refusing to store it under "
                "the wrong hash",
                manifest_hash=manifest_hash,
            )
        size = (await asyncio.to_thread(path.stat)).st_size
        f = await asyncio.to_thread(open, path, "rb")
        try:
            created = await self._client().put(where, f, size=size, create=True)
        finally:
            f.close()
        if created is None:
            await self._verify_collision(path, manifest_hash)

    # -- small objects ---------------------------------------------------------------------
    async def _put_small(self, rel: str, data: bytes) -> bool:
        return await self._client().put(self._url(rel), data, create=True) is not None

    async def _get_small(self, rel: str) -> bytes | None:
        chunks: list[bytes] = []
        if not await self._client().stream(self._url(rel), chunks.append):
            return None
        return b"".join(chunks)

    async def _replace_small(self, rel: str, data: bytes) -> None:
        await self._client().put(self._url(rel), data)

    async def list_objects(self, folder: str) -> list[str]:
        prefix = self._key(folder.rstrip("/") + "/")
        names: list[str] = []
        token: str | None = None
        while True:
            page = await self._client().list_page(
                self.container, prefix, delimiter=True, token=token
            )
            names += [name[len(prefix) :] for name, _size, _modified in page.objects]
            token = page.next_token
            if not token:
                return sorted(names)

    # -- locks -----------------------------------------------------------------------------
    def _lock(self, key: str) -> str:
        return f"locks/{key}.lock"

    async def lock_create(self, key: str, body: bytes) -> str | None:
        return await self._client().put(self._url(self._lock(key)), body, create=True)

    async def lock_read(self, key: str) -> LockState | None:
        where = self._url(self._lock(key))
        try:
            got = await self._client().get(where, None, None)
        except ObjectNotFoundError:
            return None
        return LockState(got.data, got.etag)

    async def lock_replace(self, key: str, version: str, body: bytes) -> str | None:
        return await self._client().put(self._url(self._lock(key)), body, if_match=version)

    async def lock_delete(self, key: str, version: str) -> bool:
        return await self._client().delete_if_match(self._url(self._lock(key)), version)

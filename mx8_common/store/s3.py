"""S3 backend of the manifest store (``s3://bucket/prefix`` roots).

Conditional creates are ``PutObject`` with ``If-None-Match: *``; lock heartbeats and
takeovers are ``If-Match: <etag>`` puts and deletes. Manifests upload straight from the
file (one PUT, or a multipart upload past ``multipart_threshold`` whose completion is
conditional), and single PUTs carry ``x-amz-checksum-sha256`` equal to the manifest hash,
so the server itself refuses bytes that do not match. Reads are ranged GETs streamed in
chunks; no whole manifest is held unless ``read_manifest_bytes`` is asked for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions

from mx8_common.errors import (
    IntegrityError,
    StoreError,
)
from mx8_common.manifest.hashing import HashingSink, file_sha256
from mx8_common.retry import NO_JITTER, Backoff
from mx8_common.storage.s3_client import S3Settings, open_s3_client, translate_s3_error
from mx8_common.store.base import STREAM_CHUNK, LockState, StreamedManifestStore, check_hash

__all__ = ["S3ManifestStore"]

T = TypeVar("T")

_PRECONDITION = {"PreconditionFailed", "412"}
_CONFLICT = {"ConditionalRequestConflict", "409", "OperationAborted"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_PART_SIZE = 64 * 1024 * 1024
#: Another conditional write to the key is in flight: ask again shortly, 5 tries in all.
_CONFLICT_BACKOFF = Backoff(base_s=0.05, factor=1.0, jitter=NO_JITTER, attempts=5)


class _WriteConflict(Exception):
    """A conditional write met another one in flight (409); retried, never escapes."""


def _code(exc: botocore.exceptions.ClientError) -> str:
    err = exc.response.get("Error", {}) or {}
    code = str(err.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


class S3ManifestStore(StreamedManifestStore):
    """A manifest store under ``s3://bucket/prefix``; see ``manifest_store`` for the layout."""

    def __init__(
        self,
        root: str,
        *,
        s3_endpoint_url: str | None = None,
        multipart_threshold: int = 1024 * 1024 * 1024,
        part_size: int = _PART_SIZE,
    ) -> None:
        self.bucket = self._parse_root(root, "s3", "S3", "bucket")
        self.settings = S3Settings.from_env(s3_endpoint_url)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None

    # -- plumbing --------------------------------------------------------------------------
    async def _c(self) -> Any:
        if self._client is None:
            if self._client_lock is None:
                self._client_lock = asyncio.Lock()
            async with self._client_lock:
                if self._client is None:
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(open_s3_client(self.settings))
                    self._stack = stack
        return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _call(
        self, rel: str, fn: Callable[[Any], Awaitable[T]], *, tolerate: set[str] = frozenset()
    ) -> tuple[T | None, str | None]:
        """Run ``fn(client)``; a ClientError whose code is in ``tolerate`` returns its code."""
        client = await self._c()
        try:
            return await fn(client), None
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in tolerate:
                return None, code
            raise translate_s3_error(exc, self._url(rel)) from None
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError) as exc:
            # Unreachable endpoint, reset, timeout: one typed, retryable error.
            raise translate_s3_error(exc, self._url(rel)) from None
        except Exception as exc:
            raise translate_s3_error(exc, self._url(rel)) from None

    async def _body_chunks(self, resp: dict[str, Any]) -> AsyncIterator[bytes]:
        body = resp["Body"]
        async with body:  # releases the connection however the stream ends
            while chunk := await body.read(STREAM_CHUNK):
                yield chunk

    # -- manifests -------------------------------------------------------------------------
    async def _head(self, rel: str) -> dict[str, Any] | None:
        resp, _ = await self._call(
            rel,
            lambda c: c.head_object(Bucket=self.bucket, Key=self._key(rel)),
            tolerate=_MISSING,
        )
        return resp

    async def has(self, manifest_hash: str) -> bool:
        return await self._head(f"by-hash/{check_hash(manifest_hash)}") is not None

    async def manifest_len(self, manifest_hash: str) -> int:
        head = await self._head(f"by-hash/{check_hash(manifest_hash)}")
        if head is None:
            raise self._not_found(manifest_hash)
        return int(head["ContentLength"])

    async def read_range(self, manifest_hash: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StoreError(f"bad range offset={offset} length={length}")
        if length == 0:
            return b""
        rel = f"by-hash/{check_hash(manifest_hash)}"

        async def get(c: Any) -> bytes:
            resp = await c.get_object(
                Bucket=self.bucket,
                Key=self._key(rel),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            async with resp["Body"] as body:
                return bytes(await body.read())

        data, code = await self._call(rel, get, tolerate=_MISSING | {"InvalidRange", "416"})
        if code in _MISSING:
            raise self._not_found(manifest_hash)
        return data or b""

    async def _stream_verified(self, manifest_hash: str, sink: Callable[[bytes], object]) -> None:
        rel = f"by-hash/{check_hash(manifest_hash)}"
        resp, _ = await self._call(
            rel, lambda c: c.get_object(Bucket=self.bucket, Key=self._key(rel)), tolerate=_MISSING
        )
        if resp is None:
            raise self._not_found(manifest_hash)
        hashing = HashingSink(sink)
        try:
            async for chunk in self._body_chunks(resp):
                hashing(chunk)
        except Exception as exc:
            raise translate_s3_error(exc, self._url(rel)) from None
        hashing.check(
            manifest_hash,
            what=f"stored manifest {self._url(rel)}",
            fix="the store copy is corrupt: delete it and index again",
        )

    async def local_path(self, manifest_hash: str) -> Path | None:
        return None

    async def put_manifest_file(self, path: str | os.PathLike[str], manifest_hash: str) -> None:
        path = Path(path)
        rel = f"by-hash/{check_hash(manifest_hash)}"
        if await self._head(rel) is not None:
            await self._verify_collision(path, manifest_hash)
            return
        size = (await asyncio.to_thread(path.stat)).st_size
        # Hash our file first: never store bytes under a hash they do not have. (Single PUTs
        # also carry the checksum, so a real S3 rejects bytes corrupted in transit.)
        actual = await asyncio.to_thread(file_sha256, path)
        if actual != manifest_hash:
            raise IntegrityError(
                f"{path} hashes to {actual}, not {manifest_hash}; refusing to store it under "
                "the wrong hash",
                manifest_hash=manifest_hash,
            )
        if size > self.multipart_threshold:
            created = await self._put_multipart(path, rel, size)
        else:
            created = await self._put_single(path, rel, manifest_hash, size)
        if not created:
            await self._verify_collision(path, manifest_hash)

    async def _put_single(self, path: Path, rel: str, manifest_hash: str, size: int) -> bool:
        checksum = base64.b64encode(bytes.fromhex(manifest_hash)).decode()
        f = await asyncio.to_thread(open, path, "rb")
        try:
            _resp, code = await self._call(
                rel,
                lambda c: c.put_object(
                    Bucket=self.bucket,
                    Key=self._key(rel),
                    Body=f,
                    ContentLength=size,
                    ChecksumSHA256=checksum,
                    IfNoneMatch="*",
                ),
                tolerate=_PRECONDITION | _CONFLICT | {"BadDigest", "InvalidRequest"},
            )
        finally:
            f.close()
        if code in ("BadDigest", "InvalidRequest"):
            raise IntegrityError(
                f"{path} does not hash to {manifest_hash} (S3 rejected its SHA-256 checksum); "
                "refusing to store it under the wrong hash",
                manifest_hash=manifest_hash,
            )
        return code is None

    async def _put_multipart(self, path: Path, rel: str, size: int) -> bool:
        key = self._key(rel)
        created, _ = await self._call(
            rel, lambda c: c.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        assert created is not None
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        done = False
        try:
            f = await asyncio.to_thread(open, path, "rb")
            try:
                for number in range(1, -(-size // self.part_size) + 1):
                    # One part in memory at a time: memory stays at part_size, not the file.
                    chunk = await asyncio.to_thread(f.read, self.part_size)
                    resp, _ = await self._call(
                        rel,
                        lambda c, n=number, b=chunk: c.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=b
                        ),
                    )
                    assert resp is not None
                    parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            finally:
                f.close()
            _resp, code = await self._call(
                rel,
                lambda c: c.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
                tolerate=_PRECONDITION | _CONFLICT,
            )
            done = code is None
            return done
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await self._call(
                        rel,
                        lambda c: c.abort_multipart_upload(
                            Bucket=self.bucket, Key=key, UploadId=upload_id
                        ),
                        tolerate=_MISSING | {"NoSuchUpload"},
                    )

    # -- small objects ---------------------------------------------------------------------
    async def _put_small(self, rel: str, data: bytes) -> bool:
        async def put() -> bool:
            _resp, code = await self._call(
                rel,
                lambda c: c.put_object(
                    Bucket=self.bucket, Key=self._key(rel), Body=data, IfNoneMatch="*"
                ),
                tolerate=_PRECONDITION | _CONFLICT,
            )
            if code in _CONFLICT:
                raise _WriteConflict(rel)
            return code is None

        try:
            return await _CONFLICT_BACKOFF.run(
                put, retry_if=lambda exc: isinstance(exc, _WriteConflict)
            )
        except _WriteConflict:
            return False

    async def _get_with_etag(self, rel: str) -> tuple[bytes, str] | None:
        async def get(c: Any) -> tuple[bytes, str]:
            resp = await c.get_object(Bucket=self.bucket, Key=self._key(rel))
            body = resp["Body"]
            async with body:
                return bytes(await body.read()), str(resp["ETag"])

        result, _ = await self._call(rel, get, tolerate=_MISSING)
        return result

    async def _get_small(self, rel: str) -> bytes | None:
        got = await self._get_with_etag(rel)
        return None if got is None else got[0]

    async def _replace_small(self, rel: str, data: bytes) -> None:
        await self._call(
            rel, lambda c: c.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)
        )

    async def list_objects(self, folder: str) -> list[str]:
        prefix = self._key(folder.rstrip("/") + "/")

        async def list_all(c: Any) -> list[str]:
            names: list[str] = []
            async for page in c.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                names += [o["Key"][len(prefix) :] for o in page.get("Contents", ())]
            return names

        names, _ = await self._call(folder, list_all)
        return sorted(names or ())

    # -- locks -----------------------------------------------------------------------------
    def _lock(self, key: str) -> str:
        return f"locks/{key}.lock"

    async def lock_create(self, key: str, body: bytes) -> str | None:
        rel = self._lock(key)
        resp, _ = await self._call(
            rel,
            lambda c: c.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=body, IfNoneMatch="*"
            ),
            tolerate=_PRECONDITION | _CONFLICT,
        )
        return None if resp is None else str(resp["ETag"])

    async def lock_read(self, key: str) -> LockState | None:
        got = await self._get_with_etag(self._lock(key))
        return None if got is None else LockState(got[0], got[1])

    async def lock_replace(self, key: str, version: str, body: bytes) -> str | None:
        rel = self._lock(key)
        resp, _ = await self._call(
            rel,
            lambda c: c.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=body, IfMatch=version
            ),
            tolerate=_PRECONDITION | _CONFLICT | _MISSING,
        )
        return None if resp is None else str(resp["ETag"])

    async def lock_delete(self, key: str, version: str) -> bool:
        rel = self._lock(key)
        _resp, code = await self._call(
            rel,
            lambda c: c.delete_object(Bucket=self.bucket, Key=self._key(rel), IfMatch=version),
            tolerate=_PRECONDITION | _CONFLICT | _MISSING,
        )
        return code is None

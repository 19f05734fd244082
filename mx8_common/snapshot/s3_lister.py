"""Paged S3 listing as ``(relative_key, size)`` pages: the S3 ``PageSource``.

``S3PageSource`` yields each ListObjectsV2 page as it arrives, so the full key list is
never in memory; ``folders()`` is one delimiter listing. The resolver checks key order
with ``page_source.ordered_pages``.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from mx8_common.errors import TransientStorageError
from mx8_common.manifest.labels import FolderSummary
from mx8_common.retry import Backoff
from mx8_common.storage.s3_client import s3_errors

__all__ = ["S3PageSource"]

T = TypeVar("T")

#: A listing call is tried 4 times, 100 ms doubling, full jitter.
_LIST_BACKOFF = Backoff(base_s=0.1, attempts=4)


async def _with_retries(call: Callable[[], Awaitable[T]], location: str) -> T:
    """Retry a listing call on throttling/transport errors, with full-jitter backoff."""

    async def translated() -> T:
        with s3_errors(location):
            return await call()

    return await _LIST_BACKOFF.run(
        translated, retry_if=lambda exc: isinstance(exc, TransientStorageError)
    )


def _server_time(resp: dict[str, Any]) -> float | None:
    """The answer's Date header as Unix seconds (the server's clock), if it has one."""
    headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    date = headers.get("date")
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


class S3PageSource:
    """ListObjectsV2 pages under ``s3://bucket/prefix`` through an open aiobotocore client
    (a ``PageSource``).

    ``recursive=False`` lists with ``Delimiter="/"``: only keys directly under the
    prefix. Zero-byte keys ending in ``/`` are folder markers made by consoles, not
    samples, and are skipped. A key ending in ``/`` that has a body is skipped too (no
    file name can hold it) but counted: ``skipped_objects`` with ``skipped_example``,
    which the resolver reports in ``snapshot_index_summary``.
    """

    #: Why ``skipped_objects`` were left out of the snapshot.
    SKIPPED_REASON = "key ends in '/' but the object has a body"

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = True,
        page_size: int = 1000,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.recursive = recursive
        self.page_size = page_size
        self.skipped_objects = 0
        self.skipped_example: str | None = None
        #: S3's clock (the Date header) at the first listing answer: readers of the snapshot
        #: refuse objects modified after it. None until a page was listed.
        self.listed_at: float | None = None

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    async def _list(self, delimiter: bool, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.page_size,
        }
        if delimiter:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token

        async def call() -> dict[str, Any]:
            return dict(await self.client.list_objects_v2(**kwargs))

        resp = await _with_retries(call, self.root)
        if self.listed_at is None:
            self.listed_at = _server_time(resp)
        return resp

    async def _raw_pages(self, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            resp = await self._list(delimiter, token)
            yield resp
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")
            if not token:
                return

    async def pages(self) -> AsyncIterator[list[tuple[str, int]]]:
        """One page of ``(relative_key, size)`` per ListObjectsV2 response, as it arrives."""
        cut = len(self.prefix)
        async for resp in self._raw_pages(not self.recursive):
            page = []
            for obj in resp.get("Contents", ()):
                key, size = obj["Key"], int(obj.get("Size", 0))
                if not key.endswith("/"):
                    page.append((key[cut:], size))
                elif size > 0:
                    self.skipped_objects += 1
                    self.skipped_example = self.skipped_example or key
            yield page

    async def folders(self) -> FolderSummary:
        """One delimiter listing: common prefixes are the folders, contents the loose keys."""
        cut = len(self.prefix)
        folders: list[str] = []
        loose = 0
        example: str | None = None
        async for resp in self._raw_pages(True):
            for cp in resp.get("CommonPrefixes", ()):
                folders.append(cp["Prefix"][cut:].rstrip("/"))
            for obj in resp.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    loose += 1
                    example = example or obj["Key"][cut:]
        return FolderSummary(tuple(sorted(set(folders))), loose, example)

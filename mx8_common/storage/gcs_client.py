"""Google Cloud Storage over its JSON API: paged listing and (ranged) GETs, one aiohttp pool.

Why not obstore's ``GCSStore``: it lists through GCS's XML API and needs ``ETag`` and
``Last-Modified`` on every GET, and ``gcp-storage-emulator`` (what the tests run against)
offers neither; the JSON API works on both, so one code path is tested and shipped.

Where requests go and how they are signed (``GcsSettings.from_env``):

- ``STORAGE_EMULATOR_HOST`` set (the variable Google's own clients honour): that endpoint,
  unsigned;
- otherwise ``https://storage.googleapis.com`` with an OAuth token from Application Default
  Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``,
  or the VM's service account), through the ``google-auth`` package (``pip install 'mx8[gcs]'``).

Errors become mx8 errors here, one line each, naming the location and what to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

__all__ = ["GcsClient", "GcsObject", "GcsSettings", "gcs_errors", "split_gcs_location"]

_PUBLIC_ENDPOINT = "https://storage.googleapis.com"
_READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_CREDENTIALS_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run "
    "`gcloud auth application-default login`), or STORAGE_EMULATOR_HOST for an emulator"
)


def split_gcs_location(location: str) -> tuple[str, str]:
    """``gs://bucket/key`` -> ``(bucket, key)``; anything else is a ``StorageError``."""
    bucket, sep, key = location[5:].partition("/")
    if not location.startswith("gs://") or not bucket or not sep or not key:
        raise StorageError(
            f"{location!r} is not a GCS object location; write it as gs://bucket/key",
            location=location,
        )
    return bucket, key


@dataclass(frozen=True, kw_only=True)
class GcsSettings:
    """Where GCS requests go (gs:// links)."""

    emulator_host: str | None = setting(
        None,
        env="STORAGE_EMULATOR_HOST",
        help="GCS emulator, host:port or URL (requests go there unsigned); unset: "
        "storage.googleapis.com with Application Default Credentials",
    )

    def __post_init__(self) -> None:
        if not (self.emulator_host or "").strip():
            object.__setattr__(self, "emulator_host", None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GcsSettings:
        return load_env(cls, environ)

    @property
    def endpoint(self) -> str:
        """Base URL of the JSON API: the emulator's, or the public endpoint."""
        host = (self.emulator_host or "").strip()
        if not host:
            return _PUBLIC_ENDPOINT
        return (host if "://" in host else "http://" + host).rstrip("/")

    @property
    def signed(self) -> bool:
        """False for an emulator: no token is fetched or sent."""
        return self.emulator_host is None


class _Token:
    """An OAuth access token from Application Default Credentials, refreshed before expiry."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    async def header(self, location: str) -> str:
        async with self._lock:
            if self._credentials is None:
                self._credentials = await asyncio.to_thread(_default_credentials, location)
            creds = self._credentials
            expiry = getattr(creds, "expiry", None)
            stale = expiry is None or expiry.timestamp() - time.time() < 60
            if not getattr(creds, "token", None) or stale:
                await asyncio.to_thread(_refresh, creds, location)
            return f"Bearer {creds.token}"


def _default_credentials(location: str) -> Any:
    try:
        import google.auth  # type: ignore[import-not-found, import-untyped, unused-ignore]
        import google.auth.exceptions  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise AccessDeniedError(
            f"reading {location} needs Google credentials through the google-auth package: "
            f"pip install 'mx8[gcs]', then {_CREDENTIALS_HINT}",
            location=location,
        ) from None
    try:
        credentials, _project = google.auth.default(scopes=[_READ_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError:
        raise AccessDeniedError(
            f"no Google credentials found to read {location}; {_CREDENTIALS_HINT}",
            location=location,
        ) from None
    return credentials


def _refresh(credentials: Any, location: str) -> None:
    import google.auth.exceptions  # type: ignore[import-not-found, import-untyped, unused-ignore]
    import google.auth.transport.requests  # type: ignore[import-not-found, import-untyped, unused-ignore]

    try:
        credentials.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as exc:
        raise AccessDeniedError(
            f"cannot get a Google access token to read {location} ({exc}); {_CREDENTIALS_HINT}",
            location=location,
        ) from None


@dataclass(frozen=True)
class GcsObject:
    """One GET's answer: the bytes and what the headers said about the object."""

    data: bytes
    #: Size of the whole object (Content-Length, or the total of Content-Range); -1 unknown.
    object_size: int
    #: ``bytes a-b/total`` for a ranged answer, else None.
    content_range: str | None
    #: Last-Modified as Unix seconds, when the server sent it.
    last_modified: float | None


def _status_error(status: int, location: str, *, listing: bool, body: str = "") -> StorageError:
    if status == 404:
        if listing:
            return BucketNotFoundError(
                f"bucket of {location} does not exist; check the bucket name (and "
                "STORAGE_EMULATOR_HOST when using an emulator)",
                location=location,
            )
        return ObjectNotFoundError(
            f"{location} does not exist (it was deleted or renamed since the snapshot?)",
            location=location,
        )
    if status in (401, 403):
        return AccessDeniedError(
            f"access denied to {location} (GCS answered {status}); check the account's "
            f"permissions on the bucket, or {_CREDENTIALS_HINT}",
            location=location,
        )
    if status == 429 or status >= 500:
        return TransientStorageError(
            f"GCS answered {status} for {location}; retrying may help", location=location
        )
    detail = f": {body[:200]}" if body else ""
    return StorageError(f"GCS answered {status} for {location}{detail}", location=location)


@contextlib.contextmanager
def gcs_errors(location: str, endpoint: str) -> Iterator[None]:
    """Transport failures inside as one-line ``TransientStorageError`` naming the endpoint."""
    try:
        yield
    except StorageError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TransientStorageError(
            f"cannot reach the GCS endpoint {endpoint} for {location}: "
            f"{type(exc).__name__}: {exc}; is STORAGE_EMULATOR_HOST right and the server up?",
            location=location,
        ) from None


class GcsClient:
    """One aiohttp pool for GCS listing and GETs; ``async with`` owns it."""

    def __init__(self, settings: GcsSettings | None = None) -> None:
        self.settings = settings or GcsSettings.from_env()
        self._session: aiohttp.ClientSession | None = None
        self._token = _Token() if self.settings.signed else None

    async def __aenter__(self) -> GcsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    async def _headers(self, location: str) -> dict[str, str]:
        if self._token is None:
            return {}
        return {"Authorization": await self._token.header(location)}

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        *,
        delimiter: bool = False,
        page_token: str | None = None,
        start_offset: str | None = None,
        max_results: int = 1000,
    ) -> dict[str, Any]:
        """One ``objects.list`` answer: ``items`` (name, size, updated), ``prefixes``,
        ``nextPageToken``; names in lexicographic order, as GCS documents."""
        location = f"gs://{bucket}/{prefix}"
        params = {"prefix": prefix, "maxResults": str(max_results)}
        if delimiter:
            params["delimiter"] = "/"
        if page_token:
            params["pageToken"] = page_token
        elif start_offset:
            params["startOffset"] = start_offset
        url = f"{self.settings.endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        with gcs_errors(location, self.settings.endpoint):
            headers = await self._headers(location)
            async with self._http().get(url, params=params, headers=headers) as resp:
                if resp.status != 200:
                    body = await resp.text(errors="replace")
                    raise _status_error(resp.status, location, listing=True, body=body)
                return dict(await resp.json(content_type=None))

    async def pages(
        self, bucket: str, prefix: str, *, delimiter: bool = False, max_results: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every ``objects.list`` answer under ``prefix`` in turn."""
        token: str | None = None
        while True:
            page = await self.list_page(
                bucket, prefix, delimiter=delimiter, page_token=token, max_results=max_results
            )
            yield page
            token = page.get("nextPageToken")
            if not token:
                return

    async def get(self, location: str, range_header: str | None = None) -> GcsObject:
        """The object at ``gs://bucket/key`` (or the ``bytes=a-b`` range of it)."""
        bucket, key = split_gcs_location(location)
        url = (
            f"{self.settings.endpoint}/download/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
            f"/o/{urllib.parse.quote(key, safe='')}"
        )
        with gcs_errors(location, self.settings.endpoint):
            headers = await self._headers(location)
            if range_header:
                headers["Range"] = range_header
            async with self._http().get(url, params={"alt": "media"}, headers=headers) as resp:
                if resp.status not in (200, 206):
                    body = await resp.text(errors="replace")
                    if resp.status == 416:
                        raise StorageError(
                            f"range {range_header} is outside {location}", location=location
                        )
                    raise _status_error(resp.status, location, listing=False, body=body)
                data = await resp.read()
                content_range = resp.headers.get("Content-Range")
                size = -1
                if content_range:
                    total = content_range.rpartition("/")[2]
                    size = int(total) if total.isdigit() else -1
                elif resp.content_length is not None:
                    size = resp.content_length
                return GcsObject(
                    data, size, content_range, _http_time(resp.headers.get("Last-Modified"))
                )


def _http_time(value: str | None) -> float | None:
    if not value:
        return None
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None

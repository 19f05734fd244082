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
import datetime
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.link import split_object_location
from mx8_common.storage.rest_client import (
    CloudObject,
    CloudWording,
    ListAnswer,
    RestClient,
    range_header,
)

__all__ = ["GcsClient", "GcsSettings", "split_gcs_location"]

_PUBLIC_ENDPOINT = "https://storage.googleapis.com"
_READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_CREDENTIALS_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run "
    "`gcloud auth application-default login`), or STORAGE_EMULATOR_HOST for an emulator"
)


def split_gcs_location(location: str) -> tuple[str, str]:
    """``gs://bucket/key`` -> ``(bucket, key)``; anything else is a ``StorageError``."""
    return split_object_location(location, "gs")


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


_WORDING = CloudWording(
    cloud="GCS",
    endpoint_noun="GCS endpoint",
    endpoint_env="STORAGE_EMULATOR_HOST",
    denied_advice=f"check the account's permissions on the bucket, or {_CREDENTIALS_HINT}",
)


def _status_error(status: int, location: str, *, listing: bool, body: str = "") -> StorageError:
    if status == 404 and listing:
        return BucketNotFoundError(
            f"bucket of {location} does not exist; check the bucket name (and "
            "STORAGE_EMULATOR_HOST when using an emulator)",
            location=location,
        )
    return _WORDING.status_error(status, location, detail=body)


class GcsClient(RestClient):
    """One aiohttp pool for GCS listing and GETs; ``async with`` owns it."""

    wording = _WORDING

    def __init__(self, settings: GcsSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or GcsSettings.from_env()
        self._token = _Token() if self.settings.signed else None

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
        token: str | None = None,
        max_results: int = 1000,
    ) -> ListAnswer:
        """One ``objects.list`` answer under ``prefix`` (names in lexicographic order, as
        GCS documents)."""
        location = f"gs://{bucket}/{prefix}"
        params = {"prefix": prefix, "maxResults": str(max_results)}
        if delimiter:
            params["delimiter"] = "/"
        if token:
            params["pageToken"] = token
        url = f"{self.settings.endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        headers = await self._headers(location)
        endpoint = self.settings.endpoint
        async with self._send(
            "GET", url, location=location, endpoint=endpoint, headers=headers, params=params
        ) as resp:
            if resp.status != 200:
                body = await resp.text(errors="replace")
                raise _status_error(resp.status, location, listing=True, body=body)
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
        if not isinstance(answer, dict):
            raise TransientStorageError(
                f"unreadable listing answer for {location} (not a JSON object)", location=location
            )
        objects = [
            (item["name"], int(item.get("size") or 0), _rfc3339(item.get("updated")))
            for item in answer.get("items") or ()
        ]
        return ListAnswer(objects, list(answer.get("prefixes") or ()), answer.get("nextPageToken"))

    async def get(
        self, location: str, start: int | None = None, length: int | None = None
    ) -> CloudObject:
        """The object at ``gs://bucket/key`` (or ``length`` bytes from ``start``)."""
        bucket, key = split_gcs_location(location)
        url = (
            f"{self.settings.endpoint}/download/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
            f"/o/{urllib.parse.quote(key, safe='')}"
        )
        headers = await self._headers(location)
        wanted = range_header(start, length)
        if wanted:
            headers["Range"] = wanted
        endpoint = self.settings.endpoint
        params = {"alt": "media"}
        async with self._send(
            "GET", url, location=location, endpoint=endpoint, headers=headers, params=params
        ) as resp:
            if resp.status not in (200, 206):
                body = await resp.text(errors="replace")
                if resp.status == 416:
                    raise StorageError(f"range {wanted} is outside {location}", location=location)
                raise _status_error(resp.status, location, listing=False, body=body)
            return CloudObject.from_answer(resp, await resp.read(), ranged=wanted is not None)


def _rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

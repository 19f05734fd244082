"""Object stores of the native client (obstore: the Rust ``object_store`` crate) for GETs.

``native_store(scheme, bucket)`` builds the store for one bucket of one cloud and caches it
per process: its HTTP pool and TLS sessions are reused by every read of that bucket. ``s3``
and ``az`` (Azure Blob: ``_azure_store``, settings and errors in ``storage.azure_store``) are
built here; a cloud is one more entry in ``_BUILDERS``. ``gs`` is not: obstore's
``GCSStore`` lists through GCS's XML API and needs ``ETag``/``Last-Modified`` on every GET,
which the GCS emulator lacks, so gs:// goes through ``storage.gcs_client`` (the JSON API).
An unknown scheme is a ``StorageError`` naming it.

S3 takes the settings the rest of mx8 uses (``S3Settings``: ``MX8_S3_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION``). A custom endpoint is
addressed path-style, which MinIO and moto need, and plain ``http://`` is allowed for it.
Credentials come from botocore's chain (env, profiles, SSO, instance roles: the chain the
manifest store and listing use), handed to the native client as a callback it calls again
before refreshable credentials expire. None anywhere is ``no_credentials_error``.

A store may carry a snapshot's listing time as a header of every request it sends
(``unmodified_since``: S3 then refuses, 412, an object written after it). A header of the
store rather than an option of each GET, so a read can be one ``get_range_async``: one
request and one future, where ``get_async`` then ``bytes_async`` is two futures.

The native client's own retries are off (``max_retries: 0``): ``ObjectReader`` retries with
``mx8_common.retry.Backoff``, the one policy, counted and logged. obstore errors become mx8
errors only in ``translate_native_error``, with the messages botocore's errors get
(``s3_client.s3_answer_error``): S3's ``<Code>`` and the HTTP status are read from the
error's text, the only place obstore exposes them.

Fork safety: obstore runs its I/O on tokio threads, and threads do not survive ``fork``.
Nothing here starts that runtime at import time, and stores are cached per process id, so
a child forked before its parent's first native read (torch's DataLoader workers of a
loader not yet iterated) builds its own and works. A child forked *after* it hangs on any
native request, even through a new store (measured with obstore 0.12.1): the runtime is
process-global. ``native_runtime_forked()`` tells callers they are in such a child, where
``native_store`` refuses, so they take the botocore path instead.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from mx8_common.errors import StorageError, TransientStorageError
from mx8_common.storage.s3_client import (
    S3Settings,
    connect_error,
    no_credentials_error,
    s3_answer_error,
)

__all__ = [
    "NativeStore",
    "cached_native_store",
    "fork_generation",
    "native_error_code",
    "native_runtime_forked",
    "native_store",
    "supported_schemes",
    "translate_native_error",
]

#: An obstore store (``obstore.store.S3Store`` and its siblings); typed loosely because
#: obstore is imported lazily (see the module docstring).
NativeStore = Any

_CONNECT_TIMEOUT = datetime.timedelta(seconds=10)
# botocore's 60 s without a byte; the whole request may take long (large samples).
_READ_TIMEOUT = datetime.timedelta(seconds=60)
_REQUEST_TIMEOUT = datetime.timedelta(minutes=30)
# Refreshable credentials are asked for again this often; botocore refreshes them itself
# ahead of their expiry, so the native client never holds stale ones for longer.
_CREDENTIALS_TTL = datetime.timedelta(minutes=5)

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_OS_KIND = re.compile(r'kind: (\w+),\s*message: "([^"]{1,200})"')


class _BotocoreCredentials:
    """The native client's credential callback, answered from botocore's chain."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._refreshable = hasattr(credentials, "refresh_needed")

    def __call__(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        expires = (
            datetime.datetime.now(datetime.UTC) + _CREDENTIALS_TTL if self._refreshable else None
        )
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expires,
        }


def _s3_store(
    bucket: str, location: str, settings: S3Settings | None, unmodified_since: str | None
) -> NativeStore:
    import botocore.session
    from obstore.store import S3Store

    settings = settings or S3Settings.from_env()
    # A fresh session: its credential chain reads the environment as it is now.
    credentials = botocore.session.Session().get_credentials()
    if credentials is None:
        raise no_credentials_error(location)
    endpoint = settings.endpoint_url
    config: dict[str, Any] = {"region": settings.region}
    if endpoint:
        # Path-style (the native client's default) for MinIO, moto and other local servers.
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
    client_options: dict[str, Any] = {
        "allow_http": bool(endpoint) and endpoint.startswith("http://"),
        "connect_timeout": _CONNECT_TIMEOUT,
        "read_timeout": _READ_TIMEOUT,
        "timeout": _REQUEST_TIMEOUT,
    }
    if unmodified_since is not None:
        client_options["default_headers"] = {"If-Unmodified-Since": unmodified_since}
    return S3Store(
        bucket,
        config=config,
        client_options=client_options,
        # mx8 retries itself (ObjectReader: Backoff with jitter, counted and logged).
        retry_config={"max_retries": 0},
        credential_provider=_BotocoreCredentials(credentials),
    )


def _azure_store(
    container: str, location: str, _s3: S3Settings | None, _since: str | None
) -> NativeStore:
    """An Azure Blob store for ``container`` (account, credentials, endpoint from the env)."""
    from mx8_common.storage.azure_store import open_azure_store

    return open_azure_store(container, location)


def _key(
    scheme: str, bucket: str, s3_settings: S3Settings | None, unmodified_since: str | None
) -> tuple[str, str, Any, str | None]:
    settings = s3_settings if scheme == "s3" else _settings_key(scheme)
    return (scheme, bucket, settings, unmodified_since)


def _settings_key(scheme: str) -> Any:
    """What else, besides scheme and bucket, makes a cached store stale: its settings."""
    if scheme == "az":
        from mx8_common.storage.azure_store import AzureSettings

        return AzureSettings.from_env()
    return None


_Builder = Callable[[str, str, S3Settings | None, str | None], NativeStore]
_BUILDERS: dict[str, _Builder] = {"s3": _s3_store, "az": _azure_store}

_lock = threading.Lock()
_pid = -1
# The process that built the first native store (its runtime is this process's or dead).
_runtime_pid: int | None = None
_stores: dict[tuple[str, str, Any, str | None], NativeStore] = {}
# Forks into this process's line so far: a reader caches what it learned about its
# process under this number instead of asking getpid() on every read.
_forks = 0


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """A number that changes in a forked child (``os.fork`` from Python): cheap to compare
    on every read, where ``os.getpid()`` is a system call."""
    return _forks


def supported_schemes() -> tuple[str, ...]:
    """The link schemes ``native_store`` can build a store for, sorted."""
    return tuple(sorted(_BUILDERS))


def native_runtime_forked() -> bool:
    """True in a process forked from one that had used the native client: its runtime
    threads did not survive the fork, so native requests here would hang."""
    return _runtime_pid is not None and _runtime_pid != os.getpid()


def native_store(
    scheme: str,
    bucket: str,
    *,
    s3_settings: S3Settings | None = None,
    location: str | None = None,
    unmodified_since: str | None = None,
) -> NativeStore:
    """This process's store for ``scheme://bucket`` (built on first use; may block once:
    resolving credentials can ask an instance metadata service, so call it off the loop).

    ``location`` only names the object in errors (default ``scheme://bucket/``).
    ``unmodified_since`` (S3 only): an HTTP date every request of the store carries as
    ``If-Unmodified-Since``.
    """
    global _pid, _runtime_pid
    where = location or f"{scheme}://{bucket}/"
    build = _BUILDERS.get(scheme)
    if build is None:
        raise StorageError(
            f"{where} uses the storage scheme {scheme!r}, which mx8 cannot read; use "
            + ", ".join(f"{s}://bucket/key" for s in supported_schemes())
            + ", file:///path or a plain path",
            location=where,
        )
    if unmodified_since is not None and scheme != "s3":
        raise ValueError(f"unmodified_since is for s3:// stores, not {scheme}://")
    if scheme == "s3":
        # Resolved now, so a changed environment gets its own store.
        s3_settings = s3_settings or S3Settings.from_env()
    key = _key(scheme, bucket, s3_settings, unmodified_since)
    with _lock:
        if _pid != os.getpid():
            # A forked child: the parent's stores are bound to its runtime threads.
            _stores.clear()
            _pid = os.getpid()
        store = _stores.get(key)
        if store is None:
            if native_runtime_forked():
                raise StorageError(
                    f"the native storage client cannot run in this process (forked after its "
                    f"parent {_runtime_pid} used it) to read {where}; read through the "
                    "botocore path here, or start workers with the 'spawn' method",
                    location=where,
                )
            store = build(bucket, where, s3_settings, unmodified_since)
            _runtime_pid = _runtime_pid or os.getpid()
            _stores[key] = store
        return store


def cached_native_store(
    scheme: str,
    bucket: str,
    *,
    s3_settings: S3Settings | None = None,
    unmodified_since: str | None = None,
) -> NativeStore | None:
    """The store ``native_store`` already built in this process, else None (never blocks)."""
    if scheme == "s3":
        s3_settings = s3_settings or S3Settings.from_env()
    key = _key(scheme, bucket, s3_settings, unmodified_since)
    with _lock:
        return _stores.get(key) if _pid == os.getpid() else None


def native_error_code(exc: BaseException) -> tuple[str, int]:
    """``(code, status)`` of a native client's error answer: S3's ``<Code>`` ("" if none)
    and the HTTP status (0 if the request got no answer)."""
    text = str(exc)
    code = _CODE.search(text)
    status = _STATUS.search(text)
    return (code.group(1) if code else "", int(status.group(1)) if status else 0)


def _summary(exc: BaseException) -> str:
    """The first line of an obstore error (the rest is a Rust debug dump)."""
    return str(exc).partition("\n")[0].strip()[:300]


def translate_native_error(exc: BaseException, location: str) -> StorageError:
    """The most specific mx8 error for a native client failure at ``location``."""
    if isinstance(exc, StorageError):
        return exc
    from obstore import exceptions as obx

    code, status = native_error_code(exc)
    if code or status:
        return s3_answer_error(code, status, location, _summary(exc))
    text = str(exc)
    if "kind: Connect" in text:
        os_kind = _OS_KIND.search(text)
        return connect_error(location, os_kind.group(2) if os_kind else _summary(exc))
    if isinstance(exc, (obx.PermissionDeniedError, obx.UnauthenticatedError)):
        return s3_answer_error("AccessDenied", 403, location)
    if isinstance(exc, FileNotFoundError):
        return s3_answer_error("NoSuchKey", 404, location)
    if isinstance(exc, (obx.GenericError, OSError, TimeoutError)):
        # Resets, timeouts, bodies cut short: the request may well work again.
        return TransientStorageError(
            f"transport error reading {location}: {_summary(exc)}", location=location
        )
    return StorageError(
        f"unexpected error for {location}: {type(exc).__name__}: {_summary(exc)}",
        location=location,
    )

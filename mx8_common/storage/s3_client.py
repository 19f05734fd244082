"""S3 clients and the one boundary where botocore errors become mx8 errors.

``S3Settings.from_env()`` takes the endpoint from the standard AWS environment
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``; the
credential chain is botocore's) with ``MX8_S3_ENDPOINT_URL`` as an override. Custom
endpoints use path-style addressing, which MinIO and moto need.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
import botocore.config
import botocore.exceptions
import botocore.loaders
from aiobotocore.session import AioSession

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

__all__ = [
    "REGION_ANSWERS",
    "S3Settings",
    "bucket_region",
    "connect_error",
    "is_region_answer",
    "no_credentials_error",
    "open_s3_client",
    "open_s3_session_client",
    "s3_answer_error",
    "s3_errors",
    "sync_s3_client",
    "translate_s3_error",
    "wrong_region_error",
]

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """Where S3 is and how to talk to it."""

    endpoint_url: str | None = setting(
        None,
        env="MX8_S3_ENDPOINT_URL",
        also_env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        help="S3 endpoint (MinIO, moto); unset: AWS's own",
    )
    region: str = setting(
        "us-east-1",
        env="AWS_REGION",
        also_env=("AWS_DEFAULT_REGION",),
        help="S3 region",
    )
    max_pool_connections: int = 64

    def __post_init__(self) -> None:
        # Empty values count as unset, as they always have for these variables.
        if not self.endpoint_url:
            object.__setattr__(self, "endpoint_url", None)
        if not self.region:
            object.__setattr__(self, "region", "us-east-1")

    @classmethod
    def from_env(
        cls, endpoint_url: str | None = None, environ: Mapping[str, str] | None = None
    ) -> S3Settings:
        """The standard AWS environment, ``MX8_S3_ENDPOINT_URL`` first; ``endpoint_url`` wins."""
        return load_env(cls, environ, endpoint_url=endpoint_url or None)

    def client_kwargs(self) -> dict[str, Any]:
        config = botocore.config.Config(
            max_pool_connections=self.max_pool_connections,
            # total_max_attempts=1: no botocore retries ("max_attempts" would mean one *retry*);
            # mx8 retries itself, with jitter, and counts it.
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else {},
            connect_timeout=10,
            read_timeout=60,
        )
        kwargs: dict[str, Any] = {"config": config, "region_name": self.region}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return kwargs


_models_lock = threading.Lock()
_models: botocore.loaders.Loader | None = None


def _shared_models() -> botocore.loaders.Loader:
    """One botocore model loader per process (it caches the parsed S3 service model)."""
    global _models
    with _models_lock:
        if _models is None:
            _models = botocore.loaders.create_loader()
        return _models


@contextlib.asynccontextmanager
async def open_s3_client(
    settings: S3Settings | None = None, *, reuse_models: bool = False
) -> AsyncIterator[Any]:
    """An aiobotocore S3 client; reuse one per process or task group, not one per call.

    ``reuse_models=True`` shares botocore's parsed service model between clients of this
    process: a new client then skips ~40 ms of JSON parsing (the embedded engine opens
    one per epoch, on its own event loop, so it cannot keep the client itself).
    """
    settings = settings or S3Settings.from_env()
    if reuse_models:
        async with open_s3_session_client(settings) as (_session, client):
            yield client
        return
    async with aioboto3.Session().client("s3", **settings.client_kwargs()) as client:
        yield client


@contextlib.asynccontextmanager
async def open_s3_session_client(
    settings: S3Settings | None = None,
) -> AsyncIterator[tuple[AioSession, Any]]:
    """``(session, client)``: an aiobotocore S3 client sharing the parsed service model,
    and the session that made it (its credentials and config variables are the client's).
    """
    settings = settings or S3Settings.from_env()
    # A fresh session each time (sessions are not thread-safe); only the loader, whose
    # caches are plain dicts filled once, is shared. aiobotocore directly: aioboto3's
    # Session would append its resource path to the shared loader on every call.
    session = AioSession()
    session.register_component("data_loader", _shared_models())
    async with session.create_client("s3", **settings.client_kwargs()) as client:
        yield session, client


def sync_s3_client(settings: S3Settings | None = None) -> Any:
    """A plain boto3 client (tests, fixtures, the demo's uploader)."""
    import boto3

    settings = settings or S3Settings.from_env()
    return boto3.session.Session().client("s3", **settings.client_kwargs())


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {}) or {}
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "")), status


def s3_answer_error(code: str, status: int, location: str, detail: str = "") -> StorageError:
    """The most specific mx8 error for an S3 error answer (its ``Code`` and HTTP status).

    Shared by every S3 client mx8 uses (botocore here, the native client in
    ``native_store``), so an error reads the same whichever one sent the request.
    """
    if code == "NoSuchBucket":
        return BucketNotFoundError(
            f"bucket of {location} does not exist; check the bucket name and the S3 "
            "endpoint (MX8_S3_ENDPOINT_URL / AWS_ENDPOINT_URL)",
            location=location,
        )
    if (
        code
        in (
            "AccessDenied",
            "AllAccessDisabled",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "403",
        )
        or status == 403
    ):
        return AccessDeniedError(
            f"access denied to {location} ({code or status}); check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy",
            location=location,
        )
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return ObjectNotFoundError(
            f"{location} does not exist (it was deleted or renamed since the snapshot?)",
            location=location,
        )
    if is_region_answer(code, status):
        return wrong_region_error(location, code or str(status), None, None)
    if code in _TRANSIENT_CODES or status in (500, 502, 503, 504):
        return TransientStorageError(
            f"S3 answered {code or status} for {location}; retrying may help",
            location=location,
        )
    return StorageError(f"S3 error {code or status} for {location}: {detail}", location=location)


def connect_error(location: str, detail: str) -> TransientStorageError:
    """No connection to the S3 endpoint (refused, unresolvable): names the endpoint setting."""
    return TransientStorageError(
        f"cannot connect to the S3 endpoint for {location}: {detail}; is "
        "MX8_S3_ENDPOINT_URL / AWS_ENDPOINT_URL right and the server up?",
        location=location,
    )


def no_credentials_error(location: str) -> AccessDeniedError:
    """No AWS credentials anywhere in the chain."""
    return AccessDeniedError(
        f"no AWS credentials found to read {location}; set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role",
        location=location,
    )


def translate_s3_error(exc: BaseException, location: str) -> StorageError:
    """The most specific mx8 error for a botocore/aiohttp failure at ``location``."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        return s3_answer_error(code, status, location, str(exc))
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, aiohttp.ClientConnectorError)):
        return connect_error(location, str(exc))
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return no_credentials_error(location)
    if isinstance(exc, (botocore.exceptions.BotoCoreError, OSError, TimeoutError)) or (
        type(exc).__module__.startswith("aiohttp")
    ):
        return TransientStorageError(
            f"transport error reading {location}: {type(exc).__name__}: {exc}",
            location=location,
        )
    return StorageError(
        f"unexpected error for {location}: {type(exc).__name__}: {exc}", location=location
    )


@contextlib.contextmanager
def s3_errors(location: str) -> Iterator[None]:
    """Translate botocore/transport errors raised inside into mx8 ``StorageError``s.

    Raised ``from None``: the translation carries what matters of the original (its code
    or text) in one line; the original stays reachable as ``__context__``.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        raise translate_s3_error(exc, location) from None


#: S3 answers that mean "this bucket lives in another region than the request was signed for".
REGION_ANSWERS = (
    "PermanentRedirect",
    "TemporaryRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
)


def is_region_answer(code: str, status: int) -> bool:
    """True when S3's answer (its ``<Code>``, HTTP status) says the bucket lives in another
    region than the request was signed for."""
    return code in REGION_ANSWERS or status in (301, 307)


async def bucket_region(bucket: str, settings: S3Settings) -> str | None:
    """The region S3 names for ``bucket`` (its ``x-amz-bucket-region`` header), or None.

    Asked with an unsigned path-style HEAD: S3 sends that header to anyone, whatever the
    status (200, 301, 403), so no credentials or region are needed to learn it.
    """
    base = (settings.endpoint_url or "https://s3.amazonaws.com").rstrip("/")
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.head(f"{base}/{bucket}", allow_redirects=False) as resp,
        ):
            return resp.headers.get("x-amz-bucket-region") or None
    except (aiohttp.ClientError, TimeoutError):
        return None


def wrong_region_error(
    location: str, answer: str, region: str | None, found: str | None
) -> StorageError:
    """One line for a bucket in another region than ``region`` (the one requests were
    signed for, when known; the bucket's own, ``found``, could not be followed): names both
    and the variable to set."""
    where = f" ({found})" if found else ""
    signed = f" ({region})" if region else ""
    return StorageError(
        f"S3 answered {answer} for {location}: the bucket is in another region{where} than "
        f"the one requests are signed for{signed}; set AWS_REGION to the bucket's region",
        location=location,
    )

"""Azure Blob settings from the environment, obstore's ``AzureStore`` for sample reads, and
the one place obstore's Azure errors become mx8 errors (listing and the manifest store use
``azure_rest`` with the same settings).

An ``az://container/prefix/`` link names a container; the storage account and its
credentials come from the environment (``AzureSettings.from_env``):

- ``AZURE_STORAGE_CONNECTION_STRING`` (``AccountName=..;AccountKey=..;BlobEndpoint=..`` as
  the portal and Azurite print it), or
- ``AZURE_STORAGE_ACCOUNT_NAME`` plus ``AZURE_STORAGE_ACCOUNT_KEY``,
  ``AZURE_STORAGE_SAS_TOKEN`` or a bearer token ``AZURE_STORAGE_TOKEN``; without any of
  them, Microsoft Entra credentials (service principal, workload or managed identity)
  through ``azure-identity`` (``pip install 'mx8[azure]'``);
- ``AZURE_STORAGE_ENDPOINT`` overrides ``https://<account>.blob.core.windows.net`` (Azurite:
  ``http://127.0.0.1:10000/devstoreaccount1``); plain http is allowed only for such an
  explicit endpoint.

obstore's own retries are off: mx8's bounded backoff (``ObjectReaderConfig``, the lister's)
stays the one retry policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

__all__ = [
    "AZURE_CREDENTIALS_HINT",
    "AzureSettings",
    "open_azure_store",
    "split_az_location",
    "translate_azure_error",
]

AZURE_CREDENTIALS_HINT = (
    "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN), "
    "or AZURE_STORAGE_CONNECTION_STRING"
)


def split_az_location(location: str) -> tuple[str, str]:
    """``az://container/key`` -> ``(container, key)``; anything else is a ``StorageError``."""
    container, sep, key = location[5:].partition("/")
    if not location.startswith("az://") or not container or not sep or not key:
        raise StorageError(
            f"{location!r} is not an Azure blob location; write it as az://container/key",
            location=location,
        )
    return container, key


def _connection_string(value: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, val = item.partition("=")
        if sep:
            parts[name.strip().lower()] = val.strip()
    return parts


@dataclass(frozen=True, kw_only=True)
class AzureSettings:
    """The storage account, its credential and endpoint, as the environment gives them."""

    #: Storage account name; None when the environment names none.
    account: str | None
    #: Shared key of the account (signs requests); None without one.
    account_key: str | None = None
    #: Shared access signature (a query string); None without one.
    sas: str | None = None
    #: A static OAuth bearer token for the storage scope; None without one.
    token: str | None = None
    #: Blob endpoint override (Azurite, sovereign clouds); None for the public one.
    endpoint: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AzureSettings:
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            return next((env[n] for n in names if env.get(n)), None)

        account = first("AZURE_STORAGE_ACCOUNT_NAME")
        key = first("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY")
        sas = first("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY")
        endpoint = first("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT")
        conn = env.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            parts = _connection_string(conn)
            account = parts.get("accountname") or account
            key = parts.get("accountkey") or key
            sas = parts.get("sharedaccesssignature") or sas
            endpoint = parts.get("blobendpoint") or endpoint
        return cls(
            account=account,
            account_key=key,
            sas=sas.lstrip("?") if sas else None,
            token=first("AZURE_STORAGE_TOKEN"),
            endpoint=endpoint.rstrip("/") if endpoint else None,
        )

    def require_account(self, link: str) -> str:
        """The account name, or ``AccessDeniedError`` naming ``link`` and what to set."""
        if not self.account:
            raise AccessDeniedError(
                f"{link}: no Azure storage account is configured; {AZURE_CREDENTIALS_HINT}",
                location=link,
            )
        return self.account

    def blob_endpoint(self, link: str) -> str:
        """``https://<account>.blob.core.windows.net`` unless overridden."""
        return self.endpoint or f"https://{self.require_account(link)}.blob.core.windows.net"


def open_azure_store(container: str, link: str, settings: AzureSettings | None = None) -> Any:
    """An obstore ``AzureStore`` for ``container``; ``AccessDeniedError`` naming ``link`` and
    what to set when the environment names no storage account."""
    from obstore.store import AzureStore

    settings = settings or AzureSettings.from_env()
    config: dict[str, Any] = {"account_name": settings.require_account(link)}
    for name, value in (
        ("account_key", settings.account_key),
        ("sas_key", settings.sas),
        ("token", settings.token),
    ):
        if value:
            config[name] = value
    client: dict[str, Any] = {}
    if settings.endpoint:
        config["endpoint"] = settings.endpoint
        client["allow_http"] = settings.endpoint.startswith("http://")
    try:
        return AzureStore(
            container,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config={"max_retries": 0},
        )
    except Exception as exc:
        raise StorageError(
            f"{link}: the Azure settings are unusable ({_first_line(exc)}); "
            + AZURE_CREDENTIALS_HINT,
            location=link,
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate_azure_error(exc: BaseException, location: str) -> StorageError:
    """The most specific mx8 error for an obstore failure talking to Azure at ``location``."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc)
    if "ContainerNotFound" in text:
        return BucketNotFoundError(
            f"container of {location} does not exist in storage account "
            f"{AzureSettings.from_env().account!r}; check the container name, "
            "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ENDPOINT",
            location=location,
        )
    if "token request" in text or "Error getting token" in text:
        return AccessDeniedError(
            f"no Azure credentials found to read {location}; {AZURE_CREDENTIALS_HINT}",
            location=location,
        )
    name = type(exc).__name__
    if name in ("PermissionDeniedError", "UnauthenticatedError") or any(
        code in text for code in ("403 Forbidden", "401 Unauthorized", "AuthorizationFailure")
    ):
        return AccessDeniedError(
            f"access denied to {location}; check the credentials ({AZURE_CREDENTIALS_HINT}) and "
            "the container's access policy",
            location=location,
        )
    if name == "NotFoundError" or isinstance(exc, FileNotFoundError) or "404 Not Found" in text:
        return ObjectNotFoundError(
            f"{location} does not exist (it was deleted or renamed since the snapshot?)",
            location=location,
        )
    if any(f"status code: {code}" in text for code in ("429", "500", "502", "503", "504")):
        return TransientStorageError(
            f"Azure answered {_first_line(exc)[:160]} for {location}; retrying may help",
            location=location,
        )
    if "error sending request" in text or "Connection refused" in text or "timed out" in text:
        return TransientStorageError(
            f"cannot reach the Azure blob endpoint for {location}; is AZURE_STORAGE_ENDPOINT "
            "right and the server up?",
            location=location,
        )
    return StorageError(
        f"Azure error for {location}: {name}: {_first_line(exc)[:300]}", location=location
    )

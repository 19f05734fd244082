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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.link import split_object_location

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
    return split_object_location(location, "az")


def _connection_string(value: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, val = item.partition("=")
        if sep:
            parts[name.strip().lower()] = val.strip()
    return parts


@dataclass(frozen=True, kw_only=True)
class AzureSettings:
    """The Azure storage account of az:// links, its credential and endpoint."""

    account: str | None = setting(
        None, env="AZURE_STORAGE_ACCOUNT_NAME", help="storage account of az:// links"
    )
    account_key: str | None = setting(
        None,
        env="AZURE_STORAGE_ACCOUNT_KEY",
        also_env=("AZURE_STORAGE_ACCESS_KEY",),
        secret=True,
        help="the account's shared key (signs requests)",
    )
    sas: str | None = setting(
        None,
        env="AZURE_STORAGE_SAS_TOKEN",
        also_env=("AZURE_STORAGE_SAS_KEY",),
        secret=True,
        help="a shared access signature (query string) instead of the key",
    )
    token: str | None = setting(
        None,
        env="AZURE_STORAGE_TOKEN",
        secret=True,
        help="a static OAuth bearer token instead of the key; with none of key, SAS or "
        "token: Microsoft Entra credentials through azure-identity (pip install 'mx8[azure]')",
    )
    endpoint: str | None = setting(
        None,
        env="AZURE_STORAGE_ENDPOINT",
        also_env=("AZURE_ENDPOINT",),
        help="blob endpoint (Azurite: http://127.0.0.1:10000/devstoreaccount1); unset: "
        "https://<account>.blob.core.windows.net",
    )
    connection_string: str | None = setting(
        None,
        env="AZURE_STORAGE_CONNECTION_STRING",
        secret=True,
        help="AccountName=..;AccountKey=..;BlobEndpoint=.. (wins over the variables above)",
    )

    def __post_init__(self) -> None:
        values = {
            "account": self.account,
            "account_key": self.account_key,
            "sas": self.sas,
            "token": self.token,
            "endpoint": self.endpoint,
        }
        if self.connection_string:
            parts = _connection_string(self.connection_string)
            for name, part in (
                ("account", "accountname"),
                ("account_key", "accountkey"),
                ("sas", "sharedaccesssignature"),
                ("endpoint", "blobendpoint"),
            ):
                values[name] = parts.get(part) or values[name]
        if values["sas"]:
            values["sas"] = values["sas"].lstrip("?")
        if values["endpoint"]:
            values["endpoint"] = values["endpoint"].rstrip("/")
        for name, value in values.items():
            object.__setattr__(self, name, value or None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AzureSettings:
        return load_env(cls, environ)

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

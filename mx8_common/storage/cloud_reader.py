"""GETs of ``gs://`` and ``az://`` objects for ``ObjectReader``: one GCS pool (aiohttp) and
this process's obstore ``AzureStore`` per container (``native_store``: built on first use, so
a process that forks before reading never starts obstore's runtime); a child forked after
its parent used obstore reads Azure through ``azure_rest`` instead. Errors are mx8 errors.

``ObjectReader`` keeps the checks (size, range, listing time) and the retry policy; this
module only fetches and says what the server said about the object.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mx8_common.errors import StorageError
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.azure_store import split_az_location, translate_azure_error
from mx8_common.storage.gcs_client import GcsClient, GcsSettings
from mx8_common.storage.native_store import native_runtime_forked, native_store
from mx8_common.storage.rest_client import CloudObject

__all__ = ["CLOUD_SCHEMES", "CloudReader"]

#: Location prefixes this reader serves.
CLOUD_SCHEMES = ("gs://", "az://")


class CloudReader:
    """Fetches gs:// and az:// objects (or byte ranges); ``aclose()`` releases the pools."""

    def __init__(self, gcs: GcsSettings | None = None) -> None:
        self._gcs_settings = gcs
        self._gcs: GcsClient | None = None
        self._azure_rest: AzureRestClient | None = None
        # Azure stores by container: one settings lookup per container, not per GET.
        self._azure: dict[str, Any] = {}
        self._closed = False

    async def aclose(self) -> None:
        """Close the GCS pool; safe to call twice (Azure stores are the process's)."""
        self._closed = True
        if self._gcs is not None:
            await self._gcs.aclose()
            self._gcs = None
        if self._azure_rest is not None:
            await self._azure_rest.aclose()
            self._azure_rest = None

    async def get(self, location: str, start: int | None, length: int | None) -> CloudObject:
        """The object at ``location``, or ``length`` bytes from ``start`` (both or neither)."""
        if self._closed:
            raise StorageError("this ObjectReader is closed; open a new one", location=location)
        if location.startswith("gs://"):
            return await self._get_gcs(location, start, length)
        return await self._get_azure(location, start, length)

    async def _get_gcs(self, location: str, start: int | None, length: int | None) -> CloudObject:
        if self._gcs is None:
            self._gcs = GcsClient(self._gcs_settings)
        return await self._gcs.get(location, start, length)

    async def _get_azure(self, location: str, start: int | None, length: int | None) -> CloudObject:
        import obstore

        if native_runtime_forked():
            # obstore's runtime died with the fork: the REST client reads here instead.
            if self._azure_rest is None:
                self._azure_rest = AzureRestClient()
            return await self._azure_rest.get(location, start, length)
        container, key = split_az_location(location)
        store = self._azure.get(container)
        if store is None:
            store = native_store("az", container, location=location)
            self._azure[container] = store
        options: dict[str, Any] = {}
        if start is not None and length is not None:
            options["range"] = (start, start + length)
        try:
            result = await obstore.get_async(store, key, options=options)  # type: ignore[arg-type]
            data = bytes(await result.bytes_async())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_azure_error(exc, location) from None
        meta = result.meta
        first = result.range[0] if start is not None else 0
        return CloudObject(data, first, int(meta["size"]), meta["last_modified"].timestamp())

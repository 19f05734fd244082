"""ObjectReader on gs:// and az:// locations against the emulators (and the fault proxy in
front of them): bytes and ranges, the snapshot checks, typed errors, the one retry policy."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.cloud_emulators import Azurite, GcsEmulator
from support.gcs_front import gcs_front
from support.s3_fault_proxy import FaultProxy, fault_proxy

from mx8_common.errors import (
    BucketNotFoundError,
    ConfigError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.native_store import native_store
from mx8_common.storage.object_reader import ObjectReader, ObjectReaderConfig, is_local
from mx8_common.store import open_manifest_store

PAYLOAD = bytes(random.Random(11).randbytes(20_000))
FAST_RETRY = ObjectReaderConfig(max_attempts=4, backoff_base_s=0.001, backoff_max_s=0.01)


class Cloud:
    """One emulator's bucket holding ``obj.bin``: its location, a writer and its endpoint."""

    def __init__(self, scheme: str, bucket: str, put: Callable[[str, bytes], None], endpoint: str):
        self.scheme = scheme
        self.bucket = bucket
        self.put = put
        self.endpoint = endpoint
        self.location = f"{scheme}://{bucket}/obj.bin"
        put("obj.bin", PAYLOAD)


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    if request.param == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        gcs: GcsEmulator = request.getfixturevalue("gcs_server")
        return Cloud("gs", bucket, lambda k, d: gcs.put(bucket, k, d), gcs.endpoint)
    container = request.getfixturevalue("az_container")
    az: Azurite = request.getfixturevalue("azurite_server")
    return Cloud("az", container, lambda k, d: az.put(container, k, d), az.endpoint)


@pytest.fixture
def az_cloud(az_container: str, azurite_server: Azurite) -> Cloud:
    return Cloud(
        "az",
        az_container,
        lambda k, d: azurite_server.put(az_container, k, d),
        azurite_server.endpoint,
    )


@pytest.fixture
def proxied(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The fault proxy between this process and the cloud's emulator."""
    origin, _, account = cloud.endpoint.partition("://")[2].partition("/")
    with fault_proxy(f"http://{origin}") as proxy:
        if cloud.scheme == "gs":
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        else:
            monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", f"{proxy.url}/{account}")
        yield proxy


def test_cloud_locations_are_not_local() -> None:
    assert not is_local("gs://b/k") and not is_local("az://c/k") and is_local("/d/k")


async def test_object_reader_cloud_reads_whole_object_and_ranges(cloud: Cloud) -> None:
    async with ObjectReader() as reader:
        assert await reader.read(cloud.location, None, len(PAYLOAD)) == PAYLOAD
        assert await reader.read(cloud.location) == PAYLOAD
        for offset, length in [(0, 1), (1234, 4321), (len(PAYLOAD) - 7, 7)]:
            got = await reader.read(cloud.location, offset, length)
            assert got == PAYLOAD[offset : offset + length]
    assert reader.stats.reads == 5


async def test_object_reader_cloud_other_size_is_changed(cloud: Cloud) -> None:
    async with ObjectReader() as reader:
        with pytest.raises(ObjectChangedError, match=f"expected {len(PAYLOAD) + 1} bytes"):
            await reader.read(cloud.location, None, len(PAYLOAD) + 1)


async def test_object_reader_cloud_range_past_end_is_changed_or_storage_error(
    cloud: Cloud,
) -> None:
    async with ObjectReader() as reader:
        with pytest.raises(StorageError) as info:
            await reader.read(cloud.location, len(PAYLOAD) - 10, 100)
    assert info.value.location == cloud.location and "\n" not in str(info.value)


async def test_object_reader_cloud_object_modified_after_listing_is_changed(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.ExitStack() as stack:
        if cloud.scheme == "gs":
            # The emulator sends no Last-Modified on a media GET; GCS does, and so does
            # the front (from the object's metadata).
            front = stack.enter_context(gcs_front(cloud.endpoint))
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", front.url)
        listed_at = time.time() - 3600  # the snapshot was listed an hour before the object
        async with ObjectReader(listed_at=listed_at) as reader:
            with pytest.raises(ObjectChangedError, match="modified") as info:
                await reader.read(cloud.location, None, len(PAYLOAD))
            # Listed after the object was written: the same read is served.
            reader.listed_at = time.time() + 60
            assert await reader.read(cloud.location, None, len(PAYLOAD)) == PAYLOAD
    assert "@refresh" in str(info.value)


async def test_object_reader_cloud_missing_object_is_not_found(cloud: Cloud) -> None:
    missing = f"{cloud.scheme}://{cloud.bucket}/nope.bin"
    async with ObjectReader() as reader:
        with pytest.raises(ObjectNotFoundError, match="does not exist") as info:
            await reader.read(missing, None, 3)
    assert info.value.location == missing


async def test_object_reader_az_missing_container_is_bucket_not_found(az_container: str) -> None:
    # (A GCS media GET answers 404 alike for a missing bucket and object: ObjectNotFound.)
    async with ObjectReader() as reader:
        with pytest.raises(BucketNotFoundError, match="AZURE_STORAGE_ACCOUNT_NAME"):
            await reader.read("az://no-such-container/obj.bin", None, 3)


async def test_object_reader_cloud_retries_throttling_then_succeeds(
    cloud: Cloud, proxied: FaultProxy
) -> None:
    proxied.add_faults("obj.bin", "slowdown", "reset")
    async with ObjectReader(FAST_RETRY) as reader:
        assert await reader.read(cloud.location, 10, 1000) == PAYLOAD[10:1010]
    assert proxied.faults_fired["slowdown"] == 1 and proxied.faults_fired["reset"] == 1
    # aiohttp (gs) may re-send once on a dropped keep-alive connection itself.
    assert reader.stats.retries >= 1


async def test_object_reader_cloud_gives_up_after_max_attempts_in_one_line(
    cloud: Cloud, proxied: FaultProxy
) -> None:
    proxied.add_faults("obj.bin", *["slowdown"] * 10)
    async with ObjectReader(FAST_RETRY) as reader:
        with pytest.raises(TransientStorageError, match="gave up after 4 attempts") as info:
            await reader.read(cloud.location, None, len(PAYLOAD))
    assert info.value.location == cloud.location and "\n" not in str(info.value)
    assert proxied.gets_for("obj.bin") == 4  # obstore's own retries are off: ours count


def test_native_store_az_is_cached_per_container_and_azure_settings(
    az_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = native_store("az", az_container)
    assert native_store("az", az_container) is first
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:9/devstoreaccount1")
    assert native_store("az", az_container) is not first


def test_manifest_store_on_gs_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="not supported yet") as info:
        open_manifest_store("gs://bkt/manifests")
    assert "MX8_MANIFEST_STORE_ROOT" in str(info.value) and "\n" not in str(info.value)


async def test_azure_rest_client_reads_ranges_and_names_missing_blob_and_container(
    az_cloud: Cloud,
) -> None:
    cloud = az_cloud
    async with AzureRestClient() as client:
        whole = await client.get(cloud.location, None, None)
        assert whole.data == PAYLOAD and whole.object_size == len(PAYLOAD)
        part = await client.get(cloud.location, 500, 64)
        assert (part.data, part.start, part.object_size) == (PAYLOAD[500:564], 500, len(PAYLOAD))
        assert part.last_modified is not None
        with pytest.raises(ObjectNotFoundError):
            await client.get(f"az://{cloud.bucket}/nope", None, None)
        with pytest.raises(BucketNotFoundError):
            await client.get("az://no-such-container/obj.bin", None, None)


def _read_in_child(location: str, size: int, out: Any) -> None:
    async def read() -> bytes:
        async with ObjectReader() as reader:
            return await reader.read(location, None, size)

    try:
        out.put(asyncio.run(read()) == PAYLOAD)
    except Exception as exc:  # the parent asserts on what the child saw
        out.put(f"{type(exc).__name__}: {exc}")


async def test_object_reader_az_in_child_forked_after_parent_read_natively(
    az_cloud: Cloud,
) -> None:
    cloud = az_cloud
    async with ObjectReader() as reader:  # starts obstore's runtime in this process
        assert await reader.read(cloud.location, None, len(PAYLOAD)) == PAYLOAD
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the point
        child = ctx.Process(target=_read_in_child, args=(cloud.location, len(PAYLOAD), out))
        child.start()
    try:
        assert out.get(timeout=60) is True
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()

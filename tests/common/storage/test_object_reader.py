"""ObjectReader against the real S3-protocol test server (and a fault proxy in front of it)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.eventually import assert_eventually
from support.s3_clock import assert_same_size_overwrite_after_listing_refused, server_time
from support.s3_fault_proxy import FaultProxy, fault_proxy

from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.obs.events import configure_logging
from mx8_common.storage import object_reader as object_reader_module
from mx8_common.storage.object_reader import (
    ObjectReader,
    ObjectReaderConfig,
    read_local,
    read_local_into,
    split_s3_location,
)
from mx8_common.storage.s3_client import S3Settings
from mx8_common.testing.local_s3 import LocalS3

PAYLOAD = bytes(random.Random(7).randbytes(10_000))
FAST_RETRY = ObjectReaderConfig(max_attempts=4, backoff_base_s=0.001, backoff_max_s=0.01)


@pytest.fixture
def s3_object(s3_sync_client: Any, s3_bucket: str) -> str:
    s3_sync_client.put_object(Bucket=s3_bucket, Key="data/obj.bin", Body=PAYLOAD)
    return f"s3://{s3_bucket}/data/obj.bin"


@pytest.fixture
def proxy(s3_env: LocalS3) -> Iterator[FaultProxy]:
    with fault_proxy(s3_env.endpoint_url) as p:
        yield p


def _via(proxy: FaultProxy) -> S3Settings:
    return S3Settings(endpoint_url=proxy.url, region="us-east-1")


async def test_object_reader_reads_whole_object(s3_object: str) -> None:
    async with ObjectReader() as reader:
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
        assert await reader.read(s3_object) == PAYLOAD  # size unknown: no check
        assert await reader.read(s3_object, -1, -1) == PAYLOAD  # -1 means none
        assert reader.stats.reads == 3
        assert reader.stats.bytes == 3 * len(PAYLOAD)
        assert reader.stats.retries == 0


@pytest.mark.parametrize(("offset", "length"), [(0, 1), (0, 10_000), (123, 456), (9_999, 1)])
async def test_object_reader_reads_byte_ranges(s3_object: str, offset: int, length: int) -> None:
    async with ObjectReader() as reader:
        assert await reader.read(s3_object, offset, length) == PAYLOAD[offset : offset + length]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("promised", [len(PAYLOAD) + 1, len(PAYLOAD) - 1])
async def test_object_reader_whole_object_of_other_size_is_changed(
    s3_object: str, promised: int, native: bool
) -> None:
    """Larger or smaller than the snapshot says; one byte more is seen too (the native
    read asks for a whole object one byte past its size)."""
    async with ObjectReader(ObjectReaderConfig(native_s3_get=native)) as reader:
        with pytest.raises(ObjectChangedError) as info:
            await reader.read(s3_object, None, promised)
    message = str(info.value)
    assert s3_object in message
    assert f"{promised} bytes" in message and "10000 bytes" in message
    assert info.value.location == s3_object
    assert info.value.event == "object_changed_since_snapshot"


async def test_object_reader_native_read_of_a_known_size_is_one_get(
    s3_object: str, proxy: FaultProxy
) -> None:
    async with ObjectReader(s3_settings=_via(proxy)) as reader:
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
        assert await reader.read(s3_object, 123, 456) == PAYLOAD[123:579]
        assert proxy.gets_for("data/obj.bin") == 2
        # Size unknown: one GET too, its answer's range read before its body.
        assert await reader.read(s3_object) == PAYLOAD
        assert proxy.gets_for("data/obj.bin") == 3


@pytest.mark.parametrize(("offset", "length"), [(9_990, 20), (20_000, 5)])
async def test_object_reader_range_past_end_is_changed(
    s3_object: str, offset: int, length: int
) -> None:
    async with ObjectReader() as reader:
        with pytest.raises(ObjectChangedError, match="changed since the snapshot"):
            await reader.read(s3_object, offset, length)


async def test_object_reader_overwritten_object_is_changed(
    s3_sync_client: Any, s3_bucket: str, s3_object: str
) -> None:
    async with ObjectReader() as reader:
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
        s3_sync_client.put_object(Bucket=s3_bucket, Key="data/obj.bin", Body=PAYLOAD[:5000])
        with pytest.raises(ObjectChangedError):
            await reader.read(s3_object, None, len(PAYLOAD))


@pytest.mark.parametrize(("native", "lean"), [(True, True), (False, True), (False, False)])
async def test_object_reader_same_size_overwrite_after_listing_is_changed(
    s3_sync_client: Any, s3_bucket: str, s3_object: str, native: bool, lean: bool
) -> None:
    assert s3_object == f"s3://{s3_bucket}/data/obj.bin"
    config = ObjectReaderConfig(native_s3_get=native, lean_s3_get=lean)
    await assert_same_size_overwrite_after_listing_refused(
        s3_sync_client, s3_bucket, "data/obj.bin", PAYLOAD, config
    )


async def test_object_reader_listing_time_set_after_construction_applies_to_s3_reads(
    s3_sync_client: Any, s3_bucket: str, s3_object: str
) -> None:
    """The agent learns the listing time at registration, after its reader exists."""
    listed_at = server_time(s3_sync_client, s3_bucket)
    await assert_eventually(lambda: server_time(s3_sync_client, s3_bucket) > listed_at)
    s3_sync_client.put_object(Bucket=s3_bucket, Key="data/obj.bin", Body=PAYLOAD[::-1])
    async with ObjectReader() as reader:
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD[::-1]  # size only
        reader.listed_at = listed_at
        with pytest.raises(ObjectChangedError, match="S3 answered 412"):
            await reader.read(s3_object, None, len(PAYLOAD))
        reader.listed_at = None
        assert await reader.read(s3_object, 10, 20) == PAYLOAD[::-1][10:30]


async def test_object_reader_store_built_while_the_listing_time_changes_is_not_kept(
    s3_sync_client: Any, s3_bucket: str, s3_object: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store sends the listing time it was built for: one that finishes building after
    ``listed_at`` changed must not serve the reads of the new time."""
    listed_at = server_time(s3_sync_client, s3_bucket)
    await assert_eventually(lambda: server_time(s3_sync_client, s3_bucket) > listed_at)
    s3_sync_client.put_object(Bucket=s3_bucket, Key="data/obj.bin", Body=PAYLOAD[::-1])
    building, release = threading.Event(), threading.Event()
    build = object_reader_module.native_store

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        building.set()
        release.wait(10)
        return build(*args, **kwargs)

    monkeypatch.setattr(object_reader_module, "native_store", slow_build)
    async with ObjectReader(FAST_RETRY, listed_at=listed_at) as reader:
        first = asyncio.ensure_future(reader.read(s3_object, None, len(PAYLOAD)))
        assert await asyncio.to_thread(building.wait, 10)
        reader.listed_at = None  # the time changes while that store is built
        release.set()
        await asyncio.gather(first, return_exceptions=True)  # it read under either time
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD[::-1]


async def test_object_reader_local_file_modified_after_listing_is_changed(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(PAYLOAD)
    listed_at = time.time()
    async with ObjectReader(listed_at=listed_at) as reader:
        assert await reader.read(str(path), None, len(PAYLOAD)) == PAYLOAD
        # File times come from the kernel's coarse clock (a tick behind): step past it.
        await assert_eventually(lambda: time.time() > listed_at + 0.05)
        path.write_bytes(PAYLOAD[::-1])  # same size, new content
        with pytest.raises(ObjectChangedError, match="@refresh") as info:
            await reader.read(str(path), None, len(PAYLOAD))
        assert "modified at" in str(info.value)
        [result] = await reader.read_local_many([(str(path), 5, 10)])
        assert isinstance(result, ObjectChangedError)
    async with ObjectReader(listed_at=time.time()) as reader:
        assert await reader.read(str(path), None, len(PAYLOAD)) == PAYLOAD[::-1]


def test_read_local_into_refuses_what_read_local_refuses_with_the_same_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(PAYLOAD)
    listed_at = time.time() + 1  # written before this listing
    dest = bytearray(len(PAYLOAD))
    with memoryview(dest) as view:
        read_local_into(str(path), None, len(PAYLOAD), view, listed_at)
        assert dest == PAYLOAD
        read_local_into(f"file://{path}", -1, len(PAYLOAD), view)  # -1 means the whole file
        with view[:20] as part:
            read_local_into(str(path), 10, 20, part)
        assert dest[:20] == PAYLOAD[10:30]
        # A same-size overwrite after the listing, a size mismatch, a range past the end.
        os.utime(path, (listed_at + 5, listed_at + 5))
        cases = [
            ((str(path), None, len(PAYLOAD)), listed_at),
            ((str(path), None, 9_999), None),
            ((str(path), 9_990, 20), None),
        ]
        for (location, off, length), listed in cases:
            with pytest.raises(ObjectChangedError) as into, view[:length] as part:
                read_local_into(location, off, length, part, listed)
            with pytest.raises(ObjectChangedError) as whole:
                read_local(location, off, length, listed)
            assert str(into.value) == str(whole.value)
        with pytest.raises(ObjectNotFoundError):
            read_local_into(str(tmp_path / "gone"), None, 4, view[:4])


async def test_object_reader_missing_object_raises_not_found(s3_bucket: str) -> None:
    async with ObjectReader(FAST_RETRY) as reader:
        with pytest.raises(ObjectNotFoundError, match="does not exist") as info:
            await reader.read(f"s3://{s3_bucket}/nope.bin", None, 10)
    assert info.value.location == f"s3://{s3_bucket}/nope.bin"
    assert reader.stats.retries == 0  # permanent: not retried


async def test_object_reader_missing_bucket_raises_bucket_not_found(s3_env: LocalS3) -> None:
    async with ObjectReader(FAST_RETRY) as reader:
        with pytest.raises(BucketNotFoundError, match="bucket"):
            await reader.read("s3://mx8-no-such-bucket-x1/a.bin")
    assert reader.stats.retries == 0


async def test_object_reader_retries_slowdown_then_succeeds(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.add_faults("data/obj.bin", "slowdown", "slowdown")
    async with ObjectReader(FAST_RETRY, s3_settings=_via(proxy)) as reader:
        assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
    assert proxy.faults_fired["slowdown"] == 2
    assert proxy.gets_for("data/obj.bin") == 3
    assert reader.stats.retries == 2


@pytest.fixture
def debug_logging() -> Iterator[None]:
    configure_logging(level="debug")  # folded retry lines go out at debug
    yield
    configure_logging()


async def test_object_reader_retry_lines_are_short_and_one_per_interval(
    s3_object: str, proxy: FaultProxy, debug_logging: None
) -> None:
    proxy.add_faults("data/obj.bin", *["slowdown"] * 6)
    with capture_logs() as logs:
        config = ObjectReaderConfig(max_attempts=8, backoff_base_s=0.001, backoff_max_s=0.01)
        async with ObjectReader(config, s3_settings=_via(proxy)) as reader:
            assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
    assert reader.stats.retries == 6
    lines = [e for e in logs if e["event"] == "storage_read_retry"]
    shown = [e for e in lines if e["log_level"] == "warning"]
    assert len(shown) == 1  # six retries within the interval: one line at the default level
    assert [e["log_level"] for e in lines[1:]] == ["debug"] * 5
    assert len(lines[0]["error"]) <= 160 and "\n" not in lines[0]["error"]


async def test_object_reader_retries_short_body_and_reset(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.add_faults("data/obj.bin", "short", "reset", "reset")
    async with ObjectReader(FAST_RETRY, s3_settings=_via(proxy)) as reader:
        assert await reader.read(s3_object, 100, 5000) == PAYLOAD[100:5100]
    assert proxy.faults_fired["short"] == 1 and proxy.faults_fired["reset"] == 2
    # aiohttp itself may re-send once on a dropped keep-alive connection; the short body
    # and at least one reset reach mx8's retry loop.
    assert reader.stats.retries >= 2


async def test_object_reader_gives_up_after_max_attempts(s3_object: str, proxy: FaultProxy) -> None:
    proxy.add_faults("data/obj.bin", *["slowdown"] * 10)
    async with ObjectReader(FAST_RETRY, s3_settings=_via(proxy)) as reader:
        with pytest.raises(TransientStorageError, match="gave up after 4 attempts") as info:
            await reader.read(s3_object, None, len(PAYLOAD))
    assert info.value.location == s3_object
    assert proxy.gets_for("data/obj.bin") == 4
    assert reader.stats.retries == 3


async def test_object_reader_access_denied_is_permanent_and_names_the_credentials(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.add_faults("data/obj.bin", "denied")
    async with ObjectReader(FAST_RETRY, s3_settings=_via(proxy)) as reader:
        with pytest.raises(AccessDeniedError, match=r"access denied to .*\(AccessDenied\)") as info:
            await reader.read(s3_object, None, len(PAYLOAD))
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "\n" not in str(info.value)
    assert info.value.location == s3_object
    assert reader.stats.retries == 0


async def test_object_reader_without_credentials_says_what_to_set(
    s3_env: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with ObjectReader(FAST_RETRY) as reader:
        with pytest.raises(AccessDeniedError, match="no AWS credentials found"):
            await reader.read("s3://mx8-creds-less-bucket/a.bin", None, 10)
    assert reader.stats.retries == 0


async def test_object_reader_refused_connection_retries_then_names_the_endpoint_setting(
    s3_env: LocalS3, unused_tcp_port: int
) -> None:
    dead = S3Settings(endpoint_url=f"http://127.0.0.1:{unused_tcp_port}", region="us-east-1")
    async with ObjectReader(FAST_RETRY, s3_settings=dead) as reader:
        with pytest.raises(TransientStorageError) as info:
            await reader.read("s3://some-bucket/a.bin", None, 10)
    message = str(info.value)
    assert "cannot connect to the S3 endpoint" in message and "MX8_S3_ENDPOINT_URL" in message
    assert "gave up after 4 attempts" in message and "\n" not in message
    assert reader.stats.retries == 3


async def test_object_reader_cancelled_read_stops_and_the_reader_goes_on(
    s3_object: str, proxy: FaultProxy
) -> None:
    gate = threading.Event()
    proxy.add_faults("data/obj.bin", gate)
    try:
        async with ObjectReader(FAST_RETRY, s3_settings=_via(proxy)) as reader:
            task = asyncio.create_task(reader.read(s3_object, None, len(PAYLOAD)))
            await assert_eventually(lambda: proxy.gets_for("data/obj.bin") == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert reader.stats.reads == 0
            assert await reader.read(s3_object, 5, 10) == PAYLOAD[5:15]
    finally:
        gate.set()


async def test_object_reader_reads_local_files(tmp_path: Any) -> None:
    path = tmp_path / "a b.bin"
    path.write_bytes(PAYLOAD)
    async with ObjectReader() as reader:
        assert await reader.read(str(path), None, len(PAYLOAD)) == PAYLOAD
        assert await reader.read(f"file://{path}", 10, 20) == PAYLOAD[10:30]
        assert await reader.read(str(path)) == PAYLOAD
        with pytest.raises(ObjectChangedError, match="10000 bytes"):
            await reader.read(str(path), None, 9_999)
        with pytest.raises(ObjectChangedError, match="ends at byte 10000"):
            await reader.read(str(path), 9_990, 20)
        with pytest.raises(ObjectNotFoundError):
            await reader.read(str(tmp_path / "missing.bin"), None, 5)
        with pytest.raises(StorageError, match="directory"):
            await reader.read(str(tmp_path), 0, 5)


async def test_object_reader_local_permission_denied(tmp_path: Any) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "secret.bin"
    path.write_bytes(b"x")
    path.chmod(0)
    async with ObjectReader() as reader:
        with pytest.raises(StorageError, match="permission denied"):
            await reader.read(str(path))


async def test_object_reader_rejects_offset_without_length(tmp_path: Any) -> None:
    async with ObjectReader() as reader:
        with pytest.raises(StorageError, match="a range needs both"):
            await reader.read(str(tmp_path / "x"), 5, None)


@pytest.mark.parametrize("bad", ["s3://", "s3://bucket", "s3://bucket/", "s3:///key"])
def test_split_s3_location_rejects_malformed(bad: str) -> None:
    with pytest.raises(StorageError, match="s3://bucket/key"):
        split_s3_location(bad)


def test_split_s3_location_splits_bucket_and_key() -> None:
    assert split_s3_location("s3://b/k/x y.jpg") == ("b", "k/x y.jpg")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"backoff_base_s": 1.0, "backoff_max_s": 0.5}, {"local_read_threads": 0}],
)
def test_object_reader_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ObjectReaderConfig(**kwargs)


async def test_object_reader_reads_local_files_in_one_job(tmp_path: Any) -> None:
    (tmp_path / "a").write_bytes(b"aaaa")
    (tmp_path / "b").write_bytes(PAYLOAD)
    items = [
        (str(tmp_path / "a"), None, 4),
        (str(tmp_path / "missing"), None, 4),
        (f"file://{tmp_path / 'b'}", 5, 10),
        (str(tmp_path / "a"), None, 3),
        ("gs://bucket/key", None, None),
    ]
    async with ObjectReader() as reader:
        got = await reader.read_local_many(items)
    assert got[0] == b"aaaa" and got[2] == PAYLOAD[5:15]
    assert isinstance(got[1], ObjectNotFoundError)
    assert isinstance(got[3], ObjectChangedError)
    assert isinstance(got[4], StorageError) and "scheme" in str(got[4])
    assert reader.stats.reads == 2 and reader.stats.bytes == 14
    assert reader.stats.local_batches == 1


async def test_object_reader_on_read_sees_each_sample_read(tmp_path: Any, s3_object: str) -> None:
    (tmp_path / "a").write_bytes(b"aaaa")
    timed: list[tuple[float, int]] = []
    async with ObjectReader(on_read=lambda s, n: timed.append((s, n))) as reader:
        await reader.read(s3_object, 10, 20)
        await reader.read(str(tmp_path / "a"))
        await reader.read_local_many([(str(tmp_path / "a"), None, 4), ("/no/such/file", None, 1)])
    # Failed reads are not timed: the observer sees bytes that arrived.
    assert [n for _s, n in timed] == [20, 4, 4]
    assert all(s >= 0 for s, _n in timed)


async def test_object_reader_botocore_clients_reuse_parsed_models(s3_object: str) -> None:
    # On the botocore path each reader opens its own client (one per engine epoch); the
    # parsed service model is shared, and sharing it must not grow the loader's search path.
    readers = [ObjectReader(ObjectReaderConfig(native_s3_get=False)) for _ in range(3)]
    try:
        for reader in readers:
            assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
        loaders = {id(reader._client._loader) for reader in readers}
        paths = [len(reader._client._loader.search_paths) for reader in readers]
    finally:
        for reader in readers:
            await reader.aclose()
    assert len(loaders) == 1
    assert paths[0] == paths[-1]


async def test_object_reader_follows_a_bucket_to_its_own_region(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.home_region = "eu-west-1"  # the reader signs for us-east-1 (_via)
    with capture_logs() as logs:
        async with ObjectReader(s3_settings=_via(proxy)) as reader:
            assert await reader.read(s3_object, None, len(PAYLOAD)) == PAYLOAD
            assert await reader.read(s3_object, 5, 10) == PAYLOAD[5:15]
    assert proxy.redirects == 1  # learned once, then every request signed for eu-west-1
    moved = [(e["region"], e["signed_for"]) for e in logs if e["event"] == "s3_bucket_region"]
    assert moved == [("eu-west-1", "us-east-1")]


async def test_object_reader_bucket_in_an_unnamed_region_is_one_line(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.home_region = "eu-west-1"
    proxy.tell_region = False  # no x-amz-bucket-region to follow
    async with ObjectReader(s3_settings=_via(proxy)) as reader:
        with pytest.raises(StorageError, match="set AWS_REGION") as info:
            await reader.read(s3_object, None, len(PAYLOAD))
    text = str(info.value)
    assert "301" in text and "(us-east-1)" in text and "\n" not in text
    assert info.value.location == s3_object


async def test_object_reader_refused_again_in_the_named_region_is_one_line_asked_once(
    s3_object: str, proxy: FaultProxy
) -> None:
    proxy.home_region = "eu-west-1"
    proxy.told_region = "ap-south-1"  # S3 names a region that refuses too
    async with ObjectReader(s3_settings=_via(proxy)) as reader:
        for _ in range(2):
            with pytest.raises(StorageError, match="set AWS_REGION") as info:
                await reader.read(s3_object, None, len(PAYLOAD))
            text = str(info.value)
            assert "(ap-south-1)" in text and "\n" not in text
    assert proxy.region_asks == 1  # the region is asked once, not again on each refusal

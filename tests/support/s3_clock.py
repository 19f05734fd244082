"""The S3 server's clock, as a snapshot's listing records it, and the check that a
same-size overwrite after that listing is refused (on whichever S3 server a test runs)."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from mx8_common.errors import ObjectChangedError
from mx8_common.storage.object_reader import ObjectReader, ObjectReaderConfig
from support.eventually import assert_eventually

__all__ = ["assert_same_size_overwrite_after_listing_refused", "server_time"]


def server_time(client: Any, bucket: str) -> float:
    """The server's clock (the Date header of a LIST of ``bucket``), in Unix seconds."""
    date = client.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]["date"]
    return email.utils.parsedate_to_datetime(date).timestamp()


async def assert_same_size_overwrite_after_listing_refused(
    client: Any, bucket: str, key: str, data: bytes, config: ObjectReaderConfig
) -> None:
    """``key`` holds ``data``: read whole and ranged under a listing time, overwrite it with
    other bytes of the same size once the server's clock is past that time, and check both
    reads are refused (naming the object and ``@refresh``, with no retry), while a listing
    taken after the overwrite reads the new bytes."""
    location = f"s3://{bucket}/{key}"
    listed_at = server_time(client, bucket)
    async with ObjectReader(config, listed_at=listed_at) as reader:
        assert await reader.read(location, None, len(data)) == data
        assert await reader.read(location, 10, 20) == data[10:30]
    # HTTP dates have whole seconds: overwrite once the server's clock shows a later one.
    await assert_eventually(lambda: server_time(client, bucket) > listed_at)
    client.put_object(Bucket=bucket, Key=key, Body=data[::-1])
    async with ObjectReader(config, listed_at=listed_at) as reader:
        for offset, length in ((None, len(data)), (10, 20)):
            with pytest.raises(ObjectChangedError) as info:
                await reader.read(location, offset, length)
            assert location in str(info.value)
            assert "@refresh" in str(info.value)
            assert "mx8-snapshot-resolve" not in str(info.value)
        assert reader.stats.retries == 0
    # A snapshot listed after the overwrite reads the new bytes.
    later = server_time(client, bucket)
    async with ObjectReader(config, listed_at=later) as reader:
        assert await reader.read(location, None, len(data)) == data[::-1]

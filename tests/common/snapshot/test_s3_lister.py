"""S3 listing pages against the real S3-protocol server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from mx8_common.errors import AccessDeniedError, BucketNotFoundError, NonMonotonicListingError
from mx8_common.snapshot.page_source import PageSource, ordered_pages
from mx8_common.snapshot.s3_lister import S3PageSource
from mx8_common.storage.s3_client import S3Settings, open_s3_client
from mx8_common.testing.list_endpoint import ListEndpoint

KEYS = {
    "ds/b/2.jpg": 2,
    "ds/a/1.jpg": 1,
    "ds/a-x/9.jpg": 9,
    "ds/top.txt": 3,
    "ds/a/deep/4.jpg": 4,
    "ds/a/": 0,  # a console's folder marker: not a sample
    "other/z.jpg": 5,
}


@pytest.fixture
def filled_bucket(s3_bucket: str, s3_sync_client: Any) -> str:
    for key, size in KEYS.items():
        s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * size)
    return s3_bucket


async def _collect(source: S3PageSource) -> list[Sequence[tuple[str, int]]]:
    return [page async for page in source.pages()]


async def test_s3_page_source_pages_in_key_order(filled_bucket: str) -> None:
    async with open_s3_client() as client:
        source = S3PageSource(client, filled_bucket, "ds/", page_size=2)
        assert isinstance(source, PageSource)
        pages = await _collect(source)
    keys = [item for page in pages for item in page]
    assert keys == [
        ("a-x/9.jpg", 9),
        ("a/1.jpg", 1),
        ("a/deep/4.jpg", 4),
        ("b/2.jpg", 2),
        ("top.txt", 3),
    ]
    assert len(pages) >= 3  # page_size 2: one page per ListObjectsV2 response
    assert source.location("a/1.jpg") == f"s3://{filled_bucket}/ds/a/1.jpg"


async def test_s3_page_source_non_recursive_keeps_direct_keys(filled_bucket: str) -> None:
    async with open_s3_client() as client:
        source = S3PageSource(client, filled_bucket, "ds/", recursive=False)
        pages = await _collect(source)
    assert [item for page in pages for item in page] == [("top.txt", 3)]


async def test_s3_page_source_folders_summary(filled_bucket: str) -> None:
    async with open_s3_client() as client:
        summary = await S3PageSource(client, filled_bucket, "ds/").folders()
    assert summary.folders == ("a", "a-x", "b")
    assert summary.loose_objects == 1 and summary.example_loose == "top.txt"


async def test_s3_page_source_missing_bucket_is_clear(s3_env: Any) -> None:
    async with open_s3_client() as client:
        with pytest.raises(BucketNotFoundError, match="does not exist"):
            await _collect(S3PageSource(client, "mx8-no-such-bucket-x", ""))


async def test_s3_page_source_access_denied_is_clear(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    list_endpoint.denied.add("locked-bucket")
    settings = S3Settings(endpoint_url=list_endpoint.url, region="us-east-1")
    async with open_s3_client(settings) as client:
        with pytest.raises(AccessDeniedError, match="access denied"):
            await _collect(S3PageSource(client, "locked-bucket", "p/"))


async def test_s3_page_source_serves_unordered_listing_from_fake_endpoint(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    list_endpoint.buckets["unordered"] = [("p/b", 1), ("p/c", 1), ("p/a", 1)]
    settings = S3Settings(endpoint_url=list_endpoint.url, region="us-east-1")
    async with open_s3_client(settings) as client:
        source = S3PageSource(client, "unordered", "p/", page_size=2)
        with pytest.raises(NonMonotonicListingError, match="'a', which sorts before"):
            [p async for p in ordered_pages(source.pages(), link="s3://unordered/p/")]


async def test_s3_page_source_concurrent_pages_equal_sequential_on_the_s3_server(
    s3_bucket: str, s3_sync_client: Any
) -> None:
    keys = [f"ds/c{i % 4}/{i:03d}.jpg" for i in range(60)]  # folders
    keys += [f"ds/flat-{i:03d}.bin" for i in range(40)]  # loose keys between them
    keys += [f"ds/big/deep/{i:03d}" for i in range(50)]  # one big, deeper folder
    keys += ["ds/a b/+%.bin", "ds/é/ü.bin", "ds/日本/x", "ds/empty/", "ds-x/1", "other/z"]
    for key in keys:
        s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * (len(key) % 5))
    async with open_s3_client() as client:
        for recursive in (True, False):
            got = {
                concurrency: [
                    item
                    async for page in S3PageSource(
                        client,
                        s3_bucket,
                        "ds/",
                        recursive=recursive,
                        page_size=7,
                        concurrency=concurrency,
                    ).pages()
                    for item in page
                ]
                for concurrency in (1, 8)
            }
            want = sorted(
                (k[3:], len(k) % 5)
                for k in keys
                if k.startswith("ds/") and not k.endswith("/") and (recursive or k.count("/") == 1)
            )
            assert got[1] == want
            assert got[8] == want

"""S3Getter's lean GET path against the real S3-protocol test server, beside the client path.

Both paths must give the same bytes, the same headers the reader checks, and the same
errors (S3's answers turned into the ``ClientError`` botocore raises, then into mx8
errors by ``translate_s3_error``).
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import pytest
from botocore.exceptions import ClientError, FlexibleChecksumError

from mx8_common.errors import (
    BucketNotFoundError,
    ObjectChangedError,
    ObjectNotFoundError,
    TransientStorageError,
)
from mx8_common.storage.object_reader import ObjectReader, ObjectReaderConfig
from mx8_common.storage.s3_client import S3Settings, translate_s3_error
from mx8_common.storage.s3_get import S3Getter, _check_checksum, _parse_list
from mx8_common.testing.local_s3 import LocalS3

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
# Keys whose URL form differs from their text: quoting must match what was signed.
KEYS = ["plain/obj.bin", "a b/c+d%e~f.bin", "ünï/cödé.bin", "x//y/./z.bin", "q?r#s&t=u;v.bin"]


@pytest.fixture
def objects(s3_sync_client: Any, s3_bucket: str) -> str:
    for i, key in enumerate(KEYS):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=PAYLOAD[i:])
    return s3_bucket


async def _get(getter: S3Getter, bucket: str, key: str, rng: str | None = None) -> Any:
    async with getter.get(bucket, key, rng) as obj:
        return obj.content_length, obj.content_range, await obj.read()


async def test_s3_getter_lean_path_matches_client_path(objects: str) -> None:
    async with S3Getter() as lean, S3Getter(lean=False) as plain:
        for i, key in enumerate(KEYS):
            want = PAYLOAD[i:]
            got_lean = await _get(lean, objects, key)
            assert got_lean == await _get(plain, objects, key)
            assert got_lean == (len(want), None, want)
            ranged = await _get(lean, objects, key, "bytes=5-104")
            assert ranged == await _get(plain, objects, key, "bytes=5-104")
            assert ranged[0] == 100 and ranged[2] == want[5:105]
            assert ranged[1] == f"bytes 5-104/{len(want)}"
        # The lean path was taken: the bucket has a route, and the client path none.
        assert lean._routes[objects] is not None
        assert plain._routes == {}


@pytest.mark.parametrize("lean", [True, False])
async def test_s3_getter_missing_key_and_bucket_raise_client_errors(
    objects: str, lean: bool
) -> None:
    async with S3Getter(lean=lean) as getter:
        with pytest.raises(ClientError) as missing_key:
            await _get(getter, objects, "nope.bin")
        with pytest.raises(ClientError) as missing_bucket:
            await _get(getter, "mx8-no-such-bucket-x2", "a.bin")
        with pytest.raises(ClientError) as bad_range:
            await _get(getter, objects, KEYS[0], "bytes=20000-20009")
    assert missing_key.value.response["Error"]["Code"] == "NoSuchKey"
    assert missing_bucket.value.response["Error"]["Code"] == "NoSuchBucket"
    assert bad_range.value.response["Error"]["Code"] == "InvalidRange"
    assert missing_key.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    translated = translate_s3_error(missing_key.value, f"s3://{objects}/nope.bin")
    assert isinstance(translated, ObjectNotFoundError)
    assert isinstance(
        translate_s3_error(missing_bucket.value, "s3://mx8-no-such-bucket-x2/a.bin"),
        BucketNotFoundError,
    )


@pytest.mark.parametrize(("native", "lean"), [(True, True), (False, True), (False, False)])
async def test_object_reader_errors_are_the_same_on_every_s3_path(
    objects: str, native: bool, lean: bool, s3_sync_client: Any
) -> None:
    config = ObjectReaderConfig(
        max_attempts=2, backoff_base_s=0.001, native_s3_get=native, lean_s3_get=lean
    )
    location = f"s3://{objects}/{KEYS[0]}"
    async with ObjectReader(config) as reader:
        with pytest.raises(ObjectNotFoundError, match="does not exist") as info:
            await reader.read(f"s3://{objects}/nope.bin", None, 10)
        assert info.value.location == f"s3://{objects}/nope.bin"
        with pytest.raises(BucketNotFoundError, match="MX8_S3_ENDPOINT_URL"):
            await reader.read("s3://mx8-no-such-bucket-x3/a.bin", None, 10)
        with pytest.raises(ObjectChangedError, match="10241 bytes"):
            await reader.read(location, None, len(PAYLOAD) + 1)
        with pytest.raises(ObjectChangedError, match="too short"):
            await reader.read(location, 20_000, 10)
        s3_sync_client.put_object(Bucket=objects, Key=KEYS[0], Body=PAYLOAD[:100])
        with pytest.raises(ObjectChangedError, match="changed since the snapshot"):
            await reader.read(location, None, len(PAYLOAD))
        assert await reader.read(location, 10, 20) == PAYLOAD[10:30]
        assert reader.stats.retries == 0  # all permanent
        if native:
            assert reader._getter is None and objects in reader._stores
        else:
            assert (reader._getter is not None) and (bool(reader._getter._routes) == lean)


@pytest.mark.parametrize("lean", [True, False])
async def test_s3_getter_dead_endpoint_is_a_transient_error_naming_the_endpoint_setting(
    lean: bool, s3_env: LocalS3, unused_tcp_port: int
) -> None:
    dead = S3Settings.from_env(f"http://127.0.0.1:{unused_tcp_port}")
    config = ObjectReaderConfig(max_attempts=1, native_s3_get=False, lean_s3_get=lean)
    async with ObjectReader(config, s3_settings=dead) as reader:
        with pytest.raises(TransientStorageError, match="cannot connect to the S3 endpoint"):
            await reader.read("s3://some-bucket/a.bin", None, 10)


def test_s3_getter_checksum_mismatch_is_a_transient_error() -> None:
    good = base64.b64encode(zlib.crc32(PAYLOAD).to_bytes(4, "big")).decode()
    _check_checksum({"x-amz-checksum-crc32": good}, PAYLOAD)
    _check_checksum({}, PAYLOAD)  # nothing to check
    _check_checksum({"x-amz-checksum-crc32": "AAAAAA==-3"}, PAYLOAD)  # multipart: skipped
    with pytest.raises(FlexibleChecksumError) as info:
        _check_checksum({"x-amz-checksum-crc32": good}, PAYLOAD[1:])
    # Corrupt bytes in transit: a retry may get good ones.
    assert isinstance(translate_s3_error(info.value, "s3://b/k"), TransientStorageError)


async def test_s3_getter_with_proxy_env_uses_the_client(
    objects: str, s3_env: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proxies are the client's business: the lean path steps aside (the route is None).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    async with S3Getter(S3Settings(endpoint_url=s3_env.endpoint_url, region="us-east-1")) as g:
        assert await g._route(objects) is None


async def test_s3_getter_borrowed_client_is_used_and_left_open(
    objects: str, s3_env: LocalS3
) -> None:
    async with S3Getter(lean=False) as owner:
        async with S3Getter(client=owner.client) as borrower:
            assert await _get(borrower, objects, KEYS[0]) == (len(PAYLOAD), None, PAYLOAD)
            assert borrower._routes == {}  # a borrowed client: no lean path
        # Still usable after the borrower closed.
        assert (await _get(owner, objects, KEYS[0]))[2] == PAYLOAD


async def _list_all(getter: S3Getter, **kwargs: Any) -> list[dict[str, Any]]:
    """Every page of a listing, paged by continuation token, with the fields listing reads."""
    pages, token = [], None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        resp = await getter.list_objects_v2(MaxKeys=2, **kwargs, **extra)
        pages.append(
            {
                "keys": [(o["Key"], o["Size"]) for o in resp.get("Contents", ())],
                "prefixes": [p["Prefix"] for p in resp.get("CommonPrefixes", ())],
                "truncated": resp["IsTruncated"],
            }
        )
        token = resp.get("NextContinuationToken")
        if not resp["IsTruncated"]:
            return pages


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"Delimiter": "/"}, {"Prefix": "a b/"}, {"StartAfter": "a b/c"}, {"Prefix": "ü"}],
)
async def test_s3_getter_list_lean_path_matches_client_path(
    objects: str, kwargs: dict[str, str]
) -> None:
    async with S3Getter() as lean, S3Getter(lean=False) as plain:
        got = await _list_all(lean, Bucket=objects, **kwargs)
        assert got == await _list_all(plain, Bucket=objects, **kwargs)
        assert lean._routes[objects] is not None
    listed = [key for page in got for key, _ in page["keys"]]
    assert listed == sorted(listed) and listed, got


@pytest.mark.parametrize("lean", [True, False])
async def test_s3_getter_list_missing_bucket_raises_the_client_error(
    s3_env: LocalS3, lean: bool
) -> None:
    async with S3Getter(lean=lean) as getter:
        with pytest.raises(ClientError) as info:
            await getter.list_objects_v2(Bucket="mx8-no-such-bucket-l", Prefix="")
    assert isinstance(translate_s3_error(info.value, "s3://x/"), BucketNotFoundError)


def test_s3_list_parse_falls_back_to_elementtree_for_an_unusual_layout() -> None:
    ns = "http://s3.amazonaws.com/doc/2006-03-01/"
    # Namespace-prefixed, pretty-printed, Size before Key: the regexes do not match it.
    body = f"""<?xml version="1.0"?>
<s3:ListBucketResult xmlns:s3="{ns}">
  <s3:IsTruncated>true</s3:IsTruncated>
  <s3:EncodingType>url</s3:EncodingType>
  <s3:NextContinuationToken>t&amp;1</s3:NextContinuationToken>
  <s3:Contents><s3:Size>7</s3:Size><s3:Key>a%20b%2Bc</s3:Key></s3:Contents>
  <s3:CommonPrefixes><s3:Prefix>d%2F/</s3:Prefix></s3:CommonPrefixes>
</s3:ListBucketResult>""".encode()
    assert _parse_list(body) == {
        "IsTruncated": True,
        "KeyCount": 2,
        "Contents": [{"Key": "a b+c", "Size": 7}],
        "CommonPrefixes": [{"Prefix": "d//"}],
        "NextContinuationToken": "t&1",
    }

"""native_store: obstore stores built from mx8's S3 settings, against the real S3-protocol
test server; their errors become mx8's typed errors with botocore's messages."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import obstore
import pytest

from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.storage.native_store import (
    cached_native_store,
    fork_generation,
    native_error_code,
    native_runtime_forked,
    native_store,
    supported_schemes,
    translate_native_error,
)
from mx8_common.storage.s3_client import S3Settings
from mx8_common.testing.local_s3 import LocalS3

PAYLOAD = os.urandom(4096)


@pytest.fixture
def s3_key(s3_sync_client: Any, s3_bucket: str) -> str:
    s3_sync_client.put_object(Bucket=s3_bucket, Key="dir/a b+c.bin", Body=PAYLOAD)
    return "dir/a b+c.bin"


async def test_native_store_reads_objects_through_the_configured_endpoint(
    s3_bucket: str, s3_key: str
) -> None:
    store = native_store("s3", s3_bucket)
    assert (
        bytes(await obstore.get_range_async(store, s3_key, start=10, length=20)) == PAYLOAD[10:30]
    )
    result = await obstore.get_async(store, s3_key)
    assert bytes(await result.bytes_async()) == PAYLOAD
    assert result.meta["size"] == len(PAYLOAD)


def test_native_store_is_cached_per_bucket_and_settings(s3_env: LocalS3) -> None:
    assert native_store("s3", "bucket-a") is native_store("s3", "bucket-a")
    assert native_store("s3", "bucket-a") is not native_store("s3", "bucket-b")
    other = S3Settings(endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert native_store("s3", "bucket-a", s3_settings=other) is not native_store("s3", "bucket-a")
    # A listing time is a header of the store's every request: one store per time.
    since = "Mon, 30 Nov 2026 12:00:00 GMT"
    dated = native_store("s3", "bucket-a", unmodified_since=since)
    assert dated is native_store("s3", "bucket-a", unmodified_since=since)
    assert dated is not native_store("s3", "bucket-a")
    assert cached_native_store("s3", "bucket-a", unmodified_since=since) is dated


def test_native_store_unknown_scheme_names_it_and_the_supported_ones() -> None:
    with pytest.raises(StorageError, match=r"scheme 'hdfs'.*s3://bucket/key") as info:
        native_store("hdfs", "b", location="hdfs://b/k")
    assert info.value.location == "hdfs://b/k"
    assert "s3" in supported_schemes()


def test_native_store_without_credentials_says_what_to_set(
    s3_env: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AccessDeniedError, match="no AWS credentials found") as info:
        native_store("s3", "mx8-no-creds-bucket", location="s3://mx8-no-creds-bucket/k")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    assert info.value.location == "s3://mx8-no-creds-bucket/k"


async def _error(store: Any, key: str, location: str) -> StorageError:
    with pytest.raises(Exception) as info:
        await obstore.get_async(store, key)
    return translate_native_error(info.value, location)


async def test_native_store_errors_become_typed_mx8_errors(s3_bucket: str) -> None:
    missing = await _error(native_store("s3", s3_bucket), "nope.bin", "s3://x/nope.bin")
    assert isinstance(missing, ObjectNotFoundError)
    assert str(missing).startswith("s3://x/nope.bin does not exist")
    no_bucket = await _error(native_store("s3", "mx8-no-such-bucket-n1"), "a", "s3://y/a")
    assert isinstance(no_bucket, BucketNotFoundError)
    assert "MX8_S3_ENDPOINT_URL" in str(no_bucket)


async def test_native_store_refused_connection_is_transient_and_names_the_endpoint_setting(
    s3_env: LocalS3, unused_tcp_port: int
) -> None:
    dead = S3Settings(endpoint_url=f"http://127.0.0.1:{unused_tcp_port}", region="us-east-1")
    error = await _error(native_store("s3", "some-bucket", s3_settings=dead), "a", "s3://s/a")
    assert isinstance(error, TransientStorageError)
    assert "cannot connect to the S3 endpoint for s3://s/a: Connection refused" in str(error)
    assert "\n" not in str(error)


def test_native_error_code_reads_the_s3_code_and_status() -> None:
    text = (
        "Generic S3 error: Error performing GET http://h/b/k - Server returned non-2xx "
        "status code: 403 Forbidden: <Error><Code>AccessDenied</Code></Error>"
    )
    assert native_error_code(RuntimeError(text)) == ("AccessDenied", 403)
    assert native_error_code(RuntimeError("HTTP error: error sending request")) == ("", 0)
    denied = translate_native_error(RuntimeError(text), "s3://b/k")
    assert isinstance(denied, AccessDeniedError)
    assert "access denied to s3://b/k (AccessDenied)" in str(denied)


def _child_reads(bucket: str, key: str, queue: Any) -> None:
    try:
        queue.put(
            (native_runtime_forked(), bytes(obstore.get(native_store("s3", bucket), key).bytes()))
        )
    except StorageError as exc:
        queue.put((native_runtime_forked(), str(exc)))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((None, repr(exc)))


def _in_child(method: str, bucket: str, key: str) -> tuple[bool | None, bytes | str]:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(bucket, key, queue))
    child.start()
    try:
        answer: tuple[bool | None, bytes | str] = queue.get(timeout=60)
    finally:
        child.join(30)
    assert child.exitcode == 0
    return answer


def test_native_store_reads_in_a_spawned_child(s3_bucket: str, s3_key: str) -> None:
    assert bytes(obstore.get(native_store("s3", s3_bucket), s3_key).bytes()) == PAYLOAD
    assert _in_child("spawn", s3_bucket, s3_key) == (False, PAYLOAD)


def test_native_store_refuses_in_a_child_forked_after_the_parent_used_it(
    s3_bucket: str, s3_key: str
) -> None:
    # The parent's runtime threads are gone in a forked child and a native request there
    # would hang, even through a new store: the child is told, and callers fall back.
    assert bytes(obstore.get(native_store("s3", s3_bucket), s3_key).bytes()) == PAYLOAD
    assert not native_runtime_forked()
    forked, message = _in_child("fork", s3_bucket, s3_key)
    assert forked is True
    assert isinstance(message, str) and "forked after its parent" in message


def test_fork_generation_changes_in_a_forked_child_only() -> None:
    # Readers compare it on every read instead of calling getpid(): a child of os.fork must
    # see a new number, the parent the same one.
    before = fork_generation()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's clean-ups
        os.write(write_end, str(fork_generation()).encode())
        os._exit(0)
    os.close(write_end)
    try:
        child = int(os.read(read_end, 64).decode())
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert child != before
    assert fork_generation() == before


def test_a_region_answer_without_a_followed_region_is_one_line_naming_the_fix() -> None:
    text = (
        "Generic S3 error: Error performing GET http://h/b/k - Server returned non-2xx "
        "status code: 301 Moved Permanently: <Error><Code>PermanentRedirect</Code></Error>"
    )
    error = translate_native_error(RuntimeError(text), "s3://b/k")
    assert str(error) == (
        "S3 answered PermanentRedirect for s3://b/k: the bucket is in another region than "
        "the one requests are signed for; set AWS_REGION to the bucket's region"
    )
    assert error.location == "s3://b/k"

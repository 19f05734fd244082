"""Snapshot resolver over S3 prefixes, against the real S3-protocol server of the fixtures."""

from __future__ import annotations

import email.utils
import random
from pathlib import Path
from typing import Any

import pytest
from support.logs import Events
from support.snapshot import cfg, resolve_in_threads, rows

from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EmptyDatasetError,
    NonMonotonicListingError,
    UnsupportedKeyError,
)
from mx8_common.snapshot.resolver import resolve_snapshot
from mx8_common.store import open_manifest_store
from mx8_common.testing.list_endpoint import ListEndpoint

OBJECTS = {
    "train/cat/001.jpg": 11,
    "train/cat/002.jpg": 12,
    "train/dog/001.jpg": 21,
    "train/dog/nested/deep.jpg": 31,
    "train/cat-x/5.jpg": 5,
    "val/cat/9.jpg": 9,
}


def upload(
    client: Any, bucket: str, objects: dict[str, int], order: list[str] | None = None
) -> None:
    for key in order or list(objects):
        client.put_object(Bucket=bucket, Key=key, Body=b"z" * objects[key])


async def test_resolve_s3_rows_and_same_hash_across_upload_order(
    s3_bucket: str, s3_sync_client: Any, store_root: str
) -> None:
    upload(s3_sync_client, s3_bucket, OBJECTS)
    first = await resolve_snapshot(f"s3://{s3_bucket}/train/", cfg(store_root))
    assert rows(first) == [
        (f"s3://{s3_bucket}/train/cat-x/5.jpg", 5, "mx8:vision:imagefolder;label_id=1"),
        (f"s3://{s3_bucket}/train/cat/001.jpg", 11, "mx8:vision:imagefolder;label_id=0"),
        (f"s3://{s3_bucket}/train/cat/002.jpg", 12, "mx8:vision:imagefolder;label_id=0"),
        (f"s3://{s3_bucket}/train/dog/001.jpg", 21, "mx8:vision:imagefolder;label_id=2"),
        (f"s3://{s3_bucket}/train/dog/nested/deep.jpg", 31, "mx8:vision:imagefolder;label_id=2"),
    ]
    assert first.class_names == ("cat", "cat-x", "dog")
    for key in OBJECTS:
        s3_sync_client.delete_object(Bucket=s3_bucket, Key=key)
    order = list(OBJECTS)
    random.Random(7).shuffle(order)
    upload(s3_sync_client, s3_bucket, OBJECTS, order)
    again = await resolve_snapshot(f"s3://{s3_bucket}/train@refresh", cfg(store_root))
    assert again.indexed and again.manifest_hash == first.manifest_hash


async def test_resolve_s3_changed_size_or_added_key_changes_hash(
    s3_bucket: str, s3_sync_client: Any, store_root: str
) -> None:
    upload(s3_sync_client, s3_bucket, OBJECTS)
    link = f"s3://{s3_bucket}/train/@refresh"
    base = await resolve_snapshot(link, cfg(store_root))
    s3_sync_client.put_object(Bucket=s3_bucket, Key="train/cat/001.jpg", Body=b"z" * 12)
    grown = await resolve_snapshot(link, cfg(store_root))
    s3_sync_client.put_object(Bucket=s3_bucket, Key="train/cat/001.jpg", Body=b"z" * 11)
    s3_sync_client.put_object(Bucket=s3_bucket, Key="train/cat/003.jpg", Body=b"z")
    added = await resolve_snapshot(link, cfg(store_root))
    assert len({base.manifest_hash, grown.manifest_hash, added.manifest_hash}) == 3
    assert added.samples == base.samples + 1


async def test_resolve_s3_non_recursive_excludes_nested_keys(
    s3_bucket: str, s3_sync_client: Any, store_root: str
) -> None:
    # The MinIO gate of the spec: recursive=false must exclude every nested key.
    upload(s3_sync_client, s3_bucket, {**OBJECTS, "train/a.bin": 3, "train/z.bin": 4})
    flat = await resolve_snapshot(f"s3://{s3_bucket}/train/", cfg(store_root, recursive=False))
    assert [loc for loc, _, _ in rows(flat)] == [
        f"s3://{s3_bucket}/train/a.bin",
        f"s3://{s3_bucket}/train/z.bin",
    ]
    deep = await resolve_snapshot(f"s3://{s3_bucket}/train/", cfg(store_root))
    assert deep.samples == 7 and deep.class_names is None  # loose files: auto -> none


async def test_resolve_s3_into_s3_store_without_materializing(
    s3_bucket: str, s3_sync_client: Any
) -> None:
    upload(s3_sync_client, s3_bucket, OBJECTS)
    store_root = f"s3://{s3_bucket}/mx8-store"
    lean = await resolve_snapshot(
        f"s3://{s3_bucket}/train/", cfg(store_root, materialize_manifest_bytes=False)
    )
    assert lean.manifest_data is None
    assert lean.store_path == f"s3://{s3_bucket}/mx8-store/by-hash/{lean.manifest_hash}"
    full = await resolve_snapshot(
        f"s3://{s3_bucket}/train/", cfg(store_root, materialize_manifest_bytes=True)
    )
    assert not full.indexed and full.manifest_hash == lean.manifest_hash
    assert full.samples == 5 and full.class_names == ("cat", "cat-x", "dog")
    async with open_manifest_store(store_root) as store:
        assert await store.manifest_len(lean.manifest_hash) == lean.manifest_bytes
        assert await store.read_range(lean.manifest_hash, 0, 17) == b"schema_version=0\n"


async def test_resolve_s3_concurrent_listing_gives_the_sequential_hash_and_summary(
    s3_bucket: str, s3_sync_client: Any, store_root: str, logs: Events
) -> None:
    objects = dict(OBJECTS)
    objects.update({f"train/dog/{i:03d}.jpg": i for i in range(30)})
    objects.update({f"train/ünï cödé/{i}.jpg": i for i in range(5)})
    upload(s3_sync_client, s3_bucket, objects)
    link = f"s3://{s3_bucket}/train/@refresh"
    n = sum(key.startswith("train/") for key in objects)
    for label_mode in ("auto", "none"):
        sequential = await resolve_snapshot(
            link, cfg(store_root, label_mode=label_mode, list_concurrency=1)
        )
        logs.clear()
        concurrent = await resolve_snapshot(
            link, cfg(store_root, label_mode=label_mode, list_concurrency=16)
        )
        assert concurrent.manifest_hash == sequential.manifest_hash
        assert concurrent.manifest_data == sequential.manifest_data
        assert concurrent.class_names == sequential.class_names
        (summary,) = logs.named("snapshot_index_summary")
        assert summary["list_concurrency"] == 16
        assert summary["partitions"] > 1  # the root's folders became ranges
        assert summary["objects_indexed"] == n and summary["keys_per_s"] > 0
    assert sequential.class_names is None
    assert concurrent.samples == n


async def test_resolve_s3_errors_are_distinct(
    s3_bucket: str, s3_sync_client: Any, store_root: str, list_endpoint: ListEndpoint
) -> None:
    upload(s3_sync_client, s3_bucket, OBJECTS)
    with pytest.raises(EmptyDatasetError, match="holds no objects"):
        await resolve_snapshot(f"s3://{s3_bucket}/nothing-here/", cfg(store_root))
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        await resolve_snapshot("s3://mx8-missing-bucket-q/p/", cfg(store_root))
    s3_sync_client.put_object(Bucket=s3_bucket, Key="bad/a\tb.jpg", Body=b"1")
    with pytest.raises(UnsupportedKeyError, match="TAB"):
        await resolve_snapshot(f"s3://{s3_bucket}/bad/", cfg(store_root, label_mode="none"))
    list_endpoint.denied.add("locked")
    with pytest.raises(AccessDeniedError, match="access denied"):
        await resolve_snapshot("s3://locked/p/", cfg(store_root, s3_endpoint_url=list_endpoint.url))


async def test_resolve_s3_non_monotonic_listing_fails_fast_and_external_sort_matches(
    s3_bucket: str, s3_sync_client: Any, store_root: str, list_endpoint: ListEndpoint
) -> None:
    objects = {f"data/{i:04d}/{c}.bin": 1 + i % 13 for i in range(60) for c in "ab"}
    upload(s3_sync_client, s3_bucket, objects)
    in_order = await resolve_snapshot(f"s3://{s3_bucket}/data/", cfg(store_root, label_mode="none"))
    shuffled = list(objects.items())
    random.Random(3).shuffle(shuffled)
    fake = list_endpoint
    fake.buckets[s3_bucket] = shuffled  # same bucket name and keys, listed out of order
    for concurrency in (1, 32):
        with pytest.raises(NonMonotonicListingError, match="MX8_SNAPSHOT_S3_EXTERNAL_SORT"):
            await resolve_snapshot(
                f"s3://{s3_bucket}/data/@refresh",
                cfg(
                    str(Path(store_root) / "x"),
                    label_mode="none",
                    s3_endpoint_url=fake.url,
                    list_concurrency=concurrency,
                ),
            )
    sorted_run = await resolve_snapshot(
        f"s3://{s3_bucket}/data/@refresh",
        cfg(
            str(Path(store_root) / "y"),
            label_mode="none",
            s3_endpoint_url=fake.url,
            external_sort=True,
            spill_keys_per_run=7,
        ),
    )
    assert sorted_run.manifest_hash == in_order.manifest_hash
    assert sorted_run.samples == 120


def test_resolve_s3_eight_concurrent_threads_one_indexer_s3_store(
    s3_bucket: str, s3_sync_client: Any, logs: Events
) -> None:
    upload(s3_sync_client, s3_bucket, {f"p/c{i % 2}/{i:03d}.jpg": i for i in range(1, 40)})
    store_root = f"s3://{s3_bucket}/store"
    results = resolve_in_threads(f"s3://{s3_bucket}/p/", cfg(store_root), join_s=120)
    assert sum(r.indexed for r in results) == 1
    assert len({r.manifest_hash for r in results}) == 1
    assert {r.class_names for r in results} == {("c0", "c1")}
    assert len(logs.named("snapshot_indexer_elected")) == 1


async def test_resolve_s3_counts_objects_whose_key_ends_in_slash_with_a_body_said_once(
    s3_bucket: str, s3_sync_client: Any, store_root: str, logs: Events
) -> None:
    upload(s3_sync_client, s3_bucket, {"t/a.bin": 3, "t/b.bin": 4})
    s3_sync_client.put_object(Bucket=s3_bucket, Key="t/marker/", Body=b"")
    for key in ("t/odd/", "t/sub/odd2/"):
        s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=b"hidden")
    snap = await resolve_snapshot(f"s3://{s3_bucket}/t/", cfg(store_root, label_mode="none"))
    assert snap.samples == 2
    (summary,) = logs.named("snapshot_index_summary")
    assert summary["skipped_objects"] == 2  # the empty folder marker is not counted
    assert "ends in '/'" in summary["skipped_reason"]
    warnings = logs.named("snapshot_objects_skipped")
    assert len(warnings) == 1 and warnings[0]["example"] == "t/odd/"


async def test_resolve_s3_records_the_servers_listing_time_beside_the_manifest(
    s3_bucket: str, s3_sync_client: Any, store_root: str
) -> None:
    upload(s3_sync_client, s3_bucket, OBJECTS)
    head = s3_sync_client.list_objects_v2(Bucket=s3_bucket)["ResponseMetadata"]["HTTPHeaders"]
    server_before = email.utils.parsedate_to_datetime(head["date"]).timestamp()
    first = await resolve_snapshot(f"s3://{s3_bucket}/train/", cfg(store_root))
    assert first.listed_at is not None
    assert server_before <= first.listed_at == int(first.listed_at)  # a whole-second HTTP date
    async with open_manifest_store(store_root) as store:
        meta = await store.get_meta(first.manifest_hash)
    assert meta is not None and meta.listed_at == first.listed_at

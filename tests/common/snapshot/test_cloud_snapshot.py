"""Snapshots of gs:// and az:// prefixes against the emulators: the listers' pages, order,
folder markers and listing time, and ``mx8-snapshot-resolve`` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cloud_emulators import Azurite, GcsEmulator

from mx8_common.errors import BucketNotFoundError
from mx8_common.snapshot.cloud_lister import AzurePageSource, GcsPageSource
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot_sync
from mx8_common.storage.azure_rest import AzureRestClient
from mx8_common.storage.gcs_client import GcsClient

# Byte order puts "Z" < "a-b" < "a.bin" < "a/b" < "é": the manifest keeps exactly that order.
KEYS = ["p/a-b", "p/a.bin", "p/a/b", "p/Z", "p/sub/x", "p/é", "q/outside"]


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest) -> tuple[str, str, Callable[[str, bytes], None]]:
    """(scheme, bucket, put) for a fresh bucket or container holding ``KEYS``."""
    if request.param == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        server: GcsEmulator = request.getfixturevalue("gcs_server")

        def put(key: str, data: bytes) -> None:
            server.put(bucket, key, data)

    else:
        bucket = request.getfixturevalue("az_container")
        azurite: Azurite = request.getfixturevalue("azurite_server")

        def put(key: str, data: bytes) -> None:
            azurite.put(bucket, key, data)

    for key in KEYS:
        put(key, key.encode() * 3)
    return request.param, bucket, put


async def _pages(scheme: str, bucket: str, prefix: str, **kwargs: object) -> tuple[list, object]:
    if scheme == "gs":
        async with GcsClient() as client:
            source: GcsPageSource | AzurePageSource = GcsPageSource(
                client, bucket, prefix, **kwargs
            )
            return [page async for page in source.pages()], source
    async with AzureRestClient() as azure:
        source = AzurePageSource(azure, bucket, prefix, **kwargs)
        return [page async for page in source.pages()], source


def test_cloud_lister_pages_relative_keys_in_byte_order_with_sizes(cloud: tuple) -> None:
    scheme, bucket, _put = cloud
    started = time.time()
    pages, source = asyncio.run(_pages(scheme, bucket, "p/", page_size=2))
    keys = [item for page in pages for item in page]
    expected = sorted(k for k in KEYS if k.startswith("p/"))
    assert keys == [(k[2:], len(k.encode()) * 3) for k in expected]
    assert source.location("a/b") == f"{scheme}://{bucket}/p/a/b"
    assert source.listed_at is not None and source.listed_at >= started - 1


def test_cloud_lister_not_recursive_lists_only_direct_children(cloud: tuple) -> None:
    scheme, bucket, _put = cloud
    pages, _source = asyncio.run(_pages(scheme, bucket, "p/", recursive=False))
    assert [k for page in pages for k, _ in page] == ["Z", "a-b", "a.bin", "é"]


def test_cloud_folders_summary_names_class_folders_and_loose_objects(cloud: tuple) -> None:
    scheme, bucket, _put = cloud

    async def folders() -> object:
        if scheme == "gs":
            async with GcsClient() as client:
                return await GcsPageSource(client, bucket, "p/").folders()
        async with AzureRestClient() as azure:
            return await AzurePageSource(azure, bucket, "p/").folders()

    summary = asyncio.run(folders())
    assert summary.folders == ("a", "sub")
    assert summary.loose_objects == 4


def test_cloud_resolve_records_listing_time_not_before_newest_object(
    cloud: tuple, tmp_path: Path
) -> None:
    scheme, bucket, put = cloud
    put("p/newest", b"n")
    cfg = SnapshotResolverConfig(store_root=str(tmp_path / "store"))
    resolved = resolve_snapshot_sync(f"{scheme}://{bucket}/p/", cfg)
    assert resolved.samples == 7
    assert resolved.listed_at is not None and resolved.listed_at <= time.time() + 1


def test_cloud_resolve_missing_bucket_is_bucket_not_found_naming_the_link(
    cloud: tuple, tmp_path: Path
) -> None:
    scheme, _bucket, _put = cloud
    cfg = SnapshotResolverConfig(store_root=str(tmp_path / "store"))
    with pytest.raises(BucketNotFoundError) as info:
        resolve_snapshot_sync(f"{scheme}://absent-bucket-x/p/", cfg)
    assert f"{scheme}://absent-bucket-x/p/" in str(info.value)


def _cli() -> list[str]:
    exe = shutil.which("mx8-snapshot-resolve")
    return [exe] if exe else [sys.executable, "-m", "mx8_common.snapshot.cli"]


def test_snapshot_cli_resolves_cloud_link_and_json_store_path(cloud: tuple, tmp_path: Path) -> None:
    scheme, bucket, _put = cloud
    store = str(tmp_path / "store")
    result = subprocess.run(
        [*_cli(), f"{scheme}://{bucket}/p/", "--store", store, "--json", "--label-mode", "none"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["objects_indexed"] == 6
    manifest = Path(obj["store_path"]).read_text()
    assert f"{scheme}://{bucket}/p/a-b\t" in manifest


@pytest.mark.parametrize(
    ("link", "env", "fragment"),
    [
        ("gs://absent-bucket-x/p/", {}, "does not exist"),
        ("az://absent-bucket-x/p/", {}, "does not exist"),
        ("az://data/p/", {"AZURE_STORAGE_ACCOUNT_NAME": ""}, "set AZURE_STORAGE_ACCOUNT_NAME"),
        ("az://data/p/", {"AZURE_STORAGE_ACCOUNT_KEY": ""}, "no Azure credentials found"),
        (
            "gs://data/p/",
            {"STORAGE_EMULATOR_HOST": "", "GOOGLE_APPLICATION_CREDENTIALS": "/absent/key.json"},
            "no Google credentials found",
        ),
        ("ftp://host/p/", {}, "unknown scheme 'ftp://'"),
    ],
)
def test_snapshot_cli_cloud_errors_are_one_line_exit_2(
    link: str,
    env: dict[str, str],
    fragment: str,
    gcs_bucket: str,
    az_container: str,
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [*_cli(), link, "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mx8-snapshot-resolve: error: ") and link.rstrip("/") in last
    assert fragment in last and "Traceback" not in result.stderr

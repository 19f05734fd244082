"""gs:// listing over many ``objects.list`` pages (``nextPageToken``) gives what one page
gives. gcp-storage-emulator answers every listing in one page, so the listing goes through
``support.gcs_front``: a real HTTP front that cuts the emulator's answer into GCS pages."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cloud_emulators import GcsEmulator
from support.gcs_front import GcsFront, gcs_front

from mx8_common.snapshot.cloud_lister import GcsPageSource
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot_sync
from mx8_common.storage.gcs_client import GcsClient, GcsSettings

# Two class folders with a nested one, names that sort differently by case and punctuation,
# and a key outside the prefix.
KEYS = (
    [f"p/cat/{i:02d}.jpg" for i in range(7)]
    + [f"p/dog/{name}" for name in ("A.jpg", "a-b.jpg", "a.jpg", "a/b.jpg", "é.jpg", "Z.jpg")]
    + ["q/outside.jpg"]
)
LISTED = sorted(k for k in KEYS if k.startswith("p/"))


@pytest.fixture
def bucket(gcs_bucket: str, gcs_server: GcsEmulator) -> str:
    for key in KEYS:
        gcs_server.put(gcs_bucket, key, key.encode() * 2)
    return gcs_bucket


@pytest.fixture
def front(gcs_server: GcsEmulator) -> Iterator[GcsFront]:
    with gcs_front(gcs_server.endpoint, page_cap=1000) as running:
        yield running


def _list(endpoint: str, bucket: str, **kwargs: object) -> tuple[list[list], GcsPageSource]:
    async def run() -> tuple[list[list], GcsPageSource]:
        async with GcsClient(GcsSettings(emulator_host=endpoint)) as client:
            source = GcsPageSource(client, bucket, "p/", **kwargs)  # type: ignore[arg-type]
            return [page async for page in source.pages()], source

    return asyncio.run(run())


def test_gcs_lister_follows_page_tokens_to_the_keys_of_one_page(
    bucket: str, gcs_server: GcsEmulator, front: GcsFront
) -> None:
    one, one_source = _list(gcs_server.endpoint, bucket)
    many, many_source = _list(front.url, bucket, page_size=4)

    assert len(one) == 1 and one_source.stats.requests == 1
    assert len(many) == math.ceil(len(LISTED) / 4) == many_source.stats.requests
    assert [len(page) for page in many[:-1]] == [4] * (len(many) - 1)
    # Every request asked for the lister's page size; all but the first carried a token.
    assert [asked for asked, _n, _t in front.list_calls] == [4] * len(many)
    assert [had for _a, _n, had in front.list_calls] == [False] + [True] * (len(many) - 1)
    keys = [entry for page in many for entry in page]
    assert keys == [entry for page in one for entry in page]
    assert keys == [(k[2:], len(k.encode()) * 2) for k in LISTED]


def test_gcs_folders_summary_over_pages_matches_one_page(
    bucket: str, gcs_server: GcsEmulator, front: GcsFront
) -> None:
    async def folders(endpoint: str, page_size: int) -> object:
        async with GcsClient(GcsSettings(emulator_host=endpoint)) as client:
            return await GcsPageSource(client, bucket, "p/dog/", page_size=page_size).folders()

    one = asyncio.run(folders(gcs_server.endpoint, 1000))
    many = asyncio.run(folders(front.url, 2))
    assert len(front.list_calls) == 3  # 6 entries (5 objects, folder "a/") in pages of 2
    assert many == one
    assert one.folders == ("a",) and one.loose_objects == 5  # type: ignore[attr-defined]


def test_gcs_resolve_over_pages_gives_the_manifest_of_one_page(
    bucket: str,
    gcs_server: GcsEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    link = f"gs://{bucket}/p/"
    one = resolve_snapshot_sync(
        link,
        SnapshotResolverConfig(store_root=str(tmp_path / "one"), label_mode="imagefolder"),
    )
    # The server caps pages below the lister's 1000: GCS may answer fewer than asked.
    with gcs_front(gcs_server.endpoint, page_cap=3) as paging:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", paging.url)
        many = resolve_snapshot_sync(
            link,
            SnapshotResolverConfig(store_root=str(tmp_path / "many"), label_mode="imagefolder"),
        )
    assert len(paging.list_calls) >= math.ceil(len(LISTED) / 3)
    assert many.indexed and one.indexed
    assert many.manifest_hash == one.manifest_hash
    assert (many.samples, many.class_names) == (one.samples, one.class_names)
    assert one.class_names == ("cat", "dog") and one.samples == len(LISTED)

"""mx8.load over gs:// and az:// links, against real emulators (gcp-storage-emulator, azurite):
every object byte-identical, once per epoch; the snapshot keeps the scheme; bad input is one
line naming the link and what to set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from support.api import epoch_by_location, varied_bytes
from support.cloud_emulators import Azurite, GcsEmulator

import mx8
from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectChangedError,
    ObjectNotFoundError,
)


@dataclass
class CloudDataset:
    link: str
    contents: dict[str, bytes]  # location -> bytes
    put: Any  # (key relative to the prefix, bytes) -> None


_KEYS = [f"{cls}/{i:03d}.bin" for cls in ("ant", "bee") for i in range(15)] + [
    "bee/nested/deep.bin",
    "bee/é ü.bin",  # non-ASCII and a space: quoted on the wire, kept as is in the manifest
]


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest, store_root: str) -> CloudDataset:
    if request.param == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        server: GcsEmulator = request.getfixturevalue("gcs_server")

        def put(key: str, data: bytes) -> None:
            server.put(bucket, "ds/" + key, data)

    else:
        bucket = request.getfixturevalue("az_container")
        azurite: Azurite = request.getfixturevalue("azurite_server")

        def put(key: str, data: bytes) -> None:
            azurite.put(bucket, "ds/" + key, data)

    contents = {}
    for key in _KEYS:
        put(key, varied_bytes(key))
        contents[f"{request.param}://{bucket}/ds/{key}"] = varied_bytes(key)
    return CloudDataset(f"{request.param}://{bucket}/ds/", contents, put)


def test_load_cloud_link_delivers_every_object_byte_identical_once_per_epoch(
    cloud: CloudDataset,
) -> None:
    loader = mx8.load(cloud.link, batch_size=5, shuffle=True, seed=7, label_mode="none")
    assert epoch_by_location(loader) == cloud.contents
    loader.set_epoch(1)
    assert epoch_by_location(loader) == cloud.contents
    assert loader.stats().samples == 2 * len(cloud.contents)  # counted over both epochs


def test_load_cloud_snapshot_locations_keep_the_scheme_in_key_order(cloud: CloudDataset) -> None:
    loader = mx8.load(cloud.link, batch_size=64, label_mode="none")
    locations = [loader.table.location(i) for i in range(len(loader.table))]
    assert locations == sorted(cloud.contents)
    loader.close()


def test_load_cloud_imagefolder_labels_from_class_folders(cloud: CloudDataset) -> None:
    loader = mx8.load(cloud.link, batch_size=8, label_mode="imagefolder")
    assert list(loader.classes) == ["ant", "bee"]
    for batch in loader:
        for sid, label in zip(batch.sample_ids, batch.labels, strict=True):
            cls = loader.table.location(int(sid)).split("/ds/", 1)[1].split("/", 1)[0]
            assert loader.classes[int(label)] == cls


def test_load_cloud_object_rewritten_after_snapshot_is_object_changed(
    cloud: CloudDataset,
) -> None:
    loader = mx8.load(cloud.link, batch_size=64, label_mode="none")
    cloud.put("ant/000.bin", b"a different size now")
    with pytest.raises(ObjectChangedError, match="changed since the snapshot"):
        epoch_by_location(loader)


def test_load_cloud_object_deleted_after_snapshot_is_object_not_found(
    cloud: CloudDataset, request: pytest.FixtureRequest
) -> None:
    loader = mx8.load(cloud.link, batch_size=64, label_mode="none")
    location = f"{cloud.link}ant/000.bin"
    if cloud.link.startswith("gs://"):
        server: GcsEmulator = request.getfixturevalue("gcs_server")
        server.delete(location)
    else:
        azurite: Azurite = request.getfixturevalue("azurite_server")
        azurite.delete(location)
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        epoch_by_location(loader)


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_load_cloud_missing_bucket_is_one_line_naming_link_and_fix(
    scheme: str, request: pytest.FixtureRequest, store_root: str
) -> None:
    request.getfixturevalue("gcs_bucket" if scheme == "gs" else "az_container")
    link = f"{scheme}://no-such-bucket-mx8/ds/"
    with pytest.raises(BucketNotFoundError) as info:
        mx8.load(link)
    text = str(info.value)
    assert "\n" not in text and link in text
    assert ("STORAGE_EMULATOR_HOST" if scheme == "gs" else "AZURE_STORAGE_ACCOUNT_NAME") in text
    assert info.value.__cause__ is None


def test_load_az_without_account_names_what_to_set(
    monkeypatch: pytest.MonkeyPatch, store_root: str
) -> None:
    for key in (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ENDPOINT",
    ):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(AccessDeniedError) as info:
        mx8.load("az://data/train/")
    text = str(info.value)
    assert "\n" not in text and "az://data/train/" in text
    assert "AZURE_STORAGE_ACCOUNT_NAME" in text and "AZURE_STORAGE_CONNECTION_STRING" in text


def test_load_gs_without_credentials_names_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, store_root: str
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    # No ADC anywhere: no key file, no gcloud config, no metadata server probe.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(AccessDeniedError) as info:
        mx8.load("gs://data-bkt/train/")
    text = str(info.value)
    assert "\n" not in text and "gs://data-bkt/train/" in text
    assert "GOOGLE_APPLICATION_CREDENTIALS" in text


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_data_loader_cloud_workers_yield_each_object_once(
    cloud: CloudDataset, context: str
) -> None:
    torch = pytest.importorskip("torch")
    ds = mx8.DataLoader(cloud.link, batch_size=6, label_mode="none")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=context, timeout=120
    )
    ids = [int(i) for batch in loader for i in batch.sample_ids]
    assert sorted(ids) == list(range(len(cloud.contents)))


def test_load_az_with_only_a_connection_string(
    az_container: str, azurite_server: Azurite, store_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = {}
    for key in _KEYS[:6]:
        azurite_server.put(az_container, "cs/" + key, varied_bytes(key))
        contents[f"az://{az_container}/cs/{key}"] = varied_bytes(key)
    env = azurite_server.env
    for key in env:
        monkeypatch.delenv(key)
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={env['AZURE_STORAGE_ACCOUNT_NAME']};"
        f"AccountKey={env['AZURE_STORAGE_ACCOUNT_KEY']};"
        f"BlobEndpoint={env['AZURE_STORAGE_ENDPOINT']};",
    )
    loader = mx8.load(f"az://{az_container}/cs/", batch_size=4, label_mode="none")
    assert epoch_by_location(loader) == contents

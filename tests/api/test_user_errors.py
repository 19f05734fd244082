"""A user mistake reaches Python as one typed mx8 error: no chain, no secondary error.

The message already names the problem and the fix; a chain of internals (a botocore
error, a FileNotFoundError, asyncio's "no running event loop") only buries it.
"""

from __future__ import annotations

import gc
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.api import collect, make_local_dataset

import mx8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_error(call: Callable[[], Any], kind: type[BaseException]) -> tuple[BaseException, str]:
    """Run ``call``; it must raise ``kind`` alone: one exception in the printed traceback."""
    with pytest.raises(kind) as info:
        call()
    err = info.value
    text = "".join(traceback.format_exception(err))
    assert text.count("Traceback (most recent call last)") == 1, text
    assert "During handling of the above exception" not in text, text
    assert "direct cause of the following exception" not in text, text
    assert "no running event loop" not in text, text
    return err, text


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Errors raised while cleaning up (``__del__``, generator close) that Python swallows."""
    seen: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", seen.append)
    return seen


@pytest.mark.parametrize(
    "entry",
    [
        lambda link: mx8.load(link),
        lambda link: mx8.DataLoader(link),
        lambda link: mx8.resolve_manifest_hash(link),
        lambda link: mx8.vision.ImageFolderLoader(link),
    ],
    ids=["load", "DataLoader", "resolve_manifest_hash", "ImageFolderLoader"],
)
def test_missing_folder_is_one_error(
    entry: Callable[[str], Any], tmp_path: Path, store_root: str, unraisable: list[Any]
) -> None:
    missing = str(tmp_path / "no-such-folder")
    err, _ = _one_error(lambda: entry(missing), mx8.ObjectNotFoundError)
    assert missing in str(err)
    gc.collect()
    assert unraisable == []


def test_bad_sha256_pin_is_one_error(tmp_path: Path, store_root: str) -> None:
    make_local_dataset(tmp_path / "d", per_class=1)
    err, _ = _one_error(lambda: mx8.load(f"{tmp_path / 'd'}@sha256:{'0' * 64}"), mx8.StoreError)
    assert "has no snapshot" in str(err)
    _one_error(lambda: mx8.load(f"{tmp_path / 'd'}@sha256:abc"), mx8.LinkError)


def test_misspelt_link_is_one_error(store_root: str) -> None:
    err, _ = _one_error(lambda: mx8.load("s3:/bucket/x"), mx8.LinkError)
    assert "did you mean 's3://bucket/x'" in str(err)


def test_missing_bucket_is_one_error(s3_env: Any, store_root: str, unraisable: list[Any]) -> None:
    err, _ = _one_error(lambda: mx8.load("s3://mx8-no-such-bucket-q7/x/"), mx8.StorageError)
    assert "bucket" in str(err) and "does not exist" in str(err)
    gc.collect()
    assert unraisable == []


def test_refused_s3_endpoint_is_one_error(
    s3_env: Any, store_root: str, monkeypatch: pytest.MonkeyPatch, unraisable: list[Any]
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MX8_S3_ENDPOINT_URL", endpoint)
    err, _ = _one_error(lambda: mx8.load("s3://bucket/x/"), mx8.StorageError)
    assert "cannot connect" in str(err) and "MX8_S3_ENDPOINT_URL" in str(err)
    gc.collect()
    assert unraisable == []


def test_object_deleted_after_the_snapshot_is_one_error_while_iterating(
    tmp_path: Path, store_root: str, unraisable: list[Any]
) -> None:
    files = make_local_dataset(tmp_path / "d", per_class=2)
    loader = mx8.load(str(tmp_path / "d"), batch_size=2)
    gone = sorted(files)[2]
    Path(gone).unlink()
    err, _ = _one_error(lambda: collect(loader), mx8.ObjectNotFoundError)
    assert gone in str(err)
    gc.collect()
    assert unraisable == []

"""The test and benchmark S3 server starter: a server that dies at start says so at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mx8_common.testing import local_s3


def test_local_s3_server_that_exits_before_answering_fails_at_once_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'weed: flag provided but not defined' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(local_s3, "seaweedfs_binary", lambda: str(fake))
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match=r"exited \(3\) before answering") as info,
        local_s3.local_s3_server(None, kinds=("seaweedfs",)),
    ):
        pass
    assert "flag provided but not defined" in str(info.value)
    assert time.monotonic() - started < 20  # not the 60 s answer timeout


def test_local_s3_server_unknown_kind_names_the_choices() -> None:
    with (
        pytest.raises(ValueError, match=r"minoi.*minio.*seaweedfs.*moto"),
        local_s3.local_s3_server(None, kinds=("minoi",)),
    ):
        pass

"""Fixtures of the snapshot tests: a manifest store of each kind."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["fs", "s3"])
def store_root_any(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store root on the filesystem, then in a fresh bucket of the S3-protocol server."""
    if request.param == "fs":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/store"

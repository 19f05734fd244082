"""Fixtures of the coordinator tests: real manifest files and real servers on port 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.manifests import write_manifest


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m", 1000).path

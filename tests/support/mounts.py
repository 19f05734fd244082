"""Real small or read-only filesystems for disk-fault tests (tmpfs mounts, root only)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["tmpfs"]


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` with ``options`` (``size=64k``, ``ro``); skips the test
    where mounting is not allowed, unmounts on exit."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (a real full or read-only disk)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)

"""Helpers of the coordinator tests: real manifest files, polling."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mx8_common.manifest_format import ManifestWriter

__all__ = ["assert_eventually", "write_manifest"]


def write_manifest(directory: Path, samples: int, *, location_pad: int = 0) -> Path:
    """A canonical manifest of ``samples`` rows at ``directory/manifest.tsv``."""
    pad = "x" * location_pad
    with ManifestWriter(directory) as writer:
        for i in range(samples):
            writer.write(f"s3://bucket/{pad}obj-{i:08d}.bin", byte_length=100 + i % 7)
        written = writer.finish()
    path = directory / "manifest.tsv"
    os.replace(written.path, path)
    return path


async def assert_eventually(
    check: Callable[[], Any], *, timeout_s: float = 10.0, interval_s: float = 0.02
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)

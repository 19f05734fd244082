"""Helpers of the trainer-API tests: small real datasets on disk and in S3."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "collect",
    "engine_threads",
    "flat",
    "make_local_dataset",
    "make_s3_dataset",
    "sample_bytes",
]


def sample_bytes(key: str) -> bytes:
    """The content of the object at ``key``: names its key, with a key-dependent length."""
    return (f"{key}\n" * (1 + len(key) % 5)).encode()


def _keys(classes: Iterable[str], per_class: int) -> list[str]:
    return [f"{c}/{i:03d}.bin" for c in classes for i in range(per_class)]


def make_local_dataset(
    root: Path, *, classes: Iterable[str] = ("ant", "bee", "cat"), per_class: int = 17
) -> dict[str, bytes]:
    """Files ``root/<class>/<nnn>.bin``; returns location -> content."""
    out: dict[str, bytes] = {}
    for key in _keys(classes, per_class):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample_bytes(key))
        out[str(path)] = sample_bytes(key)
    return out


def make_s3_dataset(
    client: Any,
    bucket: str,
    prefix: str,
    *,
    classes: Iterable[str] = ("ant", "bee"),
    per_class: int = 20,
) -> dict[str, bytes]:
    """Objects ``s3://bucket/prefix<class>/<nnn>.bin``; returns location -> content."""
    out: dict[str, bytes] = {}
    for key in _keys(classes, per_class):
        client.put_object(Bucket=bucket, Key=prefix + key, Body=sample_bytes(key))
        out[f"s3://{bucket}/{prefix}{key}"] = sample_bytes(key)
    return out


def collect(batches: Iterable[Any]) -> list[list[int]]:
    """Sample ids of each batch, in order."""
    return [[int(i) for i in b.sample_ids] for b in batches]


def flat(batches: Iterable[Iterable[int]]) -> list[int]:
    """The ids of ``collect()``-style batches as one list."""
    return [i for b in batches for i in b]


def engine_threads() -> list[threading.Thread]:
    """Live background fetch-engine threads of this process."""
    return [t for t in threading.enumerate() if t.name == "mx8-engine" and t.is_alive()]

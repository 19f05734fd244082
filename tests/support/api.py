"""Helpers of the trainer-API tests: small real datasets on disk and in S3."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "collect",
    "engine_threads",
    "epoch_by_location",
    "flat",
    "make_local_dataset",
    "make_s3_dataset",
    "sample_bytes",
    "varied_bytes",
]


def sample_bytes(key: str) -> bytes:
    """The content of the object at ``key``: names its key, with a key-dependent length."""
    return (f"{key}\n" * (1 + len(key) % 5)).encode()


def varied_bytes(key: str) -> bytes:
    """1 byte to ~70 KiB, unique per key: a mixed-up or truncated object cannot pass."""
    n = 1 + int(hashlib.sha256(key.encode()).hexdigest()[:4], 16)
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


def epoch_by_location(loader: Any) -> dict[str, bytes]:
    """One epoch of ``loader`` as location -> bytes; fails on a sample delivered twice."""
    seen: dict[str, bytes] = {}
    for batch in loader:
        for sid, payload in zip(batch.sample_ids, batch.payloads, strict=True):
            location = loader.table.location(int(sid))
            assert location not in seen, f"{location} delivered twice in one epoch"
            seen[location] = bytes(payload)
    return seen


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

"""The tools users would pick instead of mx8, and mx8's own side, each timed end to end.

Every function reads every sample once and returns samples per second. Timing includes
opening clients and starting workers, because every epoch pays for them too; snapshot
resolution is outside mx8's timing (it happens once per dataset, not per epoch, and has
its own cases).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from mx8_common.storage.s3_client import S3Settings, open_s3_client

__all__ = [
    "S3TORCH_NOTE",
    "S3TORCH_SKIP_REASON",
    "dataloader_boto3_rate",
    "dataloader_files_rate",
    "mx8_load_rate",
    "raw_concurrent_gets_rate",
    "s3torchconnector_rate",
]

try:
    import s3torchconnector  # noqa: F401

    S3TORCH_SKIP_REASON = ""
except ImportError as _exc:  # an sdist needing a Rust/C++ build may not install
    S3TORCH_SKIP_REASON = (
        f"s3torchconnector is not installed here ({_exc}); bash scripts/install_bench.sh"
    )


def _list_collate(batch: list[Any]) -> list[Any]:
    """Keep a batch of bytes as a list (the default collate cannot stack bytes)."""
    return batch


def mx8_load_rate(link: str, *, concurrency: int, batch_size: int = 32, expect: int) -> float:
    """``mx8.load(link)`` over one epoch, in samples/s (endpoint from the environment)."""
    import mx8

    loader = mx8.load(link, batch_size=batch_size, fetch_concurrency=concurrency)
    with loader:
        t0 = time.perf_counter()
        samples = sum(len(batch) for batch in loader)
        seconds = time.perf_counter() - t0
    assert samples == expect, (samples, expect)
    return samples / seconds


async def _gets(bucket: str, keys: Sequence[str], concurrency: int, endpoint: str) -> int:
    settings = S3Settings.from_env(endpoint)
    settings = S3Settings(
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        max_pool_connections=concurrency,
    )
    sem = asyncio.Semaphore(concurrency)
    async with open_s3_client(settings) as client:

        async def get(key: str) -> int:
            async with sem:
                resp = await client.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    return len(await body.read())

        sizes = await asyncio.gather(*(get(k) for k in keys))
    return len(sizes)


def raw_concurrent_gets_rate(
    bucket: str, keys: Sequence[str], *, concurrency: int, endpoint: str
) -> float:
    """aioboto3 GETs of every key, ``concurrency`` at a time, one client: samples/s."""
    import uvloop

    t0 = time.perf_counter()
    n = uvloop.run(_gets(bucket, keys, concurrency, endpoint))
    seconds = time.perf_counter() - t0
    assert n == len(keys)
    return n / seconds


class _Boto3Dataset:
    """What a user writes: ``get_object`` per sample, one boto3 client per worker."""

    def __init__(self, bucket: str, keys: Sequence[str], endpoint: str) -> None:
        self.bucket, self.keys, self.endpoint = bucket, list(keys), endpoint
        self._client: Any = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        if self._client is None or self._pid != os.getpid():
            import boto3

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name="us-east-1"
            )
            self._pid = os.getpid()
        data: bytes = self._client.get_object(Bucket=self.bucket, Key=self.keys[i])["Body"].read()
        return data


class _FileDataset:
    """What a user writes for a local folder: open and read the file per sample."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        with open(self.paths[i], "rb") as f:
            return f.read()


def _dataloader_rate(dataset: Any, batch_size: int, num_workers: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_list_collate
    )
    t0 = time.perf_counter()
    samples = sum(len(b) for b in loader)
    seconds = time.perf_counter() - t0
    assert samples == len(dataset)
    return samples / seconds


def dataloader_boto3_rate(
    bucket: str, keys: Sequence[str], *, endpoint: str, batch_size: int = 32, num_workers: int = 2
) -> float:
    """``torch DataLoader(num_workers=2)`` over boto3 ``get_object`` per sample: samples/s."""
    return _dataloader_rate(_Boto3Dataset(bucket, keys, endpoint), batch_size, num_workers)


def dataloader_files_rate(
    paths: Sequence[str], *, batch_size: int = 32, num_workers: int = 2
) -> float:
    """``torch DataLoader(num_workers=2)`` reading one local file per sample: samples/s."""
    return _dataloader_rate(_FileDataset(paths), batch_size, num_workers)


#: The note every s3torchconnector row carries.
S3TORCH_NOTE = "s3torchconnector lists the prefix each epoch: its time includes the listing"


def s3torchconnector_rate(uri_prefix: str, *, endpoint: str, expect: int) -> float:
    """``s3torchconnector.S3IterableDataset.from_prefix`` read in one process: samples/s."""
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    t0 = time.perf_counter()
    dataset = S3IterableDataset.from_prefix(
        uri_prefix,
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint=endpoint,
        s3client_config=S3ClientConfig(force_path_style=True),
    )
    samples = sum(1 for obj in dataset if obj.read() is not None)
    seconds = time.perf_counter() - t0
    assert samples == expect, (samples, expect)
    return samples / seconds

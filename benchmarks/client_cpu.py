"""Client CPU per sample of raw concurrent GETs through each S3 client, and of ``mx8.load``.

Each function reads every key once with ``concurrency`` GETs in flight and returns
``(samples/s, client CPU ms per sample)``. CPU is this process's user + system time from
``getrusage`` (every thread: the native clients' I/O threads, mx8's engine thread), so the
local S3 server, a child process, is not in it. The clients:

* ``obstore``: ``obstore.get_async`` then ``bytes_async`` on one store (the native client
  ``ObjectReader`` uses): the usual GET, two futures per object;
* ``obstore-range``: ``obstore.get_range_async`` of each object's known size, one future per
  object: the call ``ObjectReader`` makes for a sample whose size the manifest gives;
* ``crt``: the AWS CRT client inside ``s3torchconnectorclient`` (``MountpointS3Client``),
  a window of ``concurrency`` streams opened ahead and drained in order, in one thread;
* ``lean``: mx8's botocore path (``S3Getter``: botocore signs, aiohttp sends);
* ``aioboto3``: one aiobotocore client, ``get_object`` and a whole-body read.
"""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CLIENTS", "crt_skip_reason", "mx8_load_cpu", "raw_gets_cpu", "settle"]

CLIENTS = ("obstore", "obstore-range", "crt", "lean", "aioboto3")


def crt_skip_reason() -> str:
    """Why the CRT client cannot be measured here ("" when it can)."""
    try:
        import s3torchconnectorclient  # noqa: F401
    except ImportError as exc:
        return f"s3torchconnectorclient is not installed ({exc}); bash scripts/install_bench.sh"
    return ""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settle(*, quiet_ms: float = 1.0, step_s: float = 0.05, max_s: float = 3.0) -> None:
    """Wait until this process is idle: less than ``quiet_ms`` of CPU in ``step_s``.

    A client's threads keep working after its last GET (the CRT client's event loop
    closes connections, a runtime parks its workers); without this that work is charged
    to whichever side is measured next (measured: ~0.03-0.05 ms per sample of the CRT's
    event-loop thread inside the next side's run).
    """
    deadline = time.perf_counter() + max_s
    while time.perf_counter() < deadline:
        cpu0 = _cpu_s()
        time.sleep(step_s)
        if (_cpu_s() - cpu0) * 1000 < quiet_ms:
            return


def _measure(run: Callable[[], int], expect: int) -> tuple[float, float]:
    settle()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    n = run()
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    assert n == expect, (n, expect)
    return n / seconds, cpu * 1000 / n


async def _obstore(bucket: str, keys: Sequence[str], concurrency: int, size: int = 0) -> int:
    """``get_async`` then ``bytes_async`` per key; with ``size``, one ``get_range_async``."""
    import obstore

    from mx8_common.storage.native_store import native_store

    store = native_store("s3", bucket)
    sem = asyncio.Semaphore(concurrency)

    async def get(key: str) -> int:
        async with sem:
            if size:
                return len(await obstore.get_range_async(store, key, start=0, end=size))
            result = await obstore.get_async(store, key)
            return len(await result.bytes_async())

    return len(await asyncio.gather(*(get(k) for k in keys)))


async def _lean(bucket: str, keys: Sequence[str], concurrency: int) -> int:
    from mx8_common.storage.s3_get import S3Getter

    sem = asyncio.Semaphore(concurrency)
    async with S3Getter() as getter:

        async def get(key: str) -> int:
            async with sem, getter.get(bucket, key, None) as obj:
                return len(await obj.read())

        return len(await asyncio.gather(*(get(k) for k in keys)))


async def _aioboto3(bucket: str, keys: Sequence[str], concurrency: int) -> int:
    from mx8_common.storage.s3_client import S3Settings, open_s3_client

    settings = S3Settings.from_env()
    settings = S3Settings(
        endpoint_url=settings.endpoint_url, region=settings.region, max_pool_connections=64
    )
    sem = asyncio.Semaphore(concurrency)
    async with open_s3_client(settings, reuse_models=True) as client:

        async def get(key: str) -> int:
            async with sem:
                resp = await client.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    return len(await body.read())

        return len(await asyncio.gather(*(get(k) for k in keys)))


_crt_client: Any = None


def _crt(bucket: str, keys: Sequence[str], concurrency: int) -> int:
    global _crt_client
    from s3torchconnectorclient._mountpoint_s3_client import MountpointS3Client

    if _crt_client is None:
        _crt_client = MountpointS3Client(
            os.environ.get("AWS_REGION", "us-east-1"),
            endpoint=os.environ["MX8_S3_ENDPOINT_URL"],
            force_path_style=True,
        )
    window: collections.deque[Any] = collections.deque()
    n = 0
    for key in keys:
        window.append(_crt_client.get_object(bucket, key))
        if len(window) >= concurrency:
            n += len(b"".join(window.popleft())) > 0
    while window:
        n += len(b"".join(window.popleft())) > 0
    return n


def raw_gets_cpu(
    client: str, bucket: str, keys: Sequence[str], *, concurrency: int, size: int = 0
) -> tuple[float, float]:
    """``(samples/s, CPU ms/sample)`` of GETs of every key through ``client`` (every
    object ``size`` bytes: ``obstore-range`` asks for exactly that)."""
    import uvloop

    if client == "crt":
        return _measure(lambda: _crt(bucket, keys, concurrency), len(keys))
    if client == "obstore-range":
        if size <= 0:
            raise ValueError("obstore-range GETs need the objects' size")
        return _measure(lambda: uvloop.run(_obstore(bucket, keys, concurrency, size)), len(keys))
    coro = {"obstore": _obstore, "lean": _lean, "aioboto3": _aioboto3}[client]
    return _measure(lambda: uvloop.run(coro(bucket, keys, concurrency)), len(keys))


def mx8_load_cpu(
    link: str, *, concurrency: int, expect: int, batch_size: int = 32, native: bool = True
) -> tuple[float, float]:
    """``(samples/s, CPU ms/sample)`` of one epoch of ``mx8.load`` (the whole loader:
    engine thread, batching, the trainer-side iteration); the snapshot is resolved first,
    outside the measurement. ``native=False``: GETs through the botocore path."""
    import mx8

    old = os.environ.get("MX8_FETCH_NATIVE_S3_GET")
    os.environ["MX8_FETCH_NATIVE_S3_GET"] = "1" if native else "0"
    try:
        loader = mx8.load(link, batch_size=batch_size, fetch_concurrency=concurrency)
        with loader:
            return _measure(lambda: sum(len(batch) for batch in loader), expect)
    finally:
        if old is None:
            os.environ.pop("MX8_FETCH_NATIVE_S3_GET", None)
        else:
            os.environ["MX8_FETCH_NATIVE_S3_GET"] = old

"""What every case shares: the run's mode, a scratch folder, the S3 endpoint, helpers.

The S3 endpoint is ``MX8_BENCH_S3_ENDPOINT`` when given (credentials from the usual AWS
variables), else a local S3-protocol server started on first use and stopped at the end
of the run: ``--s3-server`` (``S3_SERVERS``) picks it. SeaweedFS, when installed, is the
default: moto serves from one Python core at ~2 ms of CPU per GET, so against it every
client reads at the same rate and the S3 rows measure moto. Its variables are put into
``os.environ`` so mx8, boto3 and child processes all talk to the same endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mx8_common.storage.s3_client import S3Settings, sync_s3_client
from mx8_common.testing.local_s3 import SERVER_KINDS, LocalS3, local_s3_server

__all__ = [
    "S3_SERVERS",
    "BenchEnv",
    "RssSampler",
    "ServerCpu",
    "mib",
    "run_child",
    "s3_object_keys",
]

MiB = 1 << 20

#: ``--s3-server`` choice -> the local servers tried, in order (the last always starts).
S3_SERVERS = {
    "auto": SERVER_KINDS,
    "seaweedfs": ("seaweedfs",),
    "moto": ("moto",),
}


class RssSampler:
    """Peak RSS of this process while the block runs, sampled by a thread (psutil)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_rss = 0
        self.peak_rss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak_rss - self.start_rss


class ServerCpu:
    """How busy the local S3 server was while the block ran: its CPU seconds per second.

    Shows when a case measures the server, not the clients: moto serves from one Python
    process, so near 1.0 (one core) no client can go faster; SeaweedFS may use every core.
    ``busy`` stays None for a server that is not a child of this run
    (``MX8_BENCH_S3_ENDPOINT``).
    """

    def __init__(self, pid: int | None) -> None:
        self._proc = psutil.Process(pid) if pid is not None else None
        self.busy: float | None = None

    def _cpu(self) -> float:
        assert self._proc is not None
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def __enter__(self) -> ServerCpu:
        if self._proc is not None:
            self._t0, self._c0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self.busy = (self._cpu() - self._c0) / max(time.perf_counter() - self._t0, 1e-9)


def run_child(module: str, args: Sequence[str], *, timeout_s: float = 600) -> dict[str, Any]:
    """Run ``python -m module args`` (its own RSS, its own cores); its last stdout line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        timeout=timeout_s,
        env={**os.environ, "MX8_LOG_FORMAT": "json"},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {module} {' '.join(args)} failed ({proc.returncode}):\n"
            + proc.stderr.decode(errors="replace")[-3000:]
        )
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def s3_object_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}obj-{i:06d}.bin" for i in range(count)]


@dataclass
class BenchEnv:
    """One benchmark run: ``quick`` sizes or full sizes, and shared resources."""

    quick: bool
    repeats: int
    workdir: Path
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _s3: LocalS3 | None = None
    _client: Any = None
    _datasets: dict[tuple[int, int], tuple[str, str, list[str]]] = field(default_factory=dict)
    s3_server: str = "auto"

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, *, quick: bool, repeats: int | None = None, s3_server: str = "auto"
    ) -> Iterator[BenchEnv]:
        with tempfile.TemporaryDirectory(prefix="mx8-bench-") as tmp:
            env = cls(
                quick=quick,
                repeats=repeats or (1 if quick else 3),
                workdir=Path(tmp),
                s3_server=s3_server,
            )
            # Snapshots go to this run's scratch store, never the user's ~/.mx8.
            os.environ["MX8_MANIFEST_STORE_ROOT"] = str(Path(tmp) / "store")
            os.environ["MX8_SNAPSHOT_PROGRESS"] = "0"
            # mx8's info events would interleave with the table; warnings still show.
            os.environ.setdefault("MX8_LOG_LEVEL", "warning")
            with env._stack:
                yield env

    def size(self, quick: int, full: int) -> int:
        """The quick or the full size of something."""
        return quick if self.quick else full

    def scratch(self, name: str) -> Path:
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    # -- S3 ----------------------------------------------------------------------------

    @property
    def s3(self) -> LocalS3:
        if self._s3 is None:
            kinds = S3_SERVERS[self.s3_server]
            s3 = self._stack.enter_context(local_s3_server("MX8_BENCH_S3_ENDPOINT", kinds))
            for key, value in s3.env.items():
                if s3.kind == "external":
                    os.environ.setdefault(key, value)  # the caller's credentials win
                else:
                    os.environ[key] = value
            os.environ["MX8_S3_ENDPOINT_URL"] = s3.endpoint_url
            self._s3 = s3
        return self._s3

    @property
    def s3_client(self) -> Any:
        """A boto3 client of the endpoint (uploads and setup; not timed)."""
        if self._client is None:
            self._client = sync_s3_client(S3Settings.from_env(self.s3.endpoint_url))
        return self._client

    def s3_settings(self, endpoint_url: str | None = None) -> S3Settings:
        return S3Settings.from_env(endpoint_url or self.s3.endpoint_url)

    def new_bucket(self) -> str:
        name = f"mx8-bench-{uuid.uuid4().hex[:10]}"
        self.s3_client.create_bucket(Bucket=name)
        return name

    def upload(self, bucket: str, keys: Sequence[str], payload_size: int) -> None:
        """Put ``keys`` with ``payload_size`` distinct bytes each, 16 at a time."""
        client = self.s3_client

        def put(i_key: tuple[int, str]) -> None:
            i, key = i_key
            body = i.to_bytes(8, "little") * (payload_size // 8) + b"x" * (payload_size % 8)
            client.put_object(Bucket=bucket, Key=key, Body=body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, enumerate(keys)))

    def s3_dataset(self, count: int, payload_size: int) -> tuple[str, str, list[str]]:
        """``(bucket, prefix, keys)`` of ``count`` objects of ``payload_size`` bytes.

        Made once per run and shared by the cases that read it (uploads to moto are slow).
        """
        spec = (count, payload_size)
        if spec not in self._datasets:
            bucket, prefix = self.new_bucket(), f"d{payload_size}/"
            keys = s3_object_keys(prefix, count)
            self.upload(bucket, keys, payload_size)
            self._datasets[spec] = (bucket, prefix, keys)
        return self._datasets[spec]

    def write_files(self, directory: Path, count: int, payload_size: int) -> list[Path]:
        """``count`` local files of ``payload_size`` bytes under ``directory``."""
        paths = []
        for i in range(count):
            path = directory / f"obj-{i:06d}.bin"
            path.write_bytes(i.to_bytes(8, "little") * (payload_size // 8))
            paths.append(path)
        return paths


def mib(n: int) -> float:
    return n / MiB

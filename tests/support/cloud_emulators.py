"""Real GCS and Azure Blob emulators on 127.0.0.1 for tests: ``gcp-storage-emulator`` (PyPI)
and ``azurite`` (npm, installed by ``npm ci`` in tests/emulators, which scripts/bootstrap.sh
runs). Each runs as a subprocess on a free port, in memory, and is always stopped on exit.

``emulator_unavailable(reason)`` is raised when one cannot start; the fixtures turn it into a
skip that names the reason.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mx8_common.testing.local_s3 import free_port, stop_process

__all__ = ["Azurite", "EmulatorUnavailable", "GcsEmulator", "azurite", "gcs_emulator"]

EMULATORS_DIR = Path(__file__).resolve().parent.parent / "emulators"
#: Azurite's documented development account.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class EmulatorUnavailable(RuntimeError):
    """An emulator could not be started here (the message says why)."""


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorUnavailable(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.05)
    raise EmulatorUnavailable(f"{url} did not answer within {timeout_s}s")


@dataclass(frozen=True)
class GcsEmulator:
    """A running gcp-storage-emulator and the env mx8 needs to use it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=mx8-test",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).close()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        req = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{query}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).close()

    def delete(self, location: str) -> None:
        bucket, _, key = location[len("gs://") :].partition("/")
        name = urllib.parse.quote(key, safe="")
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b/{bucket}/o/{name}", method="DELETE"
        )
        urllib.request.urlopen(req, timeout=10).close()


@contextlib.contextmanager
def gcs_emulator() -> Iterator[GcsEmulator]:
    """Start gcp-storage-emulator (in memory) on a free loopback port."""
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    exe = exe or shutil.which("gcp-storage-emulator")
    if exe is None:
        raise EmulatorUnavailable("gcp-storage-emulator is not installed (pip install -e .[test])")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", proc, 30)
        yield GcsEmulator(url)
    finally:
        stop_process(proc)


def _shared_key(method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> str:
    """Azure Storage SharedKey signature of a body-less request (what azurite checks)."""
    ms = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
    resource = f"/{AZURITE_ACCOUNT}{path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
    to_sign = f"{method}\n" + "\n" * 11 + ms + resource
    digest = hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()
    return f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Azurite:
    """A running azurite blob service and the env mx8 needs to use it."""

    endpoint: str  # http://127.0.0.1:<port>/devstoreaccount1

    @property
    def env(self) -> dict[str, str]:
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
        }

    def create_container(self, name: str) -> None:
        path = f"/{AZURITE_ACCOUNT}/{name}"
        query = {"restype": "container"}
        headers = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": "2021-08-06",
        }
        headers["Authorization"] = _shared_key("PUT", path, query, headers)
        origin = self.endpoint.rsplit("/", 1)[0]
        req = urllib.request.Request(
            f"{origin}{path}?restype=container", headers=headers, method="PUT"
        )
        urllib.request.urlopen(req, timeout=10).close()

    def _store(self, container: str) -> Any:
        from obstore.store import AzureStore

        return AzureStore(
            container,
            config={
                "account_name": AZURITE_ACCOUNT,
                "account_key": AZURITE_KEY,
                "endpoint": self.endpoint,
            },
            client_options={"allow_http": True},
        )

    def put(self, container: str, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self._store(container), key, data)

    def delete(self, location: str) -> None:
        import obstore

        container, _, key = location[len("az://") :].partition("/")
        obstore.delete(self._store(container), key)


def azurite_command() -> list[str]:
    """The azurite blob service's command line, installed under tests/emulators."""
    exe = EMULATORS_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists():
        raise EmulatorUnavailable(
            f"azurite is not installed: run `npm ci` in {EMULATORS_DIR} "
            "(scripts/bootstrap.sh does when npm is on PATH)"
        )
    if shutil.which("node") is None:
        raise EmulatorUnavailable("azurite needs node on PATH")
    return [str(exe)]


@contextlib.contextmanager
def azurite() -> Iterator[Azurite]:
    """Start azurite's blob service (in memory) on a free loopback port."""
    cmd = azurite_command()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mx8-azurite-") as workdir:
        proc = subprocess.Popen(
            [
                *cmd,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
        try:
            origin = f"http://127.0.0.1:{port}"
            _wait_http(origin + f"/{AZURITE_ACCOUNT}?comp=list", proc, 60)
            yield Azurite(f"{origin}/{AZURITE_ACCOUNT}")
        finally:
            stop_process(proc)

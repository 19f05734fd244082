"""The coordinator's status/metrics port as a process: loopback unless a host is named,
the status behind the token when one is set (``/metrics`` open), a warning when exposed
without one, and IPv6 any-address (``[::]:PORT``) binding for gRPC and HTTP alike."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.agent import DaemonProcess
from support.manifests import write_local_dataset

from mx8_common.config_fields import http_host_port
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


def get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def coordinator(
    daemons: list[DaemonProcess], tmp_path: Path, listen: str, metrics: str, **env: str
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_coordinator",
        [
            "--dataset",
            str(write_local_dataset(tmp_path / "ds", 20)),
            "--listen",
            listen,
            "--metrics",
            metrics,
        ],
        tmp_path / "c.log",
        env=env,
    )
    daemons.append(proc)
    return proc


def test_metrics_bare_port_means_loopback_only() -> None:
    assert http_host_port("9400", "--metrics") == ("127.0.0.1", 9400)
    assert http_host_port("[::]:9400", "--metrics") == ("::", 9400)


async def test_status_needs_the_token_and_metrics_stay_open(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    proc = coordinator(daemons, tmp_path, f"127.0.0.1:{free_port()}", "0", MX8_AUTH_TOKEN=TOKEN)
    port = (await proc.wait_event("coordinator_serving"))["metrics_port"]
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/api/status") == 401
    assert get(f"{base}/") == 401
    assert get(f"{base}/api/status", "wrong") == 401
    assert get(f"{base}/api/status", TOKEN) == 200
    assert get(f"{base}/", TOKEN) == 200
    assert get(f"{base}/metrics") == 200
    assert proc.event("http_exposed_without_auth") is None


async def test_ipv6_any_address_binds_grpc_and_http_and_warns_without_a_token(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    proc = coordinator(daemons, tmp_path, f"[::]:{free_port()}", "[::]:0")
    port = (await proc.wait_event("coordinator_serving"))["metrics_port"]
    assert get(f"http://[::1]:{port}/api/status") == 200
    assert get(f"http://127.0.0.1:{port}/metrics") == 200  # dual stack
    warning = proc.event("http_exposed_without_auth")
    assert warning is not None and "MX8_AUTH_TOKEN" in warning["message"]

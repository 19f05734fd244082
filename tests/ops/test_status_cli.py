"""``mx8 status`` and ``mx8 health`` against a real coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest
from support.ops import drive_partial_job

from mx8.cli import main
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_coordinator.server import Coordinator

StartCoordinator = Callable[..., Awaitable[Coordinator]]

# Fields that depend on the moment they are read.
_CLOCK_FIELDS = {"generated_unix_ms", "samples_per_second"}


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


async def run_cli(argv: list[str]) -> tuple[int, str, str]:
    # The CLI runs its own event loop; the coordinator needs this one free.
    return await asyncio.to_thread(_run_cli, argv)


def _stable(status: dict) -> dict:
    out = {k: v for k, v in status.items() if k not in _CLOCK_FIELDS}
    out["nodes"] = [
        {k: v for k, v in n.items() if k not in ("last_heartbeat_age_ms",)} for n in status["nodes"]
    ]
    out["live_leases"] = [
        {k: v for k, v in le.items() if k != "expires_in_ms"} for le in status["live_leases"]
    ]
    return out


async def _running(start_coordinator: StartCoordinator, **overrides: object) -> Coordinator:
    coord = await start_coordinator(
        world_size=2, block_size=50, epochs=2, lease_ttl_ms=60000, **overrides
    )
    await drive_partial_job(coord.address)
    return coord


async def test_status_cli_json_matches_the_status_page_dict(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, out, err = await run_cli(["status", "--coordinator", coord.address, "--json"])
    assert code == 0, err
    from_cli = json.loads(out)
    assert from_cli["state"] == "running"
    assert [n["node_id"] for n in from_cli["nodes"]] == ["node-a", "node-b"]
    assert from_cli["progress"][0]["committed_samples"] == 75
    # The server-side dict (the page's /api/status) and the CLI's read alike.
    assert _stable(from_cli) == _stable(coord.status().to_dict())


async def test_status_cli_table_shows_nodes_and_progress(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, out, _ = await run_cli(["status", "--coordinator", coord.address])
    assert code == 0
    assert "mx8 job default" in out
    assert coord.source.manifest_hash in out
    assert "node-a" in out and "host-b" in out and "alive" in out
    assert "12.5%" in out and "live leases: 1" in out


async def test_status_cli_wrong_job_and_unreachable_exit_2(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, _, err = await run_cli(["status", "--coordinator", coord.address, "--job-id", "other"])
    assert code == 2 and "serves job 'default', not 'other'" in err
    await coord.shutdown()
    code, _, err = await run_cli(["status", "--coordinator", coord.address, "--timeout", "1"])
    assert code == 2 and "unreachable" in err


async def test_status_cli_sends_the_token_from_env(
    start_coordinator: StartCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord = await _running_with_token(start_coordinator)
    code, _, err = await run_cli(["status", "--coordinator", coord.address])
    assert code == 2 and "UNAUTHENTICATED" in err and "MX8_AUTH_TOKEN" in err
    monkeypatch.setenv("MX8_AUTH_TOKEN", "tok")
    code, out, err = await run_cli(["status", "--coordinator", coord.address, "--json"])
    assert code == 0, err
    assert json.loads(out)["world_size"] == 2


async def _running_with_token(start_coordinator: StartCoordinator) -> Coordinator:
    coord = await start_coordinator(world_size=2, auth_token="tok")
    async with CoordinatorClient(coord.address, token="tok") as c:
        await c.register_node("default", "node-a")
        await c.register_node("default", "node-b")
    return coord


async def test_status_cli_health_probes(start_coordinator: StartCoordinator) -> None:
    coord = await start_coordinator(metrics="127.0.0.1:0", auth_token="tok")
    code, out, _ = await run_cli(["health", coord.address])
    assert code == 0 and "SERVING" in out
    # With a token the page is private; /metrics (what probes and scrapers use) is not.
    code, out, _ = await run_cli(
        ["health", "--http", f"http://127.0.0.1:{coord.metrics_port}/metrics"]
    )
    assert code == 0
    code, _, err = await run_cli(["health", "--http", f"http://127.0.0.1:{coord.metrics_port}/"])
    assert code == 1 and "401" in err
    code, _, err = await run_cli(["health", coord.address, "--service", "no.such.Service"])
    assert code == 1 and "NOT_FOUND" in err
    port = coord.metrics_port
    await coord.shutdown()
    code, _, err = await run_cli(["health", coord.address, "--timeout", "1"])
    assert code == 1
    code, _, err = await run_cli(
        ["health", "--http", f"http://127.0.0.1:{port}/", "--timeout", "1"]
    )
    assert code == 1 and "did not answer" in err


async def test_status_cli_console_script_runs(start_coordinator: StartCoordinator) -> None:
    """The installed ``mx8`` entry point, in its own process."""
    coord = await _running(start_coordinator)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MX8_")}
    mx8 = os.path.join(os.path.dirname(sys.executable), "mx8")
    proc = await asyncio.create_subprocess_exec(
        mx8,
        "status",
        "--coordinator",
        coord.address,
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["manifest_hash"] == coord.source.manifest_hash


def test_status_cli_requires_a_command() -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2

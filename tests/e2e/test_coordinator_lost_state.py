"""Dynamic mode, processes: a coordinator without ``--state-dir`` killed mid-epoch and
restarted on the same address starts the job over (a new job incarnation). The agent must
fail closed with ``coordinator_state_lost`` (trainer told, exit 2) within seconds, not hang
on re-issued lease ids nor deliver a sample twice."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess, run_trainer
from support.eventually import assert_eventually_blocking
from support.manifests import write_local_dataset

from mx8_common.errors import CoordinatorStateLostError
from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow


async def test_coordinator_restart_without_state_dir_fails_agent_and_trainer_closed(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    n = 3000
    manifest = write_local_dataset(tmp_path / "ds", n)
    address = f"127.0.0.1:{free_port()}"
    args = [
        "--dataset", str(manifest), "--listen", address, "--mode", "dynamic",
        "--block-size", "32", "--heartbeat-interval-ms", "100", "--lease-ttl-ms", "2000",
    ]  # fmt: skip

    def coordinator(name: str) -> DaemonProcess:
        proc = DaemonProcess("mx8_coordinator", args, tmp_path / f"{name}.log")
        daemons.append(proc)
        return proc

    first = coordinator("first")
    await first.wait_event("coordinator_serving")
    url = f"unix://{sock_dir}/a.sock"
    agent = DaemonProcess(
        "mx8_agent",
        ["--coordinator", address, "--node-id", "a", "--listen", url,
         "--progress-interval-ms", "100"],
        tmp_path / "agent.log",
    )  # fmt: skip
    daemons.append(agent)
    await agent.wait_event("agent_listening")
    restarted: list[DaemonProcess] = []
    restarted_at = threading.Event()
    seen = 0

    def restart_coordinator_mid_epoch(_batch: Any) -> None:
        nonlocal seen
        seen += 1
        if seen != 5:
            return
        # Some progress committed first, so the old incarnation has state to lose.
        assert_eventually_blocking(lambda: first.event("lease_completed") is not None)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        restarted.append(coordinator("second"))
        restarted_at.set()

    started = time.monotonic()
    run = await asyncio.to_thread(
        run_trainer, url, batch_size=16, delay_s=0.01, on_batch=restart_coordinator_mid_epoch
    )
    assert restarted_at.is_set(), run.error
    # The trainer ended with the typed, one-line error instead of hanging or re-reading.
    assert isinstance(run.error, CoordinatorStateLostError), run.error
    assert "restarted without its --state-dir" in str(run.error)
    assert "\n" not in str(run.error)
    assert len(run.ids) == len(set(run.ids)) < n
    assert await agent.wait_exit(15) == 2, agent.text()
    assert time.monotonic() - started < 30
    lost = agent.event("coordinator_state_lost")
    assert lost is not None and lost["level"] == "error"
    assert lost["expected"] != lost["got"]
    assert "Traceback" not in agent.text()
    # The new coordinator never got a progress report for a lease it re-issued.
    assert restarted[0].event("lease_completed") is None

"""``mx8-coordinator`` as a real subprocess: resolve a folder, kill -9, restart, SIGTERM drain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.coordinator import Ledger, run_node
from support.eventually import assert_eventually
from support.manifests import PADDED_LOCATION, write_manifest

from mx8_common.rpc.coordinator_client import CoordinatorClient

pytestmark = pytest.mark.slow

JOB = "default"


class CoordinatorProcess:
    """One ``mx8-coordinator`` child process with its JSON event log on a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "MX8_LOG_FORMAT": "json"}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mx8_coordinator", *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == name), None)

    async def address(self) -> str:
        """The bound address, from the ``coordinator_serving`` event."""
        serving = await assert_eventually(self._serving, timeout_s=30)
        return serving["address"]

    def _serving(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"coordinator exited early:\n{self.log_path.read_text()}")
        return self.event("coordinator_serving")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[CoordinatorProcess]]:
    started: list[CoordinatorProcess] = []
    yield started
    for p in started:
        p.stop()


def make_dataset(root: Path, per_class: int) -> Path:
    for cls in ("cat", "dog", "eel"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i:03d}.bin").write_bytes(bytes([i % 251]) * (1 + i))
    return root


async def test_coordinator_process_kill9_restart_resumes_without_reindex(
    tmp_path: Path, processes: list[CoordinatorProcess]
) -> None:
    dataset = make_dataset(tmp_path / "data", per_class=40)
    args = [
        "--dataset", str(dataset), "--listen", "127.0.0.1:0",
        "--store", str(tmp_path / "store"), "--state-dir", str(tmp_path / "state"),
        "--world-size", "2", "--block-size", "10", "--shuffle", "--seed", "5",
        "--epochs", "2", "--lease-ttl-ms", "800", "--heartbeat-interval-ms", "100",
        "--mode", "dynamic",
    ]  # fmt: skip
    first = CoordinatorProcess(args, tmp_path / "first.log")
    processes.append(first)
    address = await first.address()
    summary = first.event("snapshot_index_summary")
    assert summary is not None and summary["objects_indexed"] == 120
    resolved = first.event("snapshot_resolved")
    assert resolved is not None and resolved["indexed"] is True
    ledger = Ledger(120, 10, True, 5, resolved["manifest_hash"])

    async with CoordinatorClient(address) as client:
        reg = await client.register_node(JOB, "a")
        reg = await client.register_node(JOB, "b")
        assert reg.job_ready and reg.total_samples == 120 and list(reg.class_names) == [
            "cat", "dog", "eel"
        ]  # fmt: skip
        incarnation = reg.job_incarnation
        await run_node(client, JOB, "a", ledger, want=2, step=4, stop_after=9)
        await run_node(client, JOB, "b", ledger, want=1, step=3, stop_after=2)
        before = await client.get_job_snapshot(JOB)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)

    second = CoordinatorProcess(args, tmp_path / "second.log")
    processes.append(second)
    address = await second.address()
    assert second.event("snapshot_index_summary") is None  # reused from the store, no re-index
    again = second.event("snapshot_resolved")
    assert again is not None and again["indexed"] is False
    assert again["manifest_hash"] == resolved["manifest_hash"]
    replayed = second.event("lease_log_replayed")
    committed = sum(len(ids) for ids in ledger.committed.values())
    assert replayed is not None and replayed["samples_committed"] == committed == 30 + 6

    async with CoordinatorClient(address) as client:
        # Restarted with its --state-dir: the same job incarnation, so agents carry on.
        assert (await client.register_node(JOB, "a")).job_incarnation == incarnation != ""
        after = await client.get_job_snapshot(JOB)
        assert after.counters.samples_committed == before.counters.samples_committed
        assert [(le.lease_id, le.cursor) for le in after.live_leases] == [
            (le.lease_id, le.cursor) for le in before.live_leases
        ]
        # "a" carries on from its logged cursors; "b" never returns and its work is re-queued.
        for lease in after.live_leases:
            if lease.node_id == "a":
                await client.report_progress(JOB, "a", lease.lease_id, lease.range.end_id)
                ledger.commit(lease.range.epoch, lease.cursor, lease.range.end_id)
        await run_node(client, JOB, "a", ledger)
        final = await client.get_job_snapshot(JOB)
    ledger.assert_exactly_once(2)
    assert final.job_drained and final.counters.samples_committed == 240


async def test_coordinator_process_sigterm_drains_and_exits_zero(
    tmp_path: Path, processes: list[CoordinatorProcess]
) -> None:
    manifest = write_manifest(tmp_path / "m", 50).path
    state = tmp_path / "state"
    args = [
        "--dataset", str(manifest), "--listen", "127.0.0.1:0", "--state-dir", str(state),
        "--block-size", "10", "--job-id", "j1", "--mode", "dynamic",
    ]  # fmt: skip
    proc = CoordinatorProcess(args, tmp_path / "c.log")
    processes.append(proc)
    async with CoordinatorClient(await proc.address()) as client:
        await client.register_node("j1", "a")
        (lease,) = (await client.request_lease("j1", "a", 1)).leases
        await client.report_progress("j1", "a", lease.lease_id, 7)
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    assert proc.event("coordinator_stopped") is not None
    lines = (state / "j1.lease-log.jsonl").read_text().splitlines()
    assert (
        json.loads(lines[0])["manifest_hash"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    )
    assert json.loads(lines[-1]) == {"ev": "progress", "lease": lease.lease_id, "cursor": 7}


async def test_coordinator_process_bad_flags_exit_2_logged_at_level_error(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mx8_coordinator", "--dataset", "/x", "--world-size", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MX8_LOG_FORMAT": "json"},
    )
    assert result.returncode == 2
    assert "--world-size must be > 0, got 0" in result.stderr and "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [fatal] = [e for e in events if e["event"] == "config_invalid"]
    assert fatal["level"] == "error"


async def test_coordinator_process_memory_bounded_while_streaming(
    tmp_path: Path, processes: list[CoordinatorProcess]
) -> None:
    manifest = write_manifest(tmp_path / "m", 160_000, location=PADDED_LOCATION).path
    size = manifest.stat().st_size
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    proc = CoordinatorProcess(
        ["--dataset", str(manifest), "--listen", "127.0.0.1:0"], tmp_path / "c.log"
    )
    processes.append(proc)
    address = await proc.address()
    ps = psutil.Process(proc.proc.pid)
    async with CoordinatorClient(address) as client:
        # Warm up the gRPC paths once so one-time allocations are not counted as growth.
        async for _ in client.get_manifest_stream(JOB, digest):
            break
        base = ps.memory_info().rss
        peak, sha, received = base, hashlib.sha256(), 0
        async for chunk in client.get_manifest_stream(JOB, digest):
            sha.update(chunk.data)
            received += len(chunk.data)
            peak = max(peak, ps.memory_info().rss)
    assert received == size and sha.hexdigest() == digest
    growth = peak - base
    print(
        f"manifest {size >> 20} MiB streamed; coordinator RSS growth {growth / (1 << 20):.1f} MiB"
    )
    assert growth < size // 3

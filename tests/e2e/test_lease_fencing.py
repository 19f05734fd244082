"""Dynamic mode under live faults: a frozen or cut-off agent is fenced.

Real ``mx8-coordinator`` and ``mx8d-agent`` processes, trainers as threads that stamp
every batch they receive (monotonic clock, shared by all processes of the host). After an
agent was frozen past the lease TTL (SIGSTOP ... SIGCONT), or the coordinator was frozen
past it, no agent hands out a position of a lease the coordinator took back: the only
positions delivered twice are ones a trainer had received before the fault struck (in
flight, not yet committed), and the lease log commits every position exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.agent import DaemonProcess, TrainerRun, run_trainer
from support.eventually import assert_eventually
from support.manifests import write_local_dataset
from support.tcp_proxy import TcpProxy

from mx8_common.testing.local_s3 import free_port
from mx8_coordinator.state.lease_log import lease_log_path

pytestmark = pytest.mark.slow

JOB = "default"
N = 2000
TTL_MS = 1500
BATCH = 16
WINDOW = 4
#: --max-unreported-batches of the agents: the trainer's window plus the acknowledgements
#: of about one report round-trip (eager reports), never more.
MAX_UNREPORTED = WINDOW + 2
#: Positions a fault may leave delivered but uncommitted: what the agent may hand out
#: beyond the coordinator's confirmed cursors. Before eager reports and the bound, the
#: repeats were 64-96 (agent frozen), 180-200 (link cut) and 48 (kill -9) of 2,000.
UNCOMMITTED = MAX_UNREPORTED * BATCH


class Stamps:
    """(monotonic time, trainer, sample ids) of every batch trainers received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: list[tuple[float, str, tuple[int, ...]]] = []

    def recorder(self, who: str) -> Any:
        def on_batch(batch: Any) -> None:
            with self._lock:
                self.rows.append((time.monotonic(), who, tuple(batch.sample_ids.tolist())))

        return on_batch

    def count(self, who: str) -> int:
        with self._lock:
            return sum(1 for _t, w, _ids in self.rows if w == who)

    def duplicates(self) -> dict[int, list[tuple[float, str]]]:
        """Sample id -> its deliveries, for ids delivered more than once."""
        seen: dict[int, list[tuple[float, str]]] = {}
        for at, who, ids in self.rows:
            for i in ids:
                seen.setdefault(i, []).append((at, who))
        return {i: sorted(d) for i, d in seen.items() if len(d) > 1}


async def start_job(
    daemons: list[DaemonProcess],
    tmp_path: Path,
    sock_dir: Path,
    *agent_args: str,
    proxy_b: TcpProxy | None = None,
) -> tuple[DaemonProcess, list[tuple[DaemonProcess, str]], Path]:
    """Coordinator and agents a, b (b through ``proxy_b`` to the coordinator, if given)."""
    manifest = write_local_dataset(tmp_path / "ds", N)
    state = tmp_path / "state"
    coordinator = DaemonProcess(
        "mx8_coordinator",
        [
            "--dataset",
            str(manifest),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--mode",
            "dynamic",
            "--state-dir",
            str(state),
            "--world-size",
            "2",
            "--block-size",
            "100",
            "--heartbeat-interval-ms",
            "100",
            "--lease-ttl-ms",
            str(TTL_MS),
        ],
        tmp_path / "coordinator.log",
    )
    daemons.append(coordinator)
    address = (await coordinator.wait_event("coordinator_serving"))["address"]
    agents = []
    for node in ("a", "b"):
        url = f"unix://{sock_dir}/{node}.sock"
        via = address
        if proxy_b is not None and node == "b":
            proxy_b.target = address
            via = await proxy_b.start()
        agents.append((start_agent(tmp_path, node, via, url, *agent_args), url))
        daemons.append(agents[-1][0])
    return coordinator, agents, state


def start_agent(
    tmp_path: Path, node: str, coordinator: str, url: str, *extra: str, log: str = ""
) -> DaemonProcess:
    args = ["--coordinator", coordinator, "--node-id", node, "--listen", url]
    args += ["--progress-interval-ms", "100", "--leases-ahead", "3"]
    args += ["--max-unreported-batches", str(MAX_UNREPORTED), *extra]
    return DaemonProcess("mx8_agent", args, tmp_path / f"{log or 'agent-' + node}.log")


def committed_positions(state: Path) -> list[int]:
    """Every committed position of epoch 0, from the lease log (with repeats, if any)."""
    starts: dict[str, int] = {}
    cursors: dict[str, int] = {}
    for line in lease_log_path(state, JOB).read_text().splitlines():
        record = json.loads(line)
        if record.get("ev") == "issue":
            starts[record["lease"]] = cursors[record["lease"]] = record["start"]
        elif record.get("ev") == "progress":
            cursors[record["lease"]] = record["cursor"]
    return sorted(p for lease, start in starts.items() for p in range(start, cursors[lease]))


async def run_trainers(
    agents: list[tuple[DaemonProcess, str]],
    stamps: Stamps,
    delay_s: float = 0.03,
    urls: dict[str, str] | None = None,
) -> tuple[asyncio.Future[list[TrainerRun]], list[str]]:
    """One trainer per agent, slow enough that each hub holds batches when a fault hits
    (``urls``: agent log name -> the address its trainer dials instead, e.g. a proxy)."""
    names = []
    futures = []
    for proc, url in agents:
        await proc.wait_event("agent_listening")
        url = (urls or {}).get(proc.log_path.stem, url)
        name = proc.log_path.stem
        names.append(name)
        futures.append(
            asyncio.to_thread(
                run_trainer,
                url,
                batch_size=BATCH,
                window=WINDOW,
                delay_s=delay_s,
                timeout_s=60,
                on_batch=stamps.recorder(name),
            )
        )
    return asyncio.gather(*futures), names


def report(label: str, stamps: Stamps) -> int:
    dups = stamps.duplicates()
    print(f"{label}: {sum(len(d) - 1 for d in dups.values())} duplicate deliveries of {N}")
    return len(dups)


def report_load(label: str, stamps: Stamps, state: Path, agents: list[DaemonProcess]) -> None:
    """The coordinator's progress load: accepted reports/s (agents' count) and lease-log
    progress records/s, over the time trainers received batches."""
    times = [t for t, _w, _ids in stamps.rows]
    span = max(1e-3, max(times) - min(times))
    log = lease_log_path(state, JOB).read_text().splitlines()
    records = sum(1 for line in log if json.loads(line).get("ev") == "progress")
    sent = sum(e.get("progress_reports", 0) for a in agents for e in a.events("agent_drained"))
    print(
        f"{label}: {sent / span:.0f} progress reports/s, {records / span:.0f} lease-log "
        f"progress records/s over {span:.1f}s"
    )


async def test_lease_fencing_agent_frozen_past_ttl_delivers_nothing_taken_back(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    coordinator, agents, state = await start_job(daemons, tmp_path, sock_dir)
    (_a, _), (b, _) = agents
    stamps = Stamps()
    gathered, (_name_a, name_b) = await run_trainers(agents, stamps)
    await assert_eventually(lambda: stamps.count(name_b) >= 10, timeout_s=60)
    b.proc.send_signal(signal.SIGSTOP)
    t_stop = time.monotonic()

    def b_leases_expired() -> bool:
        return any(e["node_id"] == "b" for e in coordinator.events("lease_expired"))

    await assert_eventually(b_leases_expired, timeout_s=30)
    b.proc.send_signal(signal.SIGCONT)
    t_cont = time.monotonic()
    runs = await asyncio.wait_for(gathered, 120)
    for run in runs:
        assert run.error is None, run.error
    report("agent SIGSTOP past the TTL", stamps)
    dups = stamps.duplicates()
    # The zombie's side: after SIGCONT, b hands out nothing another node also delivered.
    zombie = {i for i, d in dups.items() if any(w == name_b and at >= t_cont for at, w in d)}
    assert zombie == set()
    # What remains is what b's trainer got before the freeze and b had not yet committed:
    # at most --max-unreported-batches (its window in flight, one report's round-trip).
    assert all(d[0][1] == name_b and d[0][0] < t_stop + 0.5 for d in dups.values())
    assert len(dups) <= UNCOMMITTED
    # b dropped its old leases on waking (lease_lost); whether a batch was first held by
    # the fence (lease_fenced) depends on whether a trainer's ack or the refused report
    # reached b first, so only the drop is certain.
    assert b.event("lease_lost") is not None
    # Every sample reached a trainer; the log commits each position exactly once.
    assert {i for _t, _w, ids in stamps.rows for i in ids} == set(range(N))
    assert committed_positions(state) == list(range(N))
    for proc, _ in agents:
        assert await proc.wait_exit(30) == 0, proc.text()
    report_load("agent SIGSTOP past the TTL", stamps, state, [p for p, _ in agents])
    assert "Traceback" not in coordinator.text() + b.text()


async def test_lease_fencing_coordinator_frozen_past_ttl_agents_hold_then_finish(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    coordinator, agents, state = await start_job(daemons, tmp_path, sock_dir)
    stamps = Stamps()
    gathered, names = await run_trainers(agents, stamps)
    await assert_eventually(lambda: min(stamps.count(n) for n in names) >= 10, timeout_s=60)
    coordinator.proc.send_signal(signal.SIGSTOP)
    t_stop = time.monotonic()

    def past_ttl() -> bool:
        # Held by the fence (lease_fenced) or already by --max-unreported-batches.
        return time.monotonic() - t_stop > 1.3 * TTL_MS / 1000

    try:
        await assert_eventually(past_ttl, timeout_s=30)
    finally:
        coordinator.proc.send_signal(signal.SIGCONT)
    t_cont = time.monotonic()
    # Within a heartbeat or so of losing the coordinator, nothing more reaches a trainer.
    assert not [at for at, _w, _ids in stamps.rows if t_stop + 1.0 <= at < t_cont]
    runs = await asyncio.wait_for(gathered, 120)
    for run in runs:
        assert run.error is None, run.error
    report("coordinator SIGSTOP past the TTL", stamps)
    # The coordinator counts its own stall for the leases: none expired, none repeated.
    assert coordinator.event("coordinator_stalled") is not None
    assert coordinator.event("lease_expired") is None
    assert stamps.duplicates() == {}
    assert {i for _t, _w, ids in stamps.rows for i in ids} == set(range(N))
    assert committed_positions(state) == list(range(N))
    assert Counter(committed_positions(state)).most_common(1)[0][1] == 1
    for proc, _ in agents:
        assert await proc.wait_exit(30) == 0, proc.text()
    report_load("coordinator SIGSTOP past the TTL", stamps, state, [p for p, _ in agents])
    assert "Traceback" not in coordinator.text()


async def test_lease_fencing_agent_cut_off_from_live_coordinator_stops_then_rejoins(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """b's link to a running coordinator goes black past the TTL; a takes b's work."""
    proxy = TcpProxy("")
    try:
        coordinator, agents, state = await start_job(daemons, tmp_path, sock_dir, proxy_b=proxy)
        (_a, _), (b, _) = agents
        stamps = Stamps()
        gathered, (_name_a, name_b) = await run_trainers(agents, stamps)
        await assert_eventually(lambda: stamps.count(name_b) >= 10, timeout_s=60)
        proxy.freeze()
        t_cut = time.monotonic()

        def b_expired() -> bool:
            return any(e["node_id"] == "b" for e in coordinator.events("lease_expired"))

        try:
            await assert_eventually(b_expired, timeout_s=30)
        finally:
            proxy.thaw()
        t_back = time.monotonic()
        # Within a heartbeat or so of losing the coordinator, b hands out nothing.
        assert not [at for at, w, _ids in stamps.rows if w == name_b and t_cut + 1.0 <= at < t_back]
        runs = await asyncio.wait_for(gathered, 120)
    finally:
        await proxy.stop()
    for run in runs:
        assert run.error is None, run.error
    report("agent cut off from a live coordinator past the TTL", stamps)
    dups = stamps.duplicates()
    # Repeats are only what b's trainer got before b noticed the cut and had not committed
    # (at most --max-unreported-batches, however long the stalled renewal waited),
    # delivered again from the re-queued remainder, by a or by b's new leases.
    assert all(d[0][1] == name_b and d[0][0] < t_cut + 1.0 for d in dups.values())
    assert len(dups) <= UNCOMMITTED
    assert {i for _t, _w, ids in stamps.rows for i in ids} == set(range(N))
    assert committed_positions(state) == list(range(N))
    assert b.event("lease_lost") is not None
    for proc, _ in agents:
        assert await proc.wait_exit(30) == 0, proc.text()
    report_load("agent cut off from a live coordinator", stamps, state, [p for p, _ in agents])


async def test_agent_without_trainer_takes_no_leases_and_hands_back_held_ones(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """Trainers on host a only (b's one trainer leaves early): a delivers every sample."""
    coordinator, agents, state = await start_job(
        daemons, tmp_path, sock_dir, "--no-trainer-grace-ms", "500"
    )
    (a, url_a), (b, url_b) = agents
    await a.wait_event("agent_listening")
    await b.wait_event("agent_listening")
    stamps = Stamps()
    started = time.monotonic()
    # b's trainer takes 3 batches and leaves; b keeps running with no trainer.
    run_b = await asyncio.to_thread(
        run_trainer, url_b, batch_size=BATCH, window=WINDOW, stop_after=3, timeout_s=60
    )
    assert run_b.error is None, run_b.error
    run_a = await asyncio.wait_for(
        asyncio.to_thread(
            run_trainer,
            url_a,
            batch_size=BATCH,
            window=WINDOW,
            timeout_s=60,
            on_batch=stamps.recorder("a"),
        ),
        60,
    )
    assert run_a.error is None, run_a.error
    elapsed = time.monotonic() - started
    print(f"one host without a trainer: all {N} delivered in {elapsed:.1f}s")
    assert set(run_a.ids) | set(run_b.ids) == set(range(N))
    # Only what b's trainer consumed but left without acknowledging comes again.
    again = Counter(run_a.ids + run_b.ids) - Counter(range(N))
    assert set(again) <= set(run_b.ids) and len(again) <= WINDOW * BATCH
    released = b.events("lease_released")
    assert released and b.event("agent_idle") is not None
    assert {e["lease_id"] for e in coordinator.events("lease_released")} == {
        e["lease_id"] for e in released
    }
    # After its trainer left, b took no lease: every one it started came before that.
    idle_at = b.event("agent_idle")["timestamp"]
    assert all(e["timestamp"] < idle_at for e in b.events("lease_started"))
    assert committed_positions(state) == list(range(N))
    assert await a.wait_exit(30) == 0, a.text()
    assert await b.wait_exit(30) == 0, b.text()


def assert_repeats_within_window(stamps: Stamps, who: str, before: float) -> None:
    """Every repeat was first delivered by ``who`` before ``before`` (the fault), and there
    are at most --max-unreported-batches of them."""
    dups = stamps.duplicates()
    assert all(d[0][1] == who and d[0][0] < before for d in dups.values()), dups
    assert len(dups) <= UNCOMMITTED
    assert {i for _t, _w, ids in stamps.rows for i in ids} == set(range(N))


async def test_lease_fencing_agent_killed_and_restarted_with_its_node_id_commits_exactly(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """kill -9 of agent b mid-job; a takes b's leases after the TTL; b comes back with the
    same --node-id (once the old registration went silent) and its new trainer finishes."""
    coordinator, agents, state = await start_job(daemons, tmp_path, sock_dir)
    (a, _), (b, url_b) = agents
    stamps = Stamps()
    gathered, (_name_a, name_b) = await run_trainers(agents, stamps)
    await assert_eventually(lambda: stamps.count(name_b) >= 10, timeout_s=60)
    b.proc.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    await b.wait_exit(10)
    address = coordinator.event("coordinator_serving")["address"]
    b2 = start_agent(tmp_path, "b", address, url_b, log="agent-b2")
    daemons.append(b2)
    again, _ = await run_trainers([(b2, url_b)], stamps)
    runs = await asyncio.wait_for(gathered, 120)
    (run_b2,) = await asyncio.wait_for(again, 120)
    run_a = runs[0]
    assert run_a.error is None and run_b2.error is None, (run_a.error, run_b2.error)
    assert runs[1].error is not None  # b's first trainer lost its agent
    report("agent kill -9 and restart", stamps)
    assert any(e["node_id"] == "b" for e in coordinator.events("lease_expired"))
    # The restarted agent registered node id b again (after the first went silent).
    assert [e["node_id"] for e in coordinator.events("node_registered")].count("b") == 2
    assert_repeats_within_window(stamps, name_b, t_kill + 0.1)
    assert committed_positions(state) == list(range(N))
    for proc in (a, b2):
        assert await proc.wait_exit(30) == 0, proc.text()
    assert "Traceback" not in coordinator.text() + b2.text()


async def test_lease_fencing_trainer_link_frozen_for_seconds_commits_exactly(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """b's trainer dials b over TCP through a proxy that holds every byte for 3.5 s."""
    coordinator, agents, state = await start_job(daemons, tmp_path, sock_dir)
    (_a, _), (b, url_b) = agents
    proxy = TcpProxy(url_b)
    try:
        stamps = Stamps()
        urls = {b.log_path.stem: await proxy.start()}
        gathered, (_name_a, name_b) = await run_trainers(agents, stamps, urls=urls)
        await assert_eventually(lambda: stamps.count(name_b) >= 10, timeout_s=60)
        proxy.freeze()
        t_freeze = time.monotonic()
        await asyncio.sleep(3.5)  # the fault's length, not a wait for a result
        proxy.thaw()
        runs = await asyncio.wait_for(gathered, 120)
    finally:
        await proxy.stop()
    for run in runs:
        assert run.error is None, run.error
    report("trainer link frozen 3.5 s", stamps)
    assert_repeats_within_window(stamps, name_b, t_freeze + 0.1)
    assert committed_positions(state) == list(range(N))
    for proc, _ in agents:
        assert await proc.wait_exit(30) == 0, proc.text()
    assert "Traceback" not in coordinator.text() + b.text()

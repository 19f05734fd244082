"""One owner per resource, across processes: a unix socket path, a coordinator state dir,
a node id. The second claimant is refused with one line and exit 2; the first goes on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.agent import DaemonProcess
from support.fake_coordinator import FakeCoordinator
from support.manifests import write_local_dataset
from support.mounts import tmpfs

from mx8_common.testing.local_s3 import free_port

pytestmark = pytest.mark.slow


def agent_process(
    daemons: list[DaemonProcess],
    log: Path,
    coordinator: str,
    node_id: str,
    listen: str,
    *args: str,
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_agent",
        ["--coordinator", coordinator, "--node-id", node_id, "--listen", listen, *args],
        log,
    )
    daemons.append(proc)
    return proc


def accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def one_plain_line(proc: DaemonProcess) -> str:
    plain = [line for line in proc.text().splitlines() if not line.startswith("{")]
    assert len(plain) == 1, proc.text()
    assert "Traceback" not in proc.text()
    return plain[0]


async def test_agent_on_a_live_agents_socket_is_refused_and_the_first_keeps_it(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    data = write_local_dataset(tmp_path / "ds", 20).read_bytes()
    fake = FakeCoordinator(data, total_samples=20)
    address = await fake.start()
    path = sock_dir / "shared.sock"
    try:
        first = agent_process(daemons, tmp_path / "a1.log", address, "a1", f"unix://{path}")
        await first.wait_event("manifest_ingested")
        second = agent_process(daemons, tmp_path / "a2.log", address, "a2", f"unix://{path}")
        assert await second.wait_exit(30) == 2
        line = one_plain_line(second)
        assert f"another agent ({socket.gethostname()} pid {first.proc.pid})" in line
        assert str(path) in line
        assert first.proc.poll() is None
        assert accepts(path)
    finally:
        await fake.stop()


async def test_agent_replaces_a_stale_socket_left_by_a_killed_agent(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    assert path.is_socket() and not accepts(path)
    data = write_local_dataset(tmp_path / "ds", 20).read_bytes()
    fake = FakeCoordinator(data, total_samples=20)
    address = await fake.start()
    try:
        agent = agent_process(daemons, tmp_path / "a.log", address, "a", f"unix://{path}")
        await agent.wait_event("agent_listening")
        assert accepts(path)
    finally:
        await fake.stop()


def coordinator_process(
    daemons: list[DaemonProcess], log: Path, dataset: Path, *args: str
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_coordinator",
        ["--dataset", str(dataset), "--listen", f"127.0.0.1:{free_port()}", *args],
        log,
    )
    daemons.append(proc)
    return proc


async def test_second_coordinator_on_the_same_state_dir_exits_2_naming_the_owner(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    manifest = write_local_dataset(tmp_path / "ds", 20)
    state = tmp_path / "state"
    first = coordinator_process(daemons, tmp_path / "c1.log", manifest, "--state-dir", str(state))
    await first.wait_event("coordinator_serving")
    second = coordinator_process(daemons, tmp_path / "c2.log", manifest, "--state-dir", str(state))
    assert await second.wait_exit(30) == 2
    line = one_plain_line(second)
    assert f"another coordinator ({socket.gethostname()} pid {first.proc.pid})" in line
    assert f"owns state dir {state}" in line
    assert second.event("coordinator_serving") is None
    assert first.proc.poll() is None


async def test_coordinator_takes_over_the_state_dir_of_a_killed_one(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    manifest = write_local_dataset(tmp_path / "ds", 20)
    state = tmp_path / "state"
    first = coordinator_process(daemons, tmp_path / "c1.log", manifest, "--state-dir", str(state))
    await first.wait_event("coordinator_serving")
    first.stop()  # SIGKILL: the lock file stays, its lock goes with the process
    second = coordinator_process(daemons, tmp_path / "c2.log", manifest, "--state-dir", str(state))
    await second.wait_event("coordinator_serving")


async def test_coordinator_state_dir_under_a_regular_file_exits_2_naming_it(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    manifest = write_local_dataset(tmp_path / "ds", 20)
    (tmp_path / "plain").write_text("not a folder")
    bad = tmp_path / "plain" / "state"
    proc = coordinator_process(daemons, tmp_path / "c.log", manifest, "--state-dir", str(bad))
    assert await proc.wait_exit(30) == 2
    line = one_plain_line(proc)
    assert str(bad) in line and "regular file" in line


async def test_coordinator_state_dir_on_a_read_only_mount_exits_2_naming_it(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    manifest = write_local_dataset(tmp_path / "ds", 20)
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        proc = coordinator_process(daemons, tmp_path / "c.log", manifest, "--state-dir", str(ro))
        assert await proc.wait_exit(30) == 2
    line = one_plain_line(proc)
    assert str(ro) in line and "not writable" in line


async def test_second_agent_with_a_live_node_id_exits_2_naming_the_first_host(
    tmp_path: Path, sock_dir: Path, daemons: list[DaemonProcess]
) -> None:
    manifest = write_local_dataset(tmp_path / "ds", 20)
    coordinator = coordinator_process(daemons, tmp_path / "c.log", manifest)
    address = (await coordinator.wait_event("coordinator_serving"))["address"]
    first = agent_process(daemons, tmp_path / "a1.log", address, "n0", f"unix://{sock_dir}/1.sock")
    await first.wait_event("node_registered")
    second = agent_process(
        daemons,
        tmp_path / "a2.log",
        address,
        "n0",
        f"unix://{sock_dir}/2.sock",
        "--connect-timeout-s",
        "1",
    )
    assert await second.wait_exit(30) == 2
    line = one_plain_line(second)
    assert f"node id 'n0' is held by a live agent on {socket.gethostname()}" in line
    assert second.event("node_id_in_use") is not None
    assert second.event("node_registered") is None
    assert first.proc.poll() is None

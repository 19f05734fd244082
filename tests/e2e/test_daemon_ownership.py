"""One owner per resource, across processes: a unix socket path, a coordinator state dir,
a node id. The second claimant is refused with one line and exit 2; the first goes on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.agent import DaemonProcess, write_local_dataset
from support.fake_coordinator import FakeCoordinator

pytestmark = pytest.mark.slow


def agent_process(
    daemons: list[DaemonProcess], log: Path, coordinator: str, node_id: str, listen: str
) -> DaemonProcess:
    proc = DaemonProcess(
        "mx8_agent",
        ["--coordinator", coordinator, "--node-id", node_id, "--listen", listen],
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

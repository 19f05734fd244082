"""Fixtures of the agent and e2e tests: real agents, agent processes, short unix socket paths."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mx8_agent.agent import Agent
from mx8_agent.config import AgentConfig
from support.agent import DaemonProcess
from support.eventually import assert_eventually


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (tmp_path can exceed the 107-byte path limit)."""
    path = Path(tempfile.mkdtemp(prefix="mx8a-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class RunningAgent:
    """An ``Agent`` whose ``run()`` is a task of the test's loop."""

    def __init__(self, agent: Agent, task: asyncio.Task[None]) -> None:
        self.agent = agent
        self.task = task

    @property
    def url(self) -> str:
        assert self.agent.address is not None
        return self.agent.address

    async def result(self, timeout_s: float = 30.0) -> None:
        """Wait for ``run()`` to end; re-raise what it raised."""
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self.task)


@pytest.fixture
async def start_agent(
    sock_dir: Path,
) -> AsyncIterator[Callable[..., Awaitable[RunningAgent]]]:
    """Factory: ``await start_agent(coordinator_address, **config)`` -> a running agent."""
    running: list[RunningAgent] = []

    async def start(coordinator: str, **overrides: Any) -> RunningAgent:
        n = len(running)
        values: dict[str, Any] = {
            "coordinator": coordinator,
            "node_id": f"node-{n}",
            "listen": f"unix://{sock_dir}/agent-{n}.sock",
            "progress_interval_ms": 100,
            "connect_timeout_s": 10.0,
        }
        values.update(overrides)
        agent = Agent(AgentConfig(**values))
        task = asyncio.create_task(agent.run())
        ra = RunningAgent(agent, task)
        running.append(ra)

        def listening() -> bool:
            if task.done():
                task.result()  # raise what stopped it
            return agent.address is not None

        await assert_eventually(listening, timeout_s=10)
        return ra

    yield start
    for ra in running:
        await ra.agent.shutdown()
        with contextlib.suppress(BaseException):
            await ra.task


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Child processes a test starts; every one is killed at the end, whatever happened."""
    started: list[DaemonProcess] = []
    yield started
    for proc in started:
        proc.stop()

"""Registration: an unreachable coordinator is retried with backoff until
``--connect-timeout-s``, then the agent fails with one line naming the fix. The retries
log one ``register_retry`` line per few seconds (the rest at debug level)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.logs import Events

from mx8_agent.agent import Agent
from mx8_agent.config import AgentConfig
from mx8_common.errors import CoordinatorError
from mx8_common.obs.events import configure_logging


@pytest.fixture
def debug_logging() -> Iterator[None]:
    configure_logging(level="debug")  # folded retry lines go out at debug
    yield
    configure_logging()


async def test_agent_register_retries_an_unreachable_coordinator_then_gives_up(
    sock_dir: Path,
    debug_logging: None,  # before logs: it reconfigures structlog
    logs: Events,
) -> None:
    config = AgentConfig(
        coordinator="127.0.0.1:1",  # nothing listens: every try is UNAVAILABLE
        listen=f"unix://{sock_dir}/r.sock",
        connect_timeout_s=0.4,
    )
    logs.clear()
    async with Agent(config) as agent:
        with pytest.raises(CoordinatorError, match=r"gave up after 0.4s") as info:
            await agent.run()
    assert info.value.code == "UNAVAILABLE"
    retries = logs.named("register_retry")
    assert len(retries) >= 2  # it kept trying until the timeout ...
    # ... and said so in one short line; the repeats went out at debug level.
    assert [e["log_level"] for e in retries] == ["warning"] + ["debug"] * (len(retries) - 1)
    assert all(len(e["error"]) <= 160 for e in retries)
    # 50 ms doubling, each wait at least half its step: never past 2 s, never zero.
    assert all(0.025 <= e["delay_s"] <= 2.0 for e in retries)

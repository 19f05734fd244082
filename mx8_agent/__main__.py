"""Entry point of ``mx8d-agent``: flags -> config -> uvloop -> ``Agent.run()``.

SIGTERM and SIGINT stop the agent: it reports what trainers acknowledged and exits 0.
A drained job exits 0 too. An ``Mx8Error`` (bad flag, a manifest that failed closed, an
object changed since the snapshot, an unreachable coordinator) prints one line naming
the problem and the fix, and exits 2.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from mx8_agent.agent import Agent
from mx8_agent.config import AgentConfig, load_agent_config
from mx8_common.errors import Mx8Error
from mx8_common.obs.events import configure_logging, emit
from mx8_common.storage.s3_client import S3Settings

__all__ = ["main"]


async def _serve(config: AgentConfig) -> None:
    agent = Agent(config, s3_settings=S3Settings.from_env())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_shutdown)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    """Run the agent until the job drains or SIGTERM/SIGINT; returns the exit code."""
    configure_logging()
    try:
        config = load_agent_config(sys.argv[1:] if argv is None else argv)
        uvloop.run(_serve(config))
    except Mx8Error as exc:
        emit("agent", "agent_failed", level="error", event_name=exc.event, error=str(exc))
        print(f"mx8d-agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Entry point of ``mx8-coordinator``: flags -> config -> uvloop -> ``Coordinator.run()``.

The start-up heap is frozen for the garbage collector once the job is ready
(``freeze_startup_heap``), so full collections while serving walk only newer objects.

SIGTERM and SIGINT ask the coordinator to drain (no new leases, lease log flushed) and
exit 0. An ``Mx8Error`` (bad flag, unreadable lease log, snapshot failure) prints its
message, without a traceback, and exits 2.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from mx8_common.errors import Mx8Error
from mx8_common.obs.events import configure_logging, emit
from mx8_coordinator.config import CoordinatorConfig, load_coordinator_config
from mx8_coordinator.server import Coordinator

__all__ = ["main"]


async def _serve(config: CoordinatorConfig) -> None:
    # This process is the coordinator's alone: its start-up heap is frozen for the GC.
    coordinator = Coordinator(config, freeze_heap=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.request_shutdown)
    await coordinator.run()


def main(argv: list[str] | None = None) -> int:
    """Run the coordinator until SIGTERM/SIGINT; returns the exit code."""
    configure_logging()
    try:
        config = load_coordinator_config(sys.argv[1:] if argv is None else argv)
        uvloop.run(_serve(config))
    except Mx8Error as exc:
        emit("coordinator", exc.event, level="error", error=str(exc))
        print(f"mx8-coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

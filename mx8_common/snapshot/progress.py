"""The progress line of indexing on a terminal (objects indexed, rate), or of waiting for it."""

from __future__ import annotations

import time
from typing import Any

from mx8_common.snapshot.lock import LockHolder

__all__ = ["IndexProgress"]


class IndexProgress:
    """A rich progress line on a TTY (objects indexed and rate); a no-op elsewhere.

    A waiter shows the holder's count instead (``waiting``): what rank 3 waits for.
    """

    def __init__(self, enabled: bool, link: str) -> None:
        self._progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed:,} objects"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(f"indexing {link}", total=None, rate="")
            self._t0 = time.monotonic()
            self._progress.start()

    def advance(self, n: int, total: int) -> None:
        if self._progress is not None:
            rate = total / max(time.monotonic() - self._t0, 1e-6)
            self._progress.update(self._task, advance=n, rate=f"{rate:,.0f} objects/s")

    def waiting(self, link: str, holder: LockHolder | None) -> None:
        if self._progress is not None and holder is not None:
            self._progress.update(
                self._task,
                description=f"waiting for {holder.host} to index {link}:",
                completed=holder.objects_indexed or 0,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

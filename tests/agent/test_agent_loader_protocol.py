"""``mx8.load`` returns an ``mx8.Mx8Loader`` whether it runs embedded or through an agent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support.manifests import write_local_dataset

import mx8
from mx8._distributed import DistributedLoader


async def test_load_returns_an_mx8_loader_embedded_and_distributed(
    tmp_path: Path, store_root: str, start_coordinator: Any, start_agent: Any
) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.bin").write_bytes(b"x" * (i + 1))
    with await asyncio.to_thread(mx8.load, str(folder), batch_size=4) as embedded:
        assert isinstance(embedded, mx8.Loader)
        assert isinstance(embedded, mx8.Mx8Loader)
        assert embedded.total_samples == 6 and len(embedded) == 2

    coordinator = await start_coordinator(write_local_dataset(tmp_path / "served", 20))
    agent = await start_agent(coordinator.address)
    # The distributed loader asks the agent (served by this loop) at construction: a thread.
    with await asyncio.to_thread(mx8.load, str(folder), agent=agent.url) as distributed:
        assert isinstance(distributed, DistributedLoader)
        assert isinstance(distributed, mx8.Mx8Loader)
        assert distributed.total_samples == 20
        assert coordinator.job is not None
        assert distributed.manifest_hash == coordinator.job.spec.manifest_hash
        assert distributed.stats().batches == 0


def test_mx8_loader_protocol_rejects_an_iterable_without_the_loader_api() -> None:
    assert not isinstance([1, 2, 3], mx8.Mx8Loader)

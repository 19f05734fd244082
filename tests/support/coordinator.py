"""Helpers of the coordinator tests: a node driven by a client, and the ledger it fills."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.sample_order import EpochOrder

__all__ = ["Ledger", "run_node"]


@dataclass
class Ledger:
    """Sample ids committed per (epoch), and the lease order each node saw."""

    total: int
    block_size: int
    shuffle: bool
    seed: int
    manifest_hash: str
    committed: dict[int, list[int]] = field(default_factory=dict)
    by_node: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    def order(self, epoch: int) -> EpochOrder:
        return EpochOrder(
            self.total, self.block_size, self.shuffle, self.seed, epoch, self.manifest_hash
        )

    def commit(self, epoch: int, start: int, end: int) -> None:
        if end > start:
            self.committed.setdefault(epoch, []).extend(self.order(epoch).ids(start, end).tolist())

    def assert_exactly_once(self, epochs: int) -> None:
        assert sorted(self.committed) == list(range(epochs))
        for epoch, ids in self.committed.items():
            assert len(ids) == self.total, f"epoch {epoch}: {len(ids)} commits for {self.total}"
            assert sorted(ids) == list(range(self.total)), f"epoch {epoch}: duplicates or gaps"


async def run_node(
    client: CoordinatorClient,
    job_id: str,
    node_id: str,
    ledger: Ledger,
    *,
    want: int = 2,
    step: int = 7,
    stop_after: int | None = None,
) -> int:
    """Lease, report in ``step``-sized cursor moves and commit until the job drains.

    With ``stop_after`` the node goes silent after that many progress reports, keeping
    its leases (a crashed node). Returns the number of progress reports made.
    """
    reports = 0
    while True:
        grant = await client.request_lease(job_id, node_id, want)
        if grant.job_drained:
            return reports
        if not grant.leases:
            await asyncio.sleep(grant.wait_ms / 1000)
            continue
        for lease in grant.leases:
            ledger.by_node.setdefault(node_id, []).append(
                (lease.range.epoch, lease.range.start_id, lease.range.end_id)
            )
            cursor = lease.cursor
            while cursor < lease.range.end_id:
                if stop_after is not None and reports >= stop_after:
                    return reports
                new = min(lease.range.end_id, cursor + step)
                await client.report_progress(job_id, node_id, lease.lease_id, new)
                reports += 1
                ledger.commit(lease.range.epoch, cursor, new)
                cursor = new

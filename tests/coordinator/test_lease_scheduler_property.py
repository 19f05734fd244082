"""Property: random interleavings of join/lease/progress/expire/death keep the lease invariants.

No two live leases overlap; committed ranges are disjoint and never overlap live work;
at drain the committed ranges of every epoch are exactly [0, N).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.clock import FakeClock

from mx8_common.sample_order import EpochOrder
from mx8_coordinator.state.lease_scheduler import LeaseScheduler

OPS = ("acquire", "report", "report", "report", "tick", "kill", "revive", "join")


class Model:
    """Drives a scheduler and records every committed range it reports."""

    def __init__(self, total: int, block: int, epochs: int, nodes: int, shuffle: bool) -> None:
        self.total, self.epochs = total, epochs
        self.clock = FakeClock()
        self.sched = LeaseScheduler(
            total=total,
            epochs=epochs,
            lease_ttl_ms=100,
            blocks_for_epoch=lambda e: EpochOrder(total, block, shuffle, 3, e, "").block_ranges(),
            clock=self.clock,
        )
        self.nodes = [f"n{i}" for i in range(nodes)]
        self.alive = set(self.nodes)
        self.committed: dict[int, list[tuple[int, int]]] = {e: [] for e in range(epochs)}

    def rank(self, node: str) -> int:
        return self.nodes.index(node)

    def departed(self) -> list[int]:
        return [self.rank(n) for n in self.nodes if n not in self.alive]

    def acquire(self, node: str, want: int) -> None:
        grant = self.sched.acquire(
            node,
            self.rank(node),
            world_size=len(self.nodes),
            departed_ranks=self.departed(),
            want=want,
        )
        assert not grant.leases or not grant.drained

    def report(self, node: str, pick: int, step: int) -> None:
        mine = sorted(self.sched.leases_of(node), key=lambda le: le.lease_id)
        if not mine:
            return
        lease = mine[pick % len(mine)]
        cursor = lease.cursor + step % (lease.end - lease.cursor + 1)
        p = self.sched.report(node, lease.lease_id, cursor)
        if p.committed_to > p.committed_from:
            self.committed[lease.epoch].append((p.committed_from, p.committed_to))

    def tick(self, ms: int) -> None:
        self.clock.now += ms
        self.sched.expire_due()

    def kill(self, node: str) -> None:
        if node in self.alive and len(self.alive) > 1:
            self.alive.discard(node)
            self.sched.expire_node(node)

    def check(self) -> None:
        for epoch in range(self.epochs):
            live = [(le.start, le.end) for le in self.sched.live_leases() if le.epoch == epoch]
            live_open = [
                (le.cursor, le.end) for le in self.sched.live_leases() if le.epoch == epoch
            ]
            for spans in (live, self.committed[epoch] + live_open):
                ordered = sorted(s for s in spans if s[0] < s[1])
                for (_, end_a), (start_b, _) in itertools.pairwise(ordered):
                    assert end_a <= start_b, f"overlap in epoch {epoch}: {ordered}"
            done = sum(b - a for a, b in self.committed[epoch])
            assert done == self.sched.committed(epoch)

    def run_to_drain(self) -> None:
        self.alive = set(self.nodes)
        for _ in range(10_000):
            if self.sched.drained:
                break
            progressed = False
            for node in self.nodes:
                self.acquire(node, 4)
                for lease in self.sched.leases_of(node):
                    p = self.sched.report(node, lease.lease_id, lease.end)
                    self.committed[lease.epoch].append((p.committed_from, p.committed_to))
                    progressed = True
            if not progressed:
                self.tick(100)
            self.check()
        assert self.sched.drained
        for epoch in range(self.epochs):
            ordered = sorted(s for s in self.committed[epoch] if s[0] < s[1])
            pos = 0
            for start, end in ordered:
                assert start == pos, f"epoch {epoch}: gap or overlap at {pos}: {ordered}"
                pos = end
            assert pos == self.total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    total=st.integers(0, 120),
    block=st.integers(1, 25),
    epochs=st.integers(1, 3),
    nodes=st.integers(1, 4),
    shuffle=st.booleans(),
    ops=st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.integers(0, 200)), max_size=80
    ),
)
def test_lease_scheduler_random_interleavings_keep_invariants(
    total: int, block: int, epochs: int, nodes: int, shuffle: bool, ops: list
) -> None:
    model = Model(total, block, epochs, nodes, shuffle)
    for op, a, b in ops:
        node = model.nodes[a % len(model.nodes)]
        if op == "acquire" and node in model.alive:
            model.acquire(node, 1 + b % 3)
        elif op == "report" and node in model.alive:
            model.report(node, a, b)
        elif op == "tick":
            model.tick(b)
        elif op == "kill":
            model.kill(node)
        elif op == "revive":
            model.alive.add(node)
        elif op == "join" and len(model.nodes) < 6:
            model.nodes.append(f"n{len(model.nodes)}")
            model.alive.add(model.nodes[-1])
        model.check()
    model.run_to_drain()

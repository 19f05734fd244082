"""Who is in the job: registration, the world freeze, ranks and liveness.

Before the freeze, registered nodes wait without a rank. When ``freeze_size`` nodes have
registered, ranks 0..n-1 are assigned in sorted node-id order, so the same set of nodes
gets the same ranks on every run whatever order they arrive in. After the freeze a new
node joins as an extra rank; a node that re-registers with its id gets its rank back.
A node silent for ``node_ttl_ms`` is departed (its rank's queue becomes work for others)
until it heartbeats or registers again. Pure logic with an injectable millisecond clock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mx8_common.errors import (
    JobNotReadyError,
    NodeIdInUseError,
    NodeNotRegisteredError,
    RegistrationTokenError,
)

__all__ = ["NodeRegistry", "NodeState", "Registration", "monotonic_ms"]


def monotonic_ms() -> int:
    """The default clock: monotonic milliseconds."""
    return time.monotonic_ns() // 1_000_000


@dataclass
class NodeState:
    """One node as the coordinator sees it."""

    node_id: str
    hostname: str = ""
    #: The agent process that registered it (empty: unknown, e.g. restored from a log).
    incarnation: str = ""
    rank: int | None = None
    #: The secret its registration got back; every later call must carry it. Empty: not
    #: checked (registered without an incarnation, or restored from a lease log).
    token: str = ""
    alive: bool = True
    last_seen_ms: int = 0
    #: When it last asked for a lease (or registered): dynamic mode's idleness.
    last_request_ms: int = 0
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """Answer to a registration: the node's rank (None before the freeze) and the world."""

    node_id: str
    rank: int | None
    world_size: int
    ready: bool
    #: (node_id, rank) pairs assigned by this call: the freeze or a late joiner.
    assigned: tuple[tuple[str, int], ...] = ()
    #: The registration's secret (empty when the agent sent no incarnation).
    token: str = ""


class NodeRegistry:
    """Registration, ranks and liveness of a job's nodes."""

    def __init__(
        self, *, freeze_size: int, node_ttl_ms: int, clock: Callable[[], int] = monotonic_ms
    ) -> None:
        if freeze_size < 1:
            raise ValueError("freeze_size must be >= 1")
        self._freeze_size = freeze_size
        self._ttl = node_ttl_ms
        self._clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._frozen = False

    @property
    def ready(self) -> bool:
        """True once ranks are assigned."""
        return self._frozen

    @property
    def world_size(self) -> int:
        """Number of ranks assigned so far (0 before the freeze)."""
        return sum(1 for n in self._nodes.values() if n.rank is not None)

    def nodes(self) -> list[NodeState]:
        """Every known node, by rank then id (unranked last)."""
        return sorted(
            self._nodes.values(),
            key=lambda n: (n.rank is None, n.rank if n.rank is not None else 0, n.node_id),
        )

    def register(self, node_id: str, hostname: str = "", *, incarnation: str = "") -> Registration:
        """Register (or re-register) ``node_id``; may freeze the world.

        A node id that a live agent of another ``incarnation`` holds (it heartbeated
        within the TTL) is refused with ``NodeIdInUseError``: a second agent with the
        same ``--node-id``; so is one with no incarnation while a live agent holds the id
        with a token. A restarted agent gets its id once the old one went silent.
        Each new registration gets a new random token (the same agent registering again
        keeps its own), which ``check_token`` then asks of every call for that node id.
        """
        now = self._clock()
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodeState(
                node_id, hostname, last_seen_ms=now, last_request_ms=now
            )
        elif self._held_elsewhere(node, incarnation, now):
            host = node.hostname or "an unknown host"
            raise NodeIdInUseError(
                f"node id {node_id!r} is held by a live agent on {host} (it heartbeated "
                f"{now - node.last_seen_ms} ms ago); give this agent its own --node-id, or "
                "stop the other one (its id is free once it has been silent for the lease TTL)",
                node_id=node_id,
                hostname=node.hostname,
            )
        if not incarnation:
            node.token = ""  # an agent that predates tokens: nothing to check
        elif incarnation != node.incarnation or not node.token:
            node.token = secrets.token_hex(16)
        # else: the same agent registering again keeps its token (its reports in flight).
        node.alive, node.last_seen_ms = True, now
        node.hostname = hostname or node.hostname
        node.incarnation = incarnation or node.incarnation
        assigned: list[tuple[str, int]] = []
        if not self._frozen:
            if len(self._nodes) >= self._freeze_size:
                # Sorted ids, not arrival order: ranks must not depend on who raced first.
                for rank, nid in enumerate(sorted(self._nodes)):
                    self._nodes[nid].rank = rank
                    assigned.append((nid, rank))
                self._frozen = True
        elif node.rank is None:
            node.rank = self.world_size
            assigned.append((node_id, node.rank))
        return Registration(
            node_id, node.rank, self.world_size, self._frozen, tuple(assigned), node.token
        )

    def _held_elsewhere(self, node: NodeState, incarnation: str, now: int) -> bool:
        """A live agent holds ``node``'s id and this registration is not that agent: its
        incarnation differs, or (the id has a token) it sent none."""
        if not (node.alive and now - node.last_seen_ms < self._ttl):
            return False
        if node.token:
            return incarnation != node.incarnation
        return bool(incarnation and node.incarnation and incarnation != node.incarnation)

    def check_token(self, node_id: str, token: str, *, rebind: bool = False) -> NodeState:
        """The node, if ``token`` is its registration's secret; else
        ``RegistrationTokenError``. ``rebind``: a node without a token (restored from a
        lease log) that is sent one must register again to get its own (heartbeats)."""
        node = self.get(node_id)
        if node.token:
            if not secrets.compare_digest(token.encode(), node.token.encode()):
                raise RegistrationTokenError(
                    f"this call for node {node_id!r} does not carry the token of its "
                    "registration: only the agent that registered a node id may act as it "
                    "(register with your own --node-id)",
                    node_id=node_id,
                )
        elif token and rebind:
            raise NodeNotRegisteredError(
                f"node {node_id!r} is known from the lease log only; register again to "
                "bind this agent to it",
                node_id=node_id,
            )
        return node

    def restore(self, ranks: Mapping[str, int]) -> None:
        """Re-create ranked nodes from a lease log; each gets one TTL to come back."""
        now = self._clock()
        for node_id, rank in ranks.items():
            self._nodes[node_id] = NodeState(node_id, rank=rank, last_seen_ms=now)
        if ranks:
            self._frozen = True

    def heartbeat(self, node_id: str, stats: Mapping[str, int] | None = None) -> NodeState:
        """Mark ``node_id`` alive now (reviving a departed node)."""
        node = self.get(node_id)
        node.alive, node.last_seen_ms = True, self._clock()
        if stats is not None:
            node.stats = dict(stats)
        return node

    def postpone_silence(self, ms: int) -> None:
        """Count ``ms`` of the coordinator's own stall as heard-from time for live nodes."""
        for node in self._nodes.values():
            if node.alive:
                node.last_seen_ms += ms

    def get(self, node_id: str) -> NodeState:
        node = self._nodes.get(node_id)
        if node is None:
            raise NodeNotRegisteredError(
                f"node {node_id!r} is not registered with this coordinator; call RegisterNode "
                "first (after a coordinator restart without a lease log, register again)",
                node_id=node_id,
            )
        return node

    def require_rank(self, node_id: str) -> int:
        """The rank of a registered node once the world is frozen, else a clear error."""
        node = self.get(node_id)
        if node.rank is None:
            raise JobNotReadyError(
                f"job is not ready: {len(self._nodes)} of {self._freeze_size} nodes registered "
                "(--min-world-size); start the remaining agents or lower --min-world-size, "
                "then retry",
                node_id=node_id,
            )
        return node.rank

    def is_live(self, node: NodeState, now_ms: int | None = None) -> bool:
        """The one liveness rule: not departed and heard from within the TTL.

        Read at the moment a status is taken, so the page, ``/api/status`` and the
        ``nodes_live`` gauge agree even before the next tick marks a silent node departed.
        """
        now = self._clock() if now_ms is None else now_ms
        return node.alive and now - node.last_seen_ms < self._ttl

    def expire_silent(self) -> list[NodeState]:
        """Mark nodes silent for the TTL departed; forget unranked ones. Returns the newly gone."""
        now = self._clock()
        gone: list[NodeState] = []
        for node in list(self._nodes.values()):
            if node.alive and not self.is_live(node, now):
                node.alive = False
                gone.append(node)
                if node.rank is None:
                    # A node that left before the freeze must not count towards it.
                    del self._nodes[node.node_id]
        return gone

    def note_request(self, node_id: str) -> None:
        """``node_id`` asked for a lease now."""
        self.get(node_id).last_request_ms = self._clock()

    def idle_ranks(self, idle_ms: int, holding: set[str]) -> list[int]:
        """Ranks of live nodes that hold no lease and asked for none for ``idle_ms``: an
        agent without a trainer. Their queues are work for the others (dynamic mode)."""
        now = self._clock()
        return sorted(
            n.rank
            for n in self._nodes.values()
            if n.rank is not None
            and n.alive
            and n.node_id not in holding
            and now - n.last_request_ms > idle_ms
        )

    def departed_ranks(self) -> list[int]:
        """Ranks whose node is departed, ascending."""
        return sorted(n.rank for n in self._nodes.values() if not n.alive and n.rank is not None)

    def live_count(self) -> int:
        now = self._clock()
        return sum(1 for n in self._nodes.values() if self.is_live(n, now))

"""NodeRegistry: freeze at min world size, sorted-id ranks, rejoin, late joiners, liveness."""

from __future__ import annotations

import pytest
from support.clock import FakeClock

from mx8_common.errors import (
    JobNotReadyError,
    NodeIdInUseError,
    NodeNotRegisteredError,
    RegistrationTokenError,
)
from mx8_coordinator.state.node_registry import NodeRegistry


def test_node_registry_freezes_with_sorted_ranks() -> None:
    reg = NodeRegistry(freeze_size=3, node_ttl_ms=100, clock=FakeClock())
    assert reg.register("zeta").rank is None
    assert not reg.register("alpha").ready
    with pytest.raises(JobNotReadyError, match="2 of 3 nodes registered"):
        reg.require_rank("alpha")
    last = reg.register("mid")
    assert last.ready and last.world_size == 3
    assert dict(last.assigned) == {"alpha": 0, "mid": 1, "zeta": 2}
    assert [reg.require_rank(n) for n in ("alpha", "mid", "zeta")] == [0, 1, 2]


def test_node_registry_rejoin_keeps_rank_and_late_node_is_extra() -> None:
    reg = NodeRegistry(freeze_size=2, node_ttl_ms=100, clock=FakeClock())
    reg.register("b")
    reg.register("a")
    again = reg.register("b")
    assert (again.rank, again.assigned) == (1, ())
    late = reg.register("c")
    assert (late.rank, late.world_size, late.assigned) == (2, 3, (("c", 2),))


def test_node_registry_silent_node_departs_and_heartbeat_revives() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=2, node_ttl_ms=100, clock=clock)
    reg.register("a")
    reg.register("b")
    clock.now = 60
    reg.heartbeat("a", {"samples_delivered": 5})
    clock.now = 100
    assert [n.node_id for n in reg.expire_silent()] == ["b"]
    assert reg.departed_ranks() == [1] and reg.live_count() == 1
    reg.heartbeat("b")
    assert reg.departed_ranks() == [] and reg.get("a").stats == {"samples_delivered": 5}


def test_node_registry_unranked_node_leaving_does_not_count_towards_freeze() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=2, node_ttl_ms=100, clock=clock)
    reg.register("a")
    clock.now = 100
    reg.expire_silent()
    assert not reg.register("b").ready
    with pytest.raises(NodeNotRegisteredError, match="RegisterNode first"):
        reg.heartbeat("a")


def test_node_registry_restore_is_frozen_with_logged_ranks() -> None:
    reg = NodeRegistry(freeze_size=5, node_ttl_ms=100, clock=FakeClock())
    reg.restore({"x": 1, "y": 0})
    assert reg.ready and reg.world_size == 2
    assert reg.register("x").rank == 1
    assert reg.register("new").rank == 2


def test_node_registry_refuses_a_live_node_id_from_another_incarnation_naming_its_host() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=1, node_ttl_ms=100, clock=clock)
    reg.register("n0", "host-a", incarnation="first")
    clock.now = 50
    reg.heartbeat("n0")
    clock.now = 120  # 70 ms after the heartbeat: still live
    with pytest.raises(NodeIdInUseError, match="held by a live agent on host-a") as caught:
        reg.register("n0", "host-b", incarnation="second")
    assert (caught.value.node_id, caught.value.hostname) == ("n0", "host-a")
    # The same incarnation re-registering (a coordinator that forgot it) is welcome.
    assert reg.register("n0", "host-a", incarnation="first").rank == 0


def test_node_registry_gives_a_silent_node_id_to_its_restarted_agent() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=1, node_ttl_ms=100, clock=clock)
    reg.register("n0", "host-a", incarnation="before-restart")
    clock.now = 100  # silent for the TTL: the old process is gone
    again = reg.register("n0", "host-a", incarnation="after-restart")
    assert again.rank == 0 and reg.get("n0").incarnation == "after-restart"


def test_node_registry_token_per_registration_checked_and_kept_by_the_same_agent() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=1, node_ttl_ms=100, clock=clock)
    first = reg.register("n0", incarnation="proc-1")
    assert len(first.token) == 32
    reg.check_token("n0", first.token)
    for wrong in ("", "0" * 32):
        with pytest.raises(RegistrationTokenError, match="only the agent that registered"):
            reg.check_token("n0", wrong)
    # The same agent registering again keeps its token (its reports in flight stay good).
    assert reg.register("n0", incarnation="proc-1").token == first.token
    # Nobody else gets the live id, with or without an incarnation.
    for other in ("", "proc-2"):
        with pytest.raises(NodeIdInUseError):
            reg.register("n0", incarnation=other)
    # Once n0 was silent for the TTL, a restarted agent gets the id and a new token.
    clock.advance(100)
    second = reg.register("n0", incarnation="proc-2")
    assert second.token not in ("", first.token)
    with pytest.raises(RegistrationTokenError):
        reg.check_token("n0", first.token)


def test_node_registry_restored_node_without_token_asks_heartbeats_to_register_again() -> None:
    reg = NodeRegistry(freeze_size=1, node_ttl_ms=100, clock=FakeClock())
    reg.restore({"n0": 0})
    reg.check_token("n0", "anything")  # reports go on until the agent registers again
    with pytest.raises(NodeNotRegisteredError, match="register again"):
        reg.check_token("n0", "anything", rebind=True)
    assert reg.register("n0", incarnation="proc-1").token


def test_node_registry_idle_ranks_are_live_nodes_without_lease_or_request() -> None:
    clock = FakeClock()
    reg = NodeRegistry(freeze_size=3, node_ttl_ms=10_000, clock=clock)
    for node in ("a", "b", "c"):
        reg.register(node)
    clock.advance(500)
    reg.note_request("a")
    assert reg.idle_ranks(400, holding={"c"}) == [1]  # b: no request, no lease
    assert reg.idle_ranks(600, holding=set()) == []

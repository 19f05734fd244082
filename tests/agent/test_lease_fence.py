"""``LeaseFence``: a lease's local deadline and the link's state, on a hand-moved clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mx8_agent.work.lease_fence import LeaseFence, fence_margin_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fence(ttl_s: float = 1.0, stall_s: float = 0.2) -> tuple[LeaseFence, Clock]:
    clock = Clock()
    return LeaseFence(ttl_s=ttl_s, stall_s=stall_s, clock=clock), clock


def test_lease_fence_deadline_counts_from_the_grant_request_send_time() -> None:
    f, clock = fence()
    sent = clock.now
    clock.now += 0.3  # the grant's answer took 0.3 s
    f.granted("L1", sent)
    assert f.valid("L1")
    clock.now = sent + 1.0 - f.margin_s - 0.001
    assert f.valid("L1")
    clock.now = sent + 1.0 - f.margin_s
    assert not f.valid("L1")


def test_lease_fence_renewal_extends_from_its_send_time_never_shortens() -> None:
    f, clock = fence()
    f.granted("L1", clock.now)
    sent = clock.now + 0.5
    f.renewed("L1", sent)
    assert f.deadline("L1") == sent + 1.0 - f.margin_s
    f.renewed("L1", sent - 0.4)  # an older report answered late
    assert f.deadline("L1") == sent + 1.0 - f.margin_s


def test_lease_fence_failed_or_stalled_renewal_holds_every_lease_until_one_succeeds() -> None:
    f, clock = fence(stall_s=0.2)
    f.granted("L1", clock.now)
    f.granted("L2", clock.now)
    f.link_failed()
    assert not f.valid("L1") and not f.valid("L2")
    f.renewed("L2", clock.now)
    assert f.valid("L1") and f.valid("L2")
    f.renewing(clock.now)
    clock.now += 0.15
    assert f.valid("L1")  # waiting less than a heartbeat: fine
    clock.now += 0.1
    assert not f.valid("L1") and f.link_in_doubt
    f.renewing(None)
    assert f.valid("L1")


def test_lease_fence_unknown_or_forgotten_lease_is_never_valid() -> None:
    f, clock = fence()
    assert not f.valid("L9")
    f.granted("L1", clock.now)
    f.forget("L1")
    assert not f.valid("L1") and "L1" not in f


@given(
    ttl_s=st.floats(0.05, 600),
    latency_s=st.floats(0, 5),
    skew=st.floats(-1e-3, 1e-3),
)
def test_lease_fence_deadline_is_before_the_coordinators_expiry(
    ttl_s: float, latency_s: float, skew: float
) -> None:
    """The coordinator renews on receipt (>= send) and expires a TTL later on a clock
    running up to 0.1 % off: the agent's deadline is strictly earlier on either clock."""
    f, clock = fence(ttl_s=ttl_s)
    sent = clock.now
    f.granted("L1", sent)
    coordinator_expiry_s = latency_s + ttl_s * (1 + skew)  # after `sent`, agent's clock
    deadline = f.deadline("L1")
    assert deadline is not None
    assert deadline - sent < coordinator_expiry_s
    assert fence_margin_s(ttl_s) >= 0.05


def test_lease_fence_holds_new_batches_past_max_ahead_until_a_report_confirms_them() -> None:
    clock = Clock()
    f = LeaseFence(ttl_s=1.0, stall_s=0.2, max_ahead=2, clock=clock)
    f.granted("L1", clock.now)
    for first in (0, 10):
        assert f.may_run_ahead("L1", first)
        f.delivered("L1", first, first + 10)
    assert f.unconfirmed("L1") == 2
    assert not f.may_run_ahead("L1", 20)  # a third new batch waits
    assert f.may_run_ahead("L1", 0)  # a batch handed out before may go again
    f.renewed("L1", clock.now, cursor=5)  # inside the first batch: nothing confirmed
    assert not f.may_run_ahead("L1", 20)
    f.renewed("L1", clock.now, cursor=10)
    assert f.unconfirmed("L1") == 1 and f.may_run_ahead("L1", 20)
    f.granted("L2", clock.now)
    f.delivered("L1", 20, 30)
    assert not f.may_run_ahead("L2", 0)  # the bound is over all leases together
    f.forget("L1")
    assert f.unconfirmed("L1") == 0 and f.may_run_ahead("L2", 0)


def test_lease_fence_without_max_ahead_never_holds_for_unconfirmed_batches() -> None:
    f, clock = fence()
    f.granted("L1", clock.now)
    for first in range(0, 1000, 10):
        f.delivered("L1", first, first + 10)
    assert f.may_run_ahead("L1", 1000)

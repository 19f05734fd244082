"""``check_registration``'s listing time: 0 is unknown, garbage fails closed naming the field."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mx8_common.errors import CoordinatorReplyError
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.reply_checks import LISTED_AT_FUTURE_MARGIN_S, check_registration

NOW = 1_790_000_000.0  # 2026-09-21, this test's "host clock"


def _reply(**fields: Any) -> pb.RegisterNodeResponse:
    base: dict[str, Any] = {
        "manifest_hash": "a" * 64,
        "block_size": 1024,
        "heartbeat_interval_ms": 100,
        "lease_ttl_ms": 5000,
        "world_size": 1,
        "epochs": 1,
    }
    return pb.RegisterNodeResponse(**(base | fields))


@pytest.mark.parametrize(
    "listed_at",
    [0.0, NOW, NOW - 3 * 365 * 86400, NOW + LISTED_AT_FUTURE_MARGIN_S - 1, 1_700_000_000.5],
    ids=["unknown", "now", "years_ago", "skew_within_margin", "fractional"],
)
def test_check_registration_accepts_a_plausible_or_unknown_listing_time(listed_at: float) -> None:
    reply = _reply(listed_at_unix_s=listed_at)
    assert check_registration(reply, now=NOW) is reply


@pytest.mark.parametrize(
    ("listed_at", "why"),
    [
        (float("nan"), "not a finite time"),
        (float("inf"), "not a finite time"),
        (float("-inf"), "not a finite time"),
        (-5.0, "before 2000-01-01"),
        (1.0, "before 2000-01-01"),
        (NOW + LISTED_AT_FUTURE_MARGIN_S + 60, "ahead of this host's clock"),
        (1e300, "ahead of this host's clock"),
    ],
    ids=["nan", "inf", "minus_inf", "negative", "1970", "past_margin", "huge"],
)
def test_check_registration_refuses_a_malformed_listing_time_naming_the_field(
    listed_at: float, why: str
) -> None:
    with pytest.raises(CoordinatorReplyError) as info:
        check_registration(_reply(listed_at_unix_s=listed_at), now=NOW)
    assert info.value.field == "listed_at_unix_s"
    assert info.value.event == "coordinator_reply_invalid"
    assert why in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_check_registration_defaults_now_to_this_hosts_clock() -> None:
    check_registration(_reply(listed_at_unix_s=time.time()))
    with pytest.raises(CoordinatorReplyError, match="ahead of this host's clock"):
        check_registration(_reply(listed_at_unix_s=time.time() + 2 * LISTED_AT_FUTURE_MARGIN_S))
